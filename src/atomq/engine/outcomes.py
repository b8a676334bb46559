"""One place for how a job's run ends: finished, retried, deferred, failed, stopped, abandoned.

Every path that ends a run uses these: both workers (a task that raised, a job stopped on
request, a time limit), the supervisor and the reaper recovering a dead worker's jobs
(:mod:`atomq.engine.recovery`), and the settling of a restored backup
(:mod:`atomq.ops.settle`). Each function queues its writes on the caller's pipeline, so an
outcome is recorded whole or not at all, in the round trip the caller already makes:

* :func:`judge` decides what a failure means: :class:`~atomq.core.errors.Defer` runs the job
  again later without using a retry, :class:`~atomq.core.errors.PermanentError` fails it at
  once, :class:`~atomq.core.errors.RetryableError` may set the next delay, a stop request ends
  it as ``stopped``, anything else uses a retry if one is left;
* :func:`record_failure` writes a failed attempt (kept as a Result even when a retry follows,
  so the job's status shows the last error) and then the retry or the final status;
* :func:`record_deferral` puts the job back as scheduled, its retries untouched;
* :func:`record_abandoned` ends the run of a job whose worker died or vanished: retried when
  it has retries left, else failed with the reason;
* :func:`record_refusal` fails a job a worker must not run (not JSON, task not registered).

Retries always go through :func:`atomq.engine.queues.schedule_retry`, which writes the new
status in the caller's pipeline (RQ's ``Job.retry`` writes it straight away, outside it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.results import Result

from atomq.core import keys
from atomq.core.errors import Defer, JobStopped, PermanentError, RetryableError, UnknownTaskError
from atomq.core.text import printable
from atomq.engine import groups, hooks, stats
from atomq.engine.jobs import AtomqJob, set_next_retry_delay
from atomq.engine.queues import AtomqQueue, schedule_deferred, schedule_retry

logger = logging.getLogger("atomq.outcomes")

Verdict = Literal["retried", "failed", "stopped", "deferred"]


@dataclass(frozen=True)
class Judgement:
    """What a failed run means for its job."""

    verdict: Verdict
    #: Seconds until the job runs again (deferrals only).
    delay: float = 0.0

    @property
    def final(self) -> bool:
        """Whether the job has ended for good (its dependents may be released)."""
        return self.verdict in ("failed", "stopped")


def judge(job: AtomqJob, exc: BaseException | None, *, stopped: bool = False) -> Judgement:
    """Decide what a run that raised ``exc`` (or was stopped on request) means for ``job``.

    Adjusts the job's retry bookkeeping as the exception asks (no retries left for a
    :class:`PermanentError`, the next interval of a :class:`RetryableError` with a delay).
    """
    if stopped or isinstance(exc, JobStopped):
        return Judgement("stopped")
    if isinstance(exc, Defer):
        return Judgement("deferred", delay=exc.delay)
    if isinstance(exc, PermanentError | UnknownTaskError):
        job.retries_left = 0
    elif isinstance(exc, RetryableError) and exc.delay is not None and job.should_retry:
        set_next_retry_delay(job, exc.delay)
    return Judgement("retried" if job.should_retry else "failed")


def record_failure(
    pipe: Any,
    job: AtomqJob,
    queue: AtomqQueue,
    judgement: Judgement,
    *,
    exc_string: str,
    worker_name: str,
    execution_id: str | None,
    started: datetime | None,
    ended: datetime,
    failure_ttl: int,
) -> None:
    """Queue on ``pipe`` a failed (or stopped) attempt of ``job``, then its retry or its end.

    The attempt is kept as a failure Result either way; a final one also lands in the queue's
    failed registry with ``failure_ttl`` and tells the features (batch counts) it ended.
    """
    assert judgement.verdict != "deferred", "deferrals are recorded with record_deferral"
    job.ended_at = ended
    Result.create_failure(
        job,
        failure_ttl,
        # A message holding a lone surrogate (a file name read with surrogateescape) would make
        # the recording fail and take the worker with it: it is kept escaped.
        exc_string=printable(exc_string),
        worker_name=worker_name,
        pipeline=pipe,
        execution_id=execution_id,
        execution_started_at=started,
        execution_ended_at=ended,
    )
    groups.release(pipe, job)
    if judgement.verdict == "retried":
        schedule_retry(job, queue, pipe)
        return
    stopped = judgement.verdict == "stopped"
    job.set_status(JobStatus.STOPPED if stopped else JobStatus.FAILED, pipeline=pipe)
    job.save(pipeline=pipe, include_meta=False, include_result=False)
    pipe.zadd(keys.failed_key(queue.name), {job.id: ended.timestamp() + failure_ttl})
    pipe.expire(job.key, failure_ttl)
    hooks.ended([(job, judgement.verdict)], pipe)


def record_deferral(pipe: Any, job: AtomqJob, queue: AtomqQueue, delay: float) -> None:
    """Queue on ``pipe``: ``job`` runs again in ``delay`` seconds; no attempt counted, nothing
    kept as a failure."""
    job.started_at = None
    groups.release(pipe, job)
    schedule_deferred(job, queue, delay, pipe)
    stats.job_ended(pipe, job, "deferred", timed=False)


def record_abandoned(pipe: Any, job: AtomqJob, queue: AtomqQueue, reason: str) -> Verdict:
    """Queue on ``pipe`` the end of a run whose worker died (or was restored from a backup
    taken while it ran): retried at once when the job has retries left (its run did not fail,
    its worker did), else failed with ``reason``. Returns ``"retried"`` or ``"failed"``."""
    verdict: Verdict = "retried" if job.should_retry else "failed"
    stats.job_ended(pipe, job, verdict, timed=False)
    groups.release(pipe, job)
    if verdict == "retried":
        schedule_retry(job, queue, pipe, at_once=True)
    else:
        record_job_failure(job, reason, pipe)
        hooks.ended([(job, "failed")], pipe)
    return verdict


def record_refusal(pipe: Any, job: AtomqJob, reason: str, worker_name: str) -> None:
    """Queue on ``pipe``: a worker refused to run ``job`` (its payload is not JSON, or its task
    is not registered there); it fails at once, its retries unused, since no retry can help."""
    groups.release(pipe, job)
    record_job_failure(job, f"Refused by worker {worker_name}: {reason}", pipe)


def enqueue_dependents(queue: AtomqQueue, job: AtomqJob) -> None:
    """Release the dependents of a job that ended for good (after its end is recorded)."""
    try:
        queue.enqueue_dependents(job)
    except Exception:
        # A dependent left waiting is found by the next look at its dependencies.
        logger.exception("could not enqueue the dependents of job %s", job.id)
