"""Give back the work of a worker that died: the supervisor calls this the moment a child
exits abnormally, and the scheduler's reaper for workers whose heartbeat expired (a host that
vanished). RQ itself notices such jobs only at another worker's maintenance run, minutes later.

* Jobs the dead worker had claimed but not started go back to the front of their queues.
* Jobs it was running are retried when they have retries left, else failed with the reason.
* Its registration is removed, so ``atomq workers`` and ``rq info`` stop listing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import JobStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from atomq.core import keys
from atomq.engine import outcomes
from atomq.engine.fast_scripts import FastScripts
from atomq.engine.jobs import load_job
from atomq.engine.queues import AtomqQueue
from atomq.engine.scripts import Scripts, decode

logger = logging.getLogger("atomq.recovery")


@dataclass
class Recovered:
    """What recovering one worker did."""

    worker: str
    requeued: int = 0
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.requeued or self.retried or self.failed)


def recover_worker(
    connection: redis.Redis, worker_name: str, reason: str, *, running: str | None = None
) -> Recovered:
    """Recover every job ``worker_name`` held and deregister it. Safe to call twice.

    ``running`` is the id of the job the worker was running when it died, when known (the
    fast worker shares it with its supervisor; ``""`` means it ran none). Only that job counts
    as an attempt (retried or failed); other jobs it had started — claimed in a batch but not
    run yet — go back to the front of their queues untouched. When unknown (``None``), every
    started job counts as attempted.
    """
    report = Recovered(worker_name)
    worker_key = keys.worker_key(worker_name)
    executions_key = f"{worker_key}:executions"
    claimed_key = keys.claimed_key(worker_name)
    # RQ's forking worker records executions; the fast worker's started jobs sit in its
    # claimed list, their execution named after the worker.
    started: dict[str, str] = {}
    for member in connection.smembers(executions_key):
        job_id, _, execution_id = decode(member).partition(":")
        started[job_id] = execution_id
    claimed = [decode(job_id) for job_id in connection.lrange(claimed_key, 0, -1)]
    if claimed:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in claimed:
                pipe.hmget(keys.job_key(job_id), "status", "worker_name", "origin")
            states = pipe.execute()
        for job_id, (status, owner, _) in zip(claimed, states, strict=True):
            if status == b"started" and owner is not None and decode(owner) == worker_name:
                started.setdefault(job_id, worker_name)
    untouched: list[str] = []
    for job_id, execution_id in started.items():
        if running is None or job_id == running:
            _abandon(connection, job_id, execution_id, worker_name, reason, report)
        elif execution_id == worker_name:
            origin = connection.hget(keys.job_key(job_id), "origin")
            if origin is not None:
                untouched += [job_id, decode(origin)]
    if untouched:
        report.requeued += int(FastScripts(connection).revert([claimed_key], [worker_name, *untouched]))
    report.requeued += int(
        Scripts(connection).return_claimed(
            keys=[claimed_key],
            args=[keys.JOB_KEY_PREFIX, keys.QUEUE_KEY_PREFIX, *sorted(started)],
        )
    )
    queue_names = connection.hget(worker_key, "queues")
    with connection.pipeline() as pipe:
        pipe.srem(keys.RQ_WORKERS_SET, worker_key)
        for name in decode(queue_names).split(",") if queue_names else []:
            pipe.srem(WORKERS_BY_QUEUE_KEY % name, worker_key)
        pipe.delete(worker_key, executions_key, keys.claimed_key(worker_name))
        pipe.srem(keys.WORKERS_SET, worker_name)
        pipe.execute()
    if report.anything:
        logger.warning(
            "recovered worker %s (%s): %d unstarted job(s) requeued, %d retried, %d failed",
            worker_name,
            reason,
            report.requeued,
            len(report.retried),
            len(report.failed),
        )
    return report


def _abandon(
    connection: redis.Redis, job_id: str, execution_id: str, worker_name: str, reason: str, report: Recovered
) -> None:
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        return
    execution = Execution(execution_id, job_id, connection=connection, worker_name=worker_name)
    queue = AtomqQueue(job.origin, connection=connection)
    with connection.pipeline() as pipe:
        execution.delete(job=job, pipeline=pipe)
        if job.get_status(refresh=False) != JobStatus.STARTED or job.worker_name != worker_name:
            pipe.execute()
            return
        why = f"Worker {worker_name} died while running this job ({reason})."
        verdict = outcomes.record_abandoned(pipe, job, queue, why)
        pipe.execute()
    (report.retried if verdict == "retried" else report.failed).append(job_id)
    if verdict == "failed":
        outcomes.enqueue_dependents(queue, job)


def find_dead_workers(connection: redis.Redis) -> list[str]:
    """Names of atomq workers whose registration expired without a clean exit."""
    names = [decode(name) for name in connection.smembers(keys.WORKERS_SET)]
    if not names:
        return []
    with connection.pipeline() as pipe:
        for name in names:
            pipe.exists(keys.worker_key(name))
        alive = pipe.execute()
    return [name for name, exists in zip(names, alive, strict=True) if not exists]
