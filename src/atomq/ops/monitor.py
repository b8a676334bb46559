"""What the CLI, the HTTP API and the dashboard show about queues, workers and failed jobs.

Read-only; what changes them (requeue, empty, delete) is :mod:`atomq.ops.admin`'s.

Everything reads RQ's own keys in as few round trips as possible (one pipeline per call where
it can), so ``atomq info`` stays fast with many queues and many jobs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.utils import utcparse

from atomq.core import keys, visibility
from atomq.core.errors import JobNotFoundError
from atomq.engine.jobs import (
    AtomqJob,
    error_summary,
    iso,
    latest_result,
    load_job,
    load_jobs,
    readable_meta,
    status_dict,
)
from atomq.engine.scheduler import leader
from atomq.engine.scripts import decode


@dataclass
class QueueStats:
    """Counts for one queue: the guide's five plus what an on-call engineer also needs."""

    name: str
    queued: int = 0
    started: int = 0
    finished: int = 0
    failed: int = 0
    scheduled: int = 0
    deferred: int = 0
    canceled: int = 0
    oldest_queued_age: float | None = None
    paused_since: float | None = None  # epoch seconds; None while workers take from the queue

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerInfo:
    """A worker as ``atomq workers`` lists it."""

    name: str
    state: str
    queues: list[str]
    pid: int | None
    hostname: str | None
    birth: str | None
    last_heartbeat: str | None
    successful_jobs: int
    failed_jobs: int
    current_jobs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_queues(connection: redis.Redis, configured: list[str] | None = None) -> list[str]:
    """Configured queues first (in priority order), then any other queue RQ knows of."""
    prefix = keys.QUEUE_KEY_PREFIX
    known = sorted(decode(k)[len(prefix) :] for k in connection.smembers(keys.QUEUES_SET))
    ordered = list(configured or [])
    ordered += [name for name in known if name not in ordered]
    return ordered


def queue_stats(connection: redis.Redis, names: list[str]) -> list[QueueStats]:
    """Counts for ``names`` in two round trips."""
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(keys.queue_key(name))
            pipe.zcount(keys.started_key(name), now, "+inf")
            pipe.zcount(keys.finished_key(name), now, "+inf")
            pipe.zcount(keys.failed_key(name), now, "+inf")
            pipe.zcard(keys.scheduled_key(name))
            pipe.zcard(keys.deferred_key(name))
            pipe.zcard(keys.canceled_key(name))
            pipe.lindex(keys.queue_key(name), 0)
        pipe.hgetall(keys.PAUSED_QUEUES)
        replies = pipe.execute()
    paused = {decode(k): _since(v) for k, v in replies.pop().items()}
    stats = []
    heads: dict[str, str] = {}
    for index, name in enumerate(names):
        q, s, fin, fail, sch, dfr, can, head = replies[index * 8 : index * 8 + 8]
        stats.append(QueueStats(name, q, s, fin, fail, sch, dfr, can, paused_since=paused.get(name)))
        if head is not None:
            heads[name] = decode(head)
    if heads:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in heads.values():
                pipe.hget(keys.job_key(job_id), "enqueued_at")
            stamps = pipe.execute()
        ages = {}
        for (name, _), stamp in zip(heads.items(), stamps, strict=True):
            if stamp:
                ages[name] = max(0.0, now - utcparse(decode(stamp)).timestamp())
        for item in stats:
            item.oldest_queued_age = ages.get(item.name)
    return stats


def _since(value: bytes | str) -> float:
    try:
        return float(decode(value))
    except ValueError:  # paused by hand with a value that is not a time: paused all the same
        return 0.0


def list_workers(connection: redis.Redis) -> list[WorkerInfo]:
    """Every registered worker with its state, counters and running jobs, in two round trips."""
    worker_keys = sorted(decode(k) for k in connection.smembers(keys.RQ_WORKERS_SET))
    with connection.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.hgetall(key)
            pipe.smembers(f"{key}:executions")
            name = key.split(":worker:", 1)[1]
            pipe.lrange(keys.claimed_key(name), 0, -1)
            pipe.smembers(keys.running_key(name))
        replies = pipe.execute()
    workers = []
    for index, key in enumerate(worker_keys):
        raw, executions, claimed, running = replies[index * 4 : index * 4 + 4]
        if not raw:
            continue
        data = {decode(k): decode(v) for k, v in raw.items()}
        if data.get("death"):
            continue
        workers.append(
            WorkerInfo(
                name=key.split(":worker:", 1)[1],
                state=data.get("state", "?"),
                queues=[q for q in data.get("queues", "").split(",") if q],
                pid=int(data["pid"]) if data.get("pid") else None,
                hostname=data.get("hostname"),
                birth=_iso_rq(data.get("birth")),
                last_heartbeat=_iso_rq(data.get("last_heartbeat")),
                successful_jobs=int(data.get("successful_job_count") or 0),
                failed_jobs=int(data.get("failed_job_count") or 0),
                # RQ's worker lists executions and claims into a list; the fast worker's
                # supervisor publishes what it runs (every 0.5 s, see atomq.engine.leases).
                current_jobs=sorted(
                    {decode(m).split(":", 1)[0] for m in executions}
                    | {decode(j) for j in claimed}
                    | {decode(j) for j in running}
                ),
            )
        )
    return workers


def _iso_rq(value: str | None) -> str | None:
    return iso(utcparse(value)) if value else None


def list_scheduled(
    connection: redis.Redis, names: list[str], limit: int = 100, *, private: bool = True
) -> list[dict[str, Any]]:
    """The soonest scheduled jobs across ``names``: id, queue, task, due time, description.

    With ``private=False`` a description that RQ generated from the call (it shows the
    arguments) is left out; one given at enqueue time is kept.
    """
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(keys.scheduled_key(name), 0, limit - 1, withscores=True)
        replies = pipe.execute()
    entries = [
        (score, name, decode(job_id))
        for name, reply in zip(names, replies, strict=True)
        for job_id, score in reply
    ]
    entries.sort()
    entries = entries[:limit]
    jobs = load_jobs([job_id for _, _, job_id in entries], connection)
    out = []
    for (score, name, job_id), job in zip(entries, jobs, strict=True):
        out.append(
            {
                "job_id": job_id,
                "queue": name,
                "task": _safe_task(job),
                "due_at": iso(datetime.fromtimestamp(score, UTC)),
                "due_in": round(score - time.time(), 3),
                "description": describe(job, private=private),
            }
        )
    return out


def _safe_task(job: AtomqJob | None) -> str | None:
    if job is None:
        return None
    try:
        return job.func_name
    except Exception:  # an undecodable payload must not break a listing
        return "<unreadable>"


def describe(job: AtomqJob | None, *, private: bool = True) -> str | None:
    """The job's description; without ``private``, ``None`` when it spells out the arguments.

    RQ makes a description from the call (``send_email(user_id='u1', to='a@b.c')``) when the
    caller gives none; only callers allowed to see arguments get that one.
    """
    if job is None:
        return None
    if private:
        return job.description
    try:
        generated = job.get_call_string()
    except Exception:  # undecodable payload: show nothing rather than fail the listing
        return None
    return None if job.description == generated else job.description


def count_failed(connection: redis.Redis, names: list[str]) -> int:
    """How many failed jobs ``names`` hold right now (one round trip)."""
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcount(keys.failed_key(name), now, "+inf")
        return sum(int(n) for n in pipe.execute())


def job_details(connection: redis.Redis, job: AtomqJob, *, scope: str) -> dict[str, Any]:
    """The guide's status dictionary for ``job`` and where it runs, as ``scope`` may see them
    (:mod:`atomq.core.visibility`): its result and error message from ``write`` up, its
    arguments, meta and traceback for ``admin``."""
    out = visibility.job_status(scope, status_dict(job))
    latest = latest_result(job)
    private = visibility.allows(scope, visibility.INTERNALS)
    out.update(
        {
            "queue": job.origin,
            "task": _safe_task(job),
            "description": describe(job, private=private),
            "worker": job.worker_name or None,
            "retries_left": job.retries_left,
        }
    )
    if private:
        try:
            args: Any = job.args
            kwargs: Any = job.kwargs
        except Exception:
            args, kwargs = None, None
        out.update(
            {
                "args": args,
                "kwargs": kwargs,
                "meta": readable_meta(job),
                "traceback": latest.exc_string if latest and latest.exc_string else None,
            }
        )
    return out


def list_failed(
    connection: redis.Redis, names: list[str], *, offset: int = 0, limit: int = 50, scope: str = "admin"
) -> list[dict[str, Any]]:
    """Failed jobs, newest first, with an error summary (no arguments, no traceback); the
    summary as ``scope`` may see it (its kind only for ``read``)."""
    entries: list[tuple[float, str, str]] = []
    # One queue pages in Redis; several need the first offset + limit of each to merge.
    first = offset if len(names) == 1 else 0
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrevrange(keys.failed_key(name), first, offset + limit - 1, withscores=True)
        replies = pipe.execute()
    for name, reply in zip(names, replies, strict=True):
        entries.extend((score, name, decode(job_id)) for job_id, score in reply)
    entries.sort(reverse=True)
    entries = entries[offset - first : offset - first + limit]
    jobs = load_jobs([job_id for _, _, job_id in entries], connection)
    out = []
    for (_, name, job_id), job in zip(entries, jobs, strict=True):
        if job is None:
            continue
        latest = latest_result(job)
        out.append(
            {
                "job_id": job_id,
                "queue": name,
                "task": _safe_task(job),
                "status": job.get_status(refresh=False).value,
                "ended_at": iso(job.ended_at),
                "error": visibility.error_text(scope, error_summary(latest.exc_string if latest else None)),
            }
        )
    return out


def failure_detail(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """One failed job with its arguments and full traceback (for admins and the CLI)."""
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        raise JobNotFoundError(f"no job with id {job_id!r}", field="job_id") from None
    latest = latest_result(job)
    try:
        args: Any = job.args
        kwargs: Any = job.kwargs
    except Exception:
        args, kwargs = None, None
    return {
        "job_id": job.id,
        "queue": job.origin,
        "task": _safe_task(job),
        "status": job.get_status(refresh=False).value,
        "args": args,
        "kwargs": kwargs,
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "worker": job.worker_name,
        "error": error_summary(latest.exc_string if latest else None),
        "traceback": latest.exc_string if latest else None,
    }


def scheduler_status(connection: redis.Redis) -> dict[str, Any]:
    """Who leads scheduling and which schedulers are running."""
    running = {decode(k): decode(v) for k, v in connection.hgetall(keys.SCHEDULERS).items()}
    return {"leader": leader(connection), "schedulers": running}
