"""The fast worker's writes: how each run it finished, failed, refused or gave back is recorded.

Successes are recorded many at a time with one script call (:data:`FINISH_MANY`), sent in the
same round trip as the claim of the next jobs, writing what RQ's worker writes where RQ's
readers look. Failures, stops and deferrals are rarer and go through
:mod:`atomq.engine.outcomes` in a pipeline of their own. Jobs claimed but not run (a warm
shutdown, a job that ran long in front of them, a worker whose lease was lost) are given
back to the front of their queues untouched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.job import JobStatus

from atomq.core import keys
from atomq.core.logging import job_log_fields, log_context
from atomq.core.settings import Settings
from atomq.core.timeutil import rq_text
from atomq.engine import hooks, outcomes, stats
from atomq.engine.context import Running
from atomq.engine.fast_scripts import FastScripts
from atomq.engine.jobs import error_summary
from atomq.engine.queues import AtomqQueue
from atomq.engine.recovery import held_jobs

if TYPE_CHECKING:
    from atomq.engine.executor import Completion

logger = logging.getLogger("atomq.worker")


class Recorder:
    """Records the runs of one worker (``worker_name``) on ``connection``."""

    def __init__(
        self, connection: redis.Redis, scripts: FastScripts, settings: Settings, worker_name: str
    ) -> None:
        self.connection = connection
        self.scripts = scripts
        self.settings = settings
        self.worker_name = worker_name
        self.worker_key = keys.worker_key(worker_name)

    # -- successes ------------------------------------------------------------------------

    def queue_finished(self, pipe: Any, finished: list[Completion]) -> None:
        """Queue on ``pipe`` the record of successful runs (one script call, one tally)."""
        args: list[Any] = [self.worker_name]
        tally = stats.Tally()
        for item in finished:
            running = item.running
            job = running.job
            result_ttl = job.result_ttl if job.result_ttl is not None else self.settings.result_ttl
            encoded = ""
            if item.value is not None:
                try:
                    payload = json.dumps(item.value).encode()
                except (TypeError, ValueError):
                    payload = json.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD).encode()
                encoded = base64.b64encode(payload).decode()
            started = running.started or item.ended
            ended = item.ended.timestamp()
            args += [
                job.id,
                running.queue,
                rq_text(started),
                rq_text(item.ended),
                result_ttl,
                encoded,
                started.timestamp(),
                ended,
                round(item.duration, 6),
                ended + result_ttl if result_ttl > 0 else 0,
                job.group or "",
            ]
            tally.add(
                queue=running.queue,
                task=job.func_name,
                outcome="finished",
                duration=item.duration,
                late=started.timestamp() - job.due_at if job.due_at is not None else None,
            )
        self.scripts.finish_many.queue(pipe, [self.worker_key], args)
        hooks.ended([(item.running.job, "finished") for item in finished], pipe)
        tally.write(pipe)

    def after_finished(self, finished: list[Completion], replies: list[Any]) -> None:
        """Act on what :data:`FINISH_MANY` said of each job: not ours any more (logged), or
        with dependents to release."""
        for item, dependents in zip(finished, replies, strict=True):
            job = item.running.job
            if dependents == -1:
                logger.warning(
                    "Worker %s: job %s finished after it was handed to another worker; its end is "
                    "not recorded (the other run's is)",
                    self.worker_name,
                    job.id,
                )
            elif dependents:
                job._status = JobStatus.FINISHED
                outcomes.enqueue_dependents(AtomqQueue(item.running.queue, connection=self.connection), job)

    # -- failures -------------------------------------------------------------------------

    def record_failure(self, item: Completion) -> None:
        """Record a failed, stopped or deferred run (see :mod:`atomq.engine.outcomes`), logging it
        with the job's ids on every line."""
        running = item.running
        with log_context(**(item.log_fields or job_log_fields(running.job, running.queue))):
            self._record_failure(item)

    def _record_failure(self, item: Completion) -> None:
        running = item.running
        job, queue = running.job, running.queue
        exc, exc_string = item.value
        judgement = outcomes.judge(job, exc, stopped=item.outcome == "stopped")
        aq = AtomqQueue(queue, connection=self.connection)
        member = keys.execution_member(job.id, self.worker_name)
        started = running.started or item.ended
        if not self._still_ours(running):
            logger.warning(
                "Worker %s: job %s %s after it was handed to another worker; not recorded",
                self.worker_name,
                job.id,
                item.outcome,
            )
            return
        if judgement.verdict == "deferred":
            logger.info(
                "Worker %s: job %s deferred by %.1f s: %s", self.worker_name, job.id, judgement.delay, exc
            )
            with self.connection.pipeline() as pipe:
                outcomes.record_deferral(pipe, job, aq, judgement.delay)
                pipe.zrem(keys.started_key(queue), member)
                pipe.execute()
            return
        retry = judgement.verdict == "retried"
        logger.log(
            logging.WARNING if retry else logging.ERROR,
            "Worker %s: job %s %s%s: %s\n%s",
            self.worker_name,
            job.id,
            "stopped" if judgement.verdict == "stopped" else "failed",
            " (will retry)" if retry else "",
            error_summary(exc_string),
            exc_string.rstrip(),
        )
        with self.connection.pipeline() as pipe:
            outcomes.record_failure(
                pipe,
                job,
                aq,
                judgement,
                exc_string=exc_string,
                worker_name=self.worker_name,
                execution_id=self.worker_name,
                started=started,
                ended=item.ended,
                failure_ttl=job.failure_ttl or self.settings.failure_ttl,
            )
            pipe.zrem(keys.started_key(queue), member)
            pipe.hincrby(self.worker_key, "failed_job_count", 1)
            tally = stats.Tally()
            tally.add(
                queue=queue,
                task=job.func_name,
                outcome=judgement.verdict,
                duration=item.duration,
                late=started.timestamp() - job.due_at if job.due_at is not None else None,
            )
            tally.write(pipe)
            pipe.execute()
        if judgement.final:
            with contextlib.suppress(redis.RedisError):
                if self.connection.scard(job.dependents_key):
                    outcomes.enqueue_dependents(aq, job)

    def _still_ours(self, running: Running) -> bool:
        """Whether this worker still holds ``running`` (a reaper may have handed it on while
        the worker could not reach Redis)."""
        member = keys.execution_member(running.job.id, self.worker_name)
        return self.connection.zscore(keys.started_key(running.queue), member) is not None

    def refuse(self, running: Running, reason: str) -> None:
        """Fail a job this worker must not run (not JSON, task not registered here)."""
        job = running.job
        logger.error("Worker %s: refusing job %s: %s", self.worker_name, job.id, reason)
        with self.connection.pipeline() as pipe:
            outcomes.record_refusal(pipe, job, reason, self.worker_name)
            pipe.zrem(keys.started_key(running.queue), keys.execution_member(job.id, self.worker_name))
            pipe.execute()

    # -- giving back ----------------------------------------------------------------------

    def give_back(self, held: Iterable[Running]) -> int:
        """Return claimed-but-not-started jobs to the front of their queues; how many went."""
        args = [self.worker_name]
        for running in held:
            args += [running.job.id, running.queue]
        if len(args) == 1:
            return 0
        return int(self.scripts.revert([], args))

    def give_back_all_claimed(self) -> int:
        """Return every job this worker still holds in Redis (after its last run ended): any
        claim whose reply never reached it, for one."""
        held = held_jobs(self.connection, self.worker_name)
        if not held:
            return 0
        args = [self.worker_name]
        for job_id, queue in held.items():
            args += [job_id, queue]
        return int(self.scripts.revert([], args))
