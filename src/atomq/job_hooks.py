"""What the worker calls at each step of a job's life, for batches and long-running jobs.

The worker (:mod:`atomq.engine.worker`) calls these in five places and knows nothing else of
batches, progress or graceful stops; a different engine only needs to call them at the same
moments:

* :func:`execution_prepared` - the job is being marked started (main worker process, inside
  the pipeline that marks it, before the job's process is forked);
* :func:`horse_started` - in the process about to run the task, just before it runs;
* :func:`job_ended` - after the outcome is recorded (success, final failure, stop);
* :func:`job_raised` - the task raised ``exc`` (before the failure is handled);
* :func:`worker_command` - a command arrived on the worker's channel; True when handled.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq.job import Job

from atomq import batch_tracking, longjobs, stopping

logger = logging.getLogger("atomq.job_hooks")


def execution_prepared(job: Job, pipeline: Any) -> None:
    """The job is about to start; ``pipeline`` is the one that marks it started."""
    batch_tracking.record_start(job, pipeline)
    if job.func_name == "atomq.workflow_step":
        from atomq.workflows.steps import warm_database

        warm_database()


def horse_started(job: Job, connection: redis.Redis) -> None:
    """In the job's own process, right before the task runs: start its heartbeat."""
    longjobs.job_started(job.id, connection)


def job_ended(connection: redis.Redis, job: Job) -> None:
    """The job's outcome is recorded; account for it if it is final."""
    longjobs.job_finished()
    status = job.get_status(refresh=False)
    value = getattr(status, "value", status)
    try:
        batch_tracking.record_end(connection, job, str(value))
    except redis.RedisError:
        # The reconciler accounts for it later; a hook must never fail the job.
        logger.exception("could not record the end of job %s in its batch", job.id)


def job_raised(worker: Any, job: Job, exc: BaseException | None) -> None:
    """The task raised ``exc``: a :class:`~atomq.longjobs.JobStopped` ends it as stopped."""
    stopping.note_failure(worker, job, exc)


def worker_command(worker: Any, payload: dict[str, Any]) -> bool:
    """A command for the worker; True when atomq handled it (RQ handles the rest)."""
    return stopping.handle_worker_command(worker, payload)
