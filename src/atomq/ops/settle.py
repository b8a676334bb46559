"""After a restore: settle what the snapshot caught half-way.

A snapshot taken while workers ran holds their registrations, the jobs they had claimed and
the jobs they were running. None of those processes talk to the restored Redis, so:

* each worker in the snapshot is recovered as a dead one (claimed-but-unstarted jobs go back to
  the front of their queues, its registration goes) - the same path as after a crash;
* every job still marked as running is retried if it has retries left, else failed with a
  reason that says what happened. Done here rather than left to the reaper: the snapshot's
  worker heartbeats and executions carry TTLs, and a backup restored later than they last
  has already lost them.
* the scheduler registrations and leader lease of the snapshot are dropped, so a scheduler
  started now leads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from atomq.core import keys
from atomq.engine import outcomes
from atomq.engine.jobs import load_job
from atomq.engine.queues import AtomqQueue
from atomq.engine.recovery import recover_worker
from atomq.engine.scripts import decode
from atomq.ops import monitor

#: Why a job that was running at backup time failed.
RESTORED_REASON = (
    "The job was running when the backup was taken, and its worker does not exist after the restore "
    "(restored from a backup taken while it ran)."
)


@dataclass
class Settled:
    """What settling a restored Redis did."""

    workers: list[str] = field(default_factory=list)
    returned: int = 0
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def settle_restored(connection: redis.Redis, configured_queues: list[str]) -> Settled:
    """Recover the snapshot's workers and its running jobs (see the module docstring)."""
    report = Settled()
    names = {decode(n) for n in connection.smembers(keys.WORKERS_SET)}
    names |= {decode(k).split(":worker:", 1)[1] for k in connection.smembers(keys.RQ_WORKERS_SET)}
    for name in sorted(names):
        recovered = recover_worker(connection, name, "restored from a backup taken while it ran")
        report.workers.append(name)
        report.returned += recovered.requeued
        report.retried += recovered.retried
        report.failed += recovered.failed
    for queue_name in monitor.known_queues(connection, configured_queues):
        started_key = keys.started_key(queue_name)
        for entry in connection.zrange(started_key, 0, -1):
            composite = decode(entry)
            job_id = composite.split(":", 1)[0]
            _settle_job(connection, queue_name, started_key, composite, job_id, report)
    connection.delete(keys.SCHEDULER_LEADER, keys.SCHEDULERS)
    return report


def _settle_job(
    connection: redis.Redis, queue_name: str, started_key: str, composite: str, job_id: str, report: Settled
) -> None:
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        connection.zrem(started_key, composite)
        return
    if job.get_status(refresh=False) != JobStatus.STARTED:
        connection.zrem(started_key, composite)
        return
    queue = AtomqQueue(queue_name, connection=connection)
    with connection.pipeline() as pipe:
        pipe.zrem(started_key, composite)
        verdict = outcomes.record_abandoned(pipe, job, queue, RESTORED_REASON)
        pipe.execute()
    (report.retried if verdict == "retried" else report.failed).append(job_id)
    if verdict == "failed":
        outcomes.enqueue_dependents(queue, job)
