"""Give back the work of a worker that died: the supervisor calls this the moment a child
exits abnormally, and the scheduler's reaper for workers whose heartbeat expired (a host that
vanished). RQ itself notices such jobs only at another worker's maintenance run, minutes later.

* Jobs the dead worker had claimed but not started go back to the front of their queues.
* Jobs it was running are retried when they have retries left, else failed with the reason.
* Its registration is removed, so ``atomq workers`` and ``rq info`` stop listing it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
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
    connection: redis.Redis,
    worker_name: str,
    reason: str,
    *,
    attempted: Collection[str] | None = None,
    suspects: Collection[str] = (),
) -> Recovered:
    """Recover every job ``worker_name`` held and deregister it. Safe to call twice.

    ``attempted`` are the ids of the jobs whose run counts as an attempt (retried or failed),
    when known: the fast worker shares the jobs it runs with its supervisor, which passes those
    it ran when it died (or only the one it was killed for). Every other job the worker held
    (claimed but not started, or running beside the one it was killed for) goes back to the
    front of its queue untouched. When unknown (``None``: a host that vanished, a restored
    backup), every started job counts as attempted.

    ``suspects`` were running when the worker crashed beside each other, and which of them
    crashed it is unknown: each goes back untouched but marked, and runs in a process of its own
    from then on (a job that crashes the process again is then found, and only it pays).
    """
    report = Recovered(worker_name)
    worker_key = keys.worker_key(worker_name)
    executions_key = f"{worker_key}:executions"
    claimed_key = keys.claimed_key(worker_name)
    # RQ's forking worker records executions and claims into a list; the fast worker's jobs
    # are its entries in the started registries, their execution named after the worker.
    started: dict[str, str] = {}
    for member in connection.smembers(executions_key):
        job_id, _, execution_id = decode(member).partition(":")
        started[job_id] = execution_id
    origins: dict[str, str] = {}
    for job_id, queue in held_jobs(connection, worker_name).items():
        started.setdefault(job_id, worker_name)
        origins[job_id] = queue
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
        if attempted is None or job_id in attempted:
            _abandon(connection, job_id, execution_id, worker_name, reason, report)
        elif execution_id == worker_name:
            origin = origins.get(job_id) or connection.hget(keys.job_key(job_id), "origin")
            if origin is not None:
                untouched += [job_id, decode(origin)]
    if suspects:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in suspects:
                pipe.hset(keys.job_key(job_id), keys.SUSPECT_FIELD, "1")
            pipe.execute()
    if untouched:
        report.requeued += int(FastScripts(connection).revert([], [worker_name, *untouched]))
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


def held_jobs(connection: redis.Redis, worker_name: str) -> dict[str, str]:
    """The jobs a fast worker holds (claimed, running or about to), by id, with their queue:
    its executions in the started registries of every known queue."""
    pattern = "*:" + glob_escape(worker_name)
    held: dict[str, str] = {}
    for queue_key in connection.smembers(keys.QUEUES_SET):
        queue = decode(queue_key)[len(keys.QUEUE_KEY_PREFIX) :]
        suffix = ":" + worker_name
        for member, _ in connection.zscan_iter(keys.started_key(queue), match=pattern, count=1000):
            text = decode(member)
            if text.endswith(suffix):
                held[text[: -len(suffix)]] = queue
    return held


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


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
