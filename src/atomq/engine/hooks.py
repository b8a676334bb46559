"""What the workers call at each step of a job's life, for batches and long-running jobs.

The workers know nothing else of batches, progress or graceful stops; an engine only needs to
call these at the same moments.

RQ's forking worker (:mod:`atomq.engine.rq_worker`):

* :func:`execution_prepared` - the job is being marked started (main worker process, inside
  the pipeline that marks it, before the job's process is forked);
* :func:`horse_started` - in the process about to run the task, just before it runs;
* :func:`job_ended` - after the outcome is recorded (success, final failure, stop);
* :func:`job_raised` - the task raised ``exc`` (before the failure is handled);
* :func:`worker_command` - a command arrived on the worker's channel; True when handled.

The fast worker (:mod:`atomq.engine.fast`), which batches its Redis writes:

* :func:`jobs_claimed` - a batch of jobs was claimed and marked started;
* :func:`job_running` / :func:`job_returned` - around the task's own run, in its process;
* :func:`queue_job_ends` - on the pipeline that records final outcomes (same round trip);
* :func:`worker_command` - as above, with how to find and stop the running job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job

from atomq.features.batches import tracking as batch_tracking
from atomq.features.longjobs import progress as longjobs
from atomq.features.longjobs import stopping

logger = logging.getLogger("atomq.engine.hooks")


def execution_prepared(job: Job, pipeline: Any) -> None:
    """The job is about to start; ``pipeline`` is the one that marks it started."""
    batch_tracking.record_start(job, pipeline)
    if job.func_name == "atomq.workflow_step":
        from atomq.features.workflows.steps import warm_database

        warm_database()


def horse_started(job: Job, connection: redis.Redis) -> None:
    """In the job's own process, right before the task runs: start its heartbeat."""
    longjobs.job_started(job.id, connection)


def jobs_claimed(connection: redis.Redis, jobs: list[Job]) -> None:
    """Jobs were claimed and marked started: set the ``started`` bits of batch items (one round
    trip, and only when the claim holds batch items)."""
    items = [job for job in jobs if batch_tracking.batch_item(job)]
    if not items:
        return
    try:
        with connection.pipeline(transaction=False) as pipe:
            for job in items:
                batch_tracking.record_start(job, pipe)
            pipe.execute()
    except redis.RedisError:
        logger.exception("could not record the start of %d batch item(s)", len(items))


def job_running(job: Job, connection: redis.Redis) -> None:
    """Right before the task runs, in the process that runs it (cheap: no thread, no I/O)."""
    longjobs.job_started(job.id, connection)


def job_returned() -> None:
    """The task returned or raised."""
    longjobs.job_finished()


def queue_job_ends(pipeline: Any, ended: list[tuple[Job, str]]) -> None:
    """Queue the batch bookkeeping of final outcomes (``finished``, ``failed``, ``stopped``) on
    the pipeline that records them."""
    for job, status in ended:
        batch_tracking.record_end_on(pipeline, job, status)


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
    """The task raised ``exc``: a :class:`~atomq.features.longjobs.progress.JobStopped` ends it as stopped."""
    stopping.note_failure(worker, job, exc)


def worker_command(
    worker: Any,
    payload: dict[str, Any],
    *,
    running: Callable[[], tuple[str | None, object]] | None = None,
    stop_now: Callable[[str], None] | None = None,
) -> bool:
    """A command for the worker; True when atomq handled it (the worker handles the rest).

    ``running`` returns the running job's id and a token identifying this run of it;
    ``stop_now`` stops it at once. Both default to RQ's worker API.
    """
    return stopping.handle_worker_command(worker, payload, running=running, stop_now=stop_now)
