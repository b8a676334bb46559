"""atomq's queue: RQ's ``Queue`` with JSON jobs, precise due times and wake-ups.

Differences from RQ, all through RQ's extension points:

* jobs are :class:`~atomq.engine.jobs.AtomqJob` (registered tasks, JSON only);
* scheduled jobs are scored with their exact due time (RQ truncates to whole seconds, so a
  job due at 10:00:00.9 could start 0.9 s early);
* every push onto a queue also drops a wake-up token so idle workers listening on several
  queues notice it at once, and scheduling a job wakes the scheduler.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import WatchError
from rq.exceptions import DuplicateJobError
from rq.job import JobStatus
from rq.queue import Queue
from rq.scripts import _build_hset_args, get_unique_schedule_script
from rq.serializers import JSONSerializer

from atomq.core import keys
from atomq.core.timeutil import utcnow
from atomq.engine import stats
from atomq.engine.jobs import AtomqJob

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.job import Job

logger = logging.getLogger("atomq.queues")


#: Wake-up tokens kept per queue; more would only cause idle workers to wake for nothing.
WAKE_TOKENS_KEPT = 16


def wake_workers(pipe: Any, queue_name: str, jobs: int = 1) -> None:
    """Queue wake-up tokens for idle workers on ``pipe`` (a pipeline or a client): one per
    job pushed (at most WAKE_TOKENS_KEPT), since a token wakes one worker."""
    key = keys.wake_key(queue_name)
    pipe.lpush(key, *([1] * max(1, min(jobs, WAKE_TOKENS_KEPT))))
    pipe.ltrim(key, 0, WAKE_TOKENS_KEPT - 1)


class AtomqQueue(Queue):
    """An RQ queue for :class:`AtomqJob` with exact due times and wake-ups."""

    job_class = AtomqJob

    def __init__(self, name: str = "default", connection: Redis | None = None, **kwargs: Any) -> None:
        kwargs["serializer"] = JSONSerializer
        kwargs.setdefault("job_class", AtomqJob)
        super().__init__(name, connection=connection, **kwargs)

    def enqueue_job(
        self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        """Queue ``job`` in one round trip (RQ takes two: the queue set, then the job).

        Jobs with uniqueness or a caller's pipeline take RQ's own path; jobs with dependencies
        take it inside one transaction (:meth:`_enqueue_with_dependencies`).
        """
        if (
            job._dependency_ids
            and pipeline is None
            and not unique
            and not job.has_rate_limit
            and self._is_async
        ):
            return self._enqueue_with_dependencies(job, at_front)
        if unique or job._dependency_ids or job.has_rate_limit or pipeline is not None or not self._is_async:
            return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        job.origin = self.name
        # MULTI/EXEC: a full Redis refuses the whole transaction, leaving nothing half-written.
        with self.connection.pipeline() as pipe:
            pipe.sadd(self.redis_queues_keys, self.key)
            self._enqueue_job(job, pipeline=pipe, at_front=at_front)
            pipe.execute()
        return job

    def _enqueue_with_dependencies(self, job: Job, at_front: bool) -> Job:
        """RQ stores a job with dependencies in one round trip and adds its queue to the queue
        set in another; a Redis that fills up in between refuses the call after the job was
        stored. Given a pipeline, RQ puts both in one WATCHed transaction instead: retried here
        when a dependency changes meanwhile, as RQ retries its own."""
        status = job.get_status(refresh=False)
        while True:
            with self.connection.pipeline() as pipe:
                try:
                    super().enqueue_job(job, pipeline=pipe, at_front=at_front)
                    pipe.execute()
                    return job
                except WatchError:
                    job._status = status

    def push_job_id(self, job_id: str, pipeline: Pipeline | None = None, at_front: bool = False) -> None:
        """Push the id as RQ does, then wake an idle worker."""
        connection: Any = pipeline if pipeline is not None else self.connection.pipeline()
        if at_front:
            connection.lpush(self.key, job_id)
        else:
            connection.rpush(self.key, job_id)
        wake_workers(connection, self.name)
        if pipeline is None:
            connection.execute()

    def schedule_job(
        self, job: Job, datetime: datetime, pipeline: Pipeline | None = None, unique: bool = False
    ) -> Job:
        """Put ``job`` in the scheduled registry, scored by its exact UTC due time."""
        if unique:
            self._schedule_unique(job, datetime)
            return job
        pipe: Any = pipeline if pipeline is not None else self.connection.pipeline()
        pipe.sadd(self.redis_queues_keys, self.key)
        self._persist_job(job, pipe, status=JobStatus.SCHEDULED)
        pipe.zadd(keys.scheduled_key(self.name), {job.id: due_timestamp(datetime)})
        stats.mark_due(pipe, job.key, due_timestamp(datetime))
        pipe.lpush(keys.SCHEDULER_WAKE, 1)
        pipe.ltrim(keys.SCHEDULER_WAKE, 0, WAKE_TOKENS_KEPT - 1)
        if pipeline is None:
            pipe.execute()
        return job

    def _schedule_unique(self, job: Job, when: datetime) -> None:
        # RQ's atomic "schedule unless the id exists" script, fed the exact due time (RQ's own
        # caller passes whole seconds).
        if not job._id:
            raise ValueError("unique=True requires an explicit job_id")
        job._status = JobStatus.SCHEDULED
        job.origin = self.name
        script = get_unique_schedule_script(self.connection)
        ttl = job.ttl if job.ttl is not None else -1
        stored = script(
            keys=[job.key, keys.scheduled_key(self.name), self.redis_queues_keys],
            args=[job.id, ttl, repr(due_timestamp(when)), self.key, *_build_hset_args(job)],
        )
        if stored == 0:
            raise DuplicateJobError(f"Job with ID '{job.id}' already exists")
        # The job is stored whole by now; what follows is a metric field and a wake-up hint.
        # A Redis that fills up right here must not make the caller believe nothing was queued.
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                stats.mark_due(pipe, job.key, due_timestamp(when))
                pipe.lpush(keys.SCHEDULER_WAKE, 1)
                pipe.ltrim(keys.SCHEDULER_WAKE, 0, WAKE_TOKENS_KEPT - 1)
                pipe.execute()
        except redis.ResponseError as exc:
            logger.warning(
                "job %s is scheduled, but its due-time metric and wake-up were refused: %s", job.id, exc
            )


def schedule_retry(job: Job, queue: AtomqQueue, pipe: Any, *, at_once: bool = False) -> None:
    """Queue ``job``'s next attempt on ``pipe``: scheduled after its retry interval, or at once
    (``at_once``: at the front of its queue, for a run that ended with its worker rather than
    by failing: backing off helps a failing service, not a lost worker).

    RQ's ``Job.retry`` writes the "scheduled" status straight away, outside the caller's
    transaction, so for a moment a job looks rescheduled while its failure is not yet on
    record; here every write rides in ``pipe``.
    """
    interval = 0 if at_once else job.get_retry_interval()
    job.retries_left = (job.retries_left or 1) - 1
    if at_once:
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
    elif interval:
        queue.schedule_job(job, utcnow() + timedelta(seconds=interval), pipeline=pipe)
    else:
        queue._enqueue_job(job, pipeline=pipe, at_front=job.enqueue_at_front_on_retry)


def schedule_deferred(job: Job, queue: AtomqQueue, delay: float, pipe: Any) -> None:
    """Put ``job`` back as scheduled ``delay`` seconds from now, its retries untouched."""

    queue.schedule_job(job, utcnow() + timedelta(seconds=delay), pipeline=pipe)


def due_timestamp(value: datetime) -> float:
    """Seconds since the epoch for an aware datetime (naive values are read as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
