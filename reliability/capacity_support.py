"""Helpers for the capacity scenarios: a Redis filled to its ``maxmemory`` (scenario 7), a
snapshot of its keyspace to prove a refused call wrote nothing, a check that every job hash
and every queue entry has its other half, and many scheduled posts bulk-inserted into the
database (scenario 8).
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from atomq.core import keys
from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from testkit.support import RedisServer

#: Keys the filler writes; everything else in the keyspace is atomq's.
FILLER_PREFIX = "filler:"

#: Room left between what Redis uses before filling and its ``maxmemory``: enough for the
#: jobs a scenario writes before filling, small enough to fill in a moment.
HEADROOM_BYTES = 4 * 1024 * 1024


# -- a Redis that is full -------------------------------------------------------------------


@contextmanager
def small_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server of its own that refuses writes once full (``noeviction``); stopped at the end."""
    server = RedisServer(directory, extra=["--maxmemory-policy", "noeviction"]).start()
    try:
        client = server.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + HEADROOM_BYTES)
        client.close()
        yield server
    finally:
        server.stop()


def is_oom(exc: BaseException) -> bool:
    """Whether Redis refused a command because it reached ``maxmemory``."""
    # redis-py raises OutOfMemoryError and drops the "OOM" prefix from the message.
    return isinstance(exc, redis.exceptions.OutOfMemoryError)


def fill(client: redis.Redis, value_bytes: int = 4096) -> int:
    """Write filler keys until Redis refuses a write for lack of memory; return how many landed.

    Pipelined (unchecked) 64 at a time, so filling a few megabytes takes milliseconds; the
    last pipeline is the one with the refusal.
    """
    value = b"x" * value_bytes
    written = 0
    while True:
        with client.pipeline(transaction=False) as pipe:
            for _ in range(64):
                pipe.set(f"{FILLER_PREFIX}{written}-{uuid.uuid4().hex[:6]}", value)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                if is_oom(reply):
                    return written
                raise reply
            written += 1


def free(client: redis.Redis) -> int:
    """Delete every filler key; return how many were deleted."""
    doomed = list(client.scan_iter(match=f"{FILLER_PREFIX}*", count=1000))
    for start in range(0, len(doomed), 500):
        client.unlink(*doomed[start : start + 500])
    return len(doomed)


def refuses_writes(client: redis.Redis) -> bool:
    """Whether Redis is now refusing writes (checked with a write of its own)."""
    try:
        client.set(f"{FILLER_PREFIX}probe", b"x" * 1024)
    except redis.ResponseError as exc:
        if is_oom(exc):
            return True
        raise
    return False


# -- what is in Redis -----------------------------------------------------------------------


def keyspace(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every non-filler key with its serialized value (``DUMP``), to compare before and after.

    ``DUMP`` covers every type, so any change to any key (a field, a member, an element) shows.
    Its trailing checksum makes equal values dump equally.
    """
    snapshot: dict[bytes, bytes | None] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(FILLER_PREFIX.encode()):
            continue
        snapshot[key] = client.dump(key)
    return snapshot


def keyspace_changes(
    before: dict[bytes, bytes | None], after: dict[bytes, bytes | None]
) -> dict[str, list[str]]:
    """Keys added, removed and changed between two snapshots (empty lists when none)."""
    return {
        "added": sorted(k.decode() for k in after.keys() - before.keys()),
        "removed": sorted(k.decode() for k in before.keys() - after.keys()),
        "changed": sorted(k.decode() for k in before.keys() & after.keys() if before[k] != after[k]),
    }


def half_written_jobs(client: redis.Redis) -> list[str]:
    """Jobs with only one half: a queue or schedule entry without a hash, or a queued or
    scheduled hash on no queue or schedule. Empty when Redis is consistent."""
    problems: list[str] = []
    queued: set[str] = set()
    scheduled: set[str] = set()
    for key in client.scan_iter(match=f"{keys.QUEUE_KEY_PREFIX}*", count=1000):
        queued.update(member.decode() for member in client.lrange(key, 0, -1))
    for key in client.scan_iter(match=f"{keys.scheduled_key('')}*", count=1000):
        scheduled.update(member.decode() for member in client.zrange(key, 0, -1))
    for job_id in sorted(queued | scheduled):
        if not client.exists(keys.job_key(job_id)):
            problems.append(f"{job_id}: on a queue or schedule, but has no job hash")
    for key in client.scan_iter(match=f"{keys.JOB_KEY_PREFIX}*", count=1000):
        if client.type(key) != b"hash":
            continue  # rq:job:<id>:dependents and similar sets
        job_id = key.decode()[len(keys.JOB_KEY_PREFIX) :]
        status = client.hget(key, "status")
        if status == b"queued" and job_id not in queued:
            problems.append(f"{job_id}: queued, but on no queue")
        if status == b"scheduled" and job_id not in scheduled:
            problems.append(f"{job_id}: scheduled, but on no schedule")
    return problems


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Timings:
    """Durations (seconds) of repeated calls, summarised in milliseconds: wall time, and the
    CPU time of this process (on shared, loaded cores the gap is time spent waiting for a core,
    for Redis or for the database)."""

    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def time(self, call: Callable[[], Any]) -> Any:
        """Run ``call``, keep its duration, return what it returned (or re-raise)."""
        started, started_cpu = time.perf_counter(), time.process_time()
        try:
            return call()
        finally:
            self.samples.append(time.perf_counter() - started)
            self.cpu.append(time.process_time() - started_cpu)

    def percentile(self, fraction: float, samples: list[float] | None = None) -> float:
        """Nearest-rank percentile: the smallest sample at or above ``fraction`` of them."""
        ordered = sorted(self.samples if samples is None else samples)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    def summary(self) -> dict[str, float | int]:
        """Count, p50, p99 and max of the wall time, p50 and p99 of the CPU time, in ms."""
        figures: dict[str, float | int] = {
            "n": len(self.samples),
            "p50_ms": round(statistics.median(self.samples) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "max_ms": round(max(self.samples) * 1000, 2),
        }
        if self.cpu:
            figures["cpu_p50_ms"] = round(statistics.median(self.cpu) * 1000, 2)
            figures["cpu_p99_ms"] = round(self.percentile(0.99, self.cpu) * 1000, 2)
        return figures


# -- many scheduled posts -------------------------------------------------------------------


def spread(count: int, start: datetime, span: timedelta) -> Iterator[datetime]:
    """``count`` due times evenly spread over ``span`` from ``start``."""
    step = span / count
    for index in range(count):
        yield start + step * index


def insert_posts(
    database: Database,
    account_id: str,
    count: int,
    start: datetime,
    span: timedelta,
    *,
    chunk: int = 10_000,
) -> int:
    """Bulk-insert ``count`` scheduled posts due evenly over ``span`` from ``start``.

    Rows are what :meth:`PostsService.create` stores (status ``scheduled``, revision 1, the job
    id derived from the post), written with SQLAlchemy Core ``chunk`` rows per statement: a
    million posts through the service would take hours, and what is measured is the reading
    side. Returns how many were inserted.
    """
    from atomq.features.posts.jobs import job_id_for
    from atomq.features.posts.models import ScheduledPost

    table = ScheduledPost.__table__
    now = utcnow()
    rows: list[dict[str, Any]] = []
    inserted = 0

    def flush() -> None:
        nonlocal inserted
        if rows:
            with database.engine.begin() as connection:
                connection.execute(table.insert(), rows)
            inserted += len(rows)
            rows.clear()

    for index, due in enumerate(spread(count, start, span)):
        post_id = f"post_{index:08d}{uuid.uuid4().hex[:16]}"
        rows.append(
            {
                "id": post_id,
                "user_id": f"user_{index % 1000}",
                "account_id": account_id,
                "content": f"scheduled post number {index}",
                "media_urls": [],
                "scheduled_for": due,
                "timezone": "UTC",
                "status": "scheduled",
                "revision": 1,
                "job_id": job_id_for(post_id, 1),
                "attempts": 0,
                "job_replacements": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        if len(rows) >= chunk:
            flush()
    flush()
    return inserted
