"""What operators change: requeue failed jobs, empty a queue, delete a job, pause a queue.

The CLI (``atomq requeue``, ``atomq empty``), the API and the dashboard's buttons call these;
reading queues and jobs is :mod:`atomq.ops.monitor`'s.
"""

from __future__ import annotations

import time

import redis
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from atomq.core import keys
from atomq.core.errors import JobNotFoundError, JobStateError
from atomq.core.options import validate_queue_name
from atomq.engine import pause
from atomq.engine.jobs import AtomqJob, load_job, load_jobs
from atomq.engine.queues import AtomqQueue
from atomq.engine.scripts import decode


def delete_job(connection: redis.Redis, job_id: str) -> str:
    """Delete a job that is not running: its hash, its results, its place in queues and registries.

    Returns the status the job had. A running job is refused (stop it with ``cancel_job`` first):
    deleting it under its worker would leave the worker writing into a job that no longer exists.
    """
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        raise JobNotFoundError(f"no job with id {job_id!r}", field="job_id") from None
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        raise JobStateError(f"job {job_id} is running; cancel it first, then delete it")
    with connection.pipeline() as pipe:
        job.delete(pipeline=pipe)
        pipe.execute()
    return str(status.value)


def requeue_failed(
    connection: redis.Redis, *, queues: list[str] | None = None, job_ids: list[str] | None = None
) -> list[str]:
    """Put failed (or stopped) jobs back on their queues; return the ids requeued.

    Give ``job_ids`` for specific jobs (each must be in a failed registry) or ``queues`` for
    every failed job in them.
    """
    requeued: list[str] = []
    if job_ids:
        for job_id in job_ids:
            try:
                job = load_job(job_id, connection)
            except NoSuchJobError:
                raise JobNotFoundError(f"no job with id {job_id!r}", field="job_id") from None
            state = job.get_status(refresh=False)
            if state not in (JobStatus.FAILED, JobStatus.STOPPED):
                raise JobStateError(
                    f"job {job_id} is {state.value}, not failed; only failed jobs are requeued"
                )
            if _requeue_one(connection, job):
                requeued.append(job_id)
        return requeued
    for name in queues or []:
        requeued += _requeue_queue(connection, name)
    return requeued


#: Failed jobs requeued per round of three round trips (read, claim, enqueue).
REQUEUE_BATCH = 500


def _requeue_queue(connection: redis.Redis, name: str) -> list[str]:
    """Requeue every failed job of ``name`` in batches (job by job, 10,000 jobs took seconds).

    Each job is claimed by removing it from the failed registry first, so two requests
    requeueing the same queue at once still requeue each job once. Jobs whose record is gone
    are dropped from the registry; unreadable ones are left where they are.
    """
    key = keys.failed_key(name)
    queue = AtomqQueue(name, connection=connection)
    requeued: list[str] = []
    skipped = 0
    while True:
        ids = [decode(i) for i in connection.zrangebyscore(key, time.time(), "+inf", skipped, REQUEUE_BATCH)]
        if not ids:
            return requeued
        jobs = load_jobs(ids, connection)
        missing = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
        if missing:
            with connection.pipeline(transaction=False) as pipe:
                for job_id in missing:
                    pipe.exists(keys.job_key(job_id))
                exists = pipe.execute()
            gone = [job_id for job_id, there in zip(missing, exists, strict=True) if not there]
            if gone:
                connection.zrem(key, *gone)
            skipped += len(missing) - len(gone)
        readable = [job for job in jobs if job is not None]
        with connection.pipeline(transaction=False) as pipe:
            for job in readable:
                pipe.zrem(key, job.id)
            claimed = [job for job, won in zip(readable, pipe.execute(), strict=True) if won]
        with connection.pipeline() as pipe:
            for job in claimed:
                job.started_at = None
                job.ended_at = None
                queue._enqueue_job(job, pipeline=pipe)
            pipe.execute()
        requeued += [job.id for job in claimed]


def _requeue_one(connection: redis.Redis, job: AtomqJob) -> bool:
    if not connection.zrem(keys.failed_key(job.origin), job.id):
        return False
    queue = AtomqQueue(job.origin, connection=connection)
    job.started_at = None
    job.ended_at = None
    with connection.pipeline() as pipe:
        queue._enqueue_job(job, pipeline=pipe)
        pipe.execute()
    return True


def empty_queue(connection: redis.Redis, name: str) -> int:
    """Delete every queued job of ``name`` (their hashes too); return how many."""
    validate_queue_name(name)
    return int(AtomqQueue(name, connection=connection).empty())


def pause_queue(connection: redis.Redis, queue: str) -> float:
    """Pause ``queue`` (workers skip it within a second); returns since when it is paused.

    Pausing a paused queue keeps its first time. A queue no job has used yet may be paused
    too, ahead of an announced outage.
    """
    validate_queue_name(queue)
    pause.pause(connection, queue)
    return pause.paused_queues(connection).get(queue, time.time())


def resume_queue(connection: redis.Redis, queue: str) -> bool:
    """Resume ``queue``; False when it was not paused (nothing to do, not an error)."""
    validate_queue_name(queue)
    return pause.resume(connection, queue)
