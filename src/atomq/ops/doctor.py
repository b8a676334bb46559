"""``atomq doctor``: the guide's "Common Issues" walked through, one check at a time.

Each check says ok, warn or fail with a sentence an on-call engineer can act on; the last one
proves the whole path by queueing the built-in ``ping`` task and waiting for a worker to run it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis

from atomq.core.connection import connect, parse_target
from atomq.core.errors import AtomqError
from atomq.core.settings import Settings
from atomq.engine.task_queue import TaskQueue
from atomq.ops import monitor

#: Scheduled jobs this many seconds past due mean no scheduler is moving them.
OVERDUE_SECONDS = 30.0

#: Minimum Redis version (LMOVE and the scripts' commands).
MIN_REDIS = (6, 2, 0)

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    """The outcome of one check."""

    name: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(
    settings: Settings, *, ping_queue: str | None = None, ping_timeout: float = 10.0
) -> Iterator[Check]:
    """Yield checks in the guide's order; stops early when Redis itself is unreachable."""
    target = parse_target(settings)
    try:
        connection = connect(settings)
    except AtomqError as exc:
        yield Check(
            "redis",
            FAIL,
            f"{exc}. Is redis-server running? Check REDIS_URL; try `redis-cli -h "
            f"{target.host} -p {target.port} ping`.",
        )
        return
    yield from _guarded("redis", lambda: _redis_check(connection, target.describe()))
    yield from _guarded("persistence", lambda: _persistence_check(connection))
    yield from _guarded("eviction", lambda: _eviction_check(connection))
    names = monitor.known_queues(connection, settings.queues)
    stats = {s.name: s for s in monitor.queue_stats(connection, names)}
    workers = monitor.list_workers(connection)
    yield from _guarded("workers", lambda: _workers_check(workers, stats))
    yield from _guarded("queues", lambda: _queues_check(stats))
    yield from _guarded("failed", lambda: _failed_check(stats))
    yield from _guarded("scheduler", lambda: _scheduler_check(connection, names))
    tq = TaskQueue(settings=settings, connection=connection)
    yield from _guarded("ping", lambda: _ping_check(tq, workers, ping_queue, ping_timeout))


def _guarded(name: str, check: Callable[[], Check]) -> Iterator[Check]:
    try:
        yield check()
    except redis.ResponseError as exc:
        yield Check(name, WARN, f"could not check: Redis refused a command ({exc})")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        yield Check(name, FAIL, f"lost the connection to Redis ({exc})")


def _redis_check(connection: redis.Redis, where: str) -> Check:
    info = connection.info("server")
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts < MIN_REDIS:
        return Check("redis", FAIL, f"Redis {version} at {where} is too old; atomq needs 6.2 or newer")
    return Check("redis", OK, f"Redis {version} answers at {where}")


def _persistence_check(connection: redis.Redis) -> Check:
    info = connection.info("persistence")
    if int(info.get("aof_enabled", 0)):
        return Check("persistence", OK, "AOF is on: queued jobs survive a Redis restart")
    try:
        save = connection.config_get("save").get("save", "")
    except redis.ResponseError:
        save = "?"
    if save and save != "?":
        return Check(
            "persistence",
            WARN,
            f"only RDB snapshots (save {save!r}): a crash loses jobs queued since the last snapshot; "
            "set appendonly yes and appendfsync everysec",
        )
    return Check(
        "persistence",
        WARN,
        "Redis keeps nothing on disk: a restart loses every queued and scheduled job; "
        "set appendonly yes and appendfsync everysec",
    )


def _eviction_check(connection: redis.Redis) -> Check:
    info = connection.info("memory")
    policy = str(info.get("maxmemory_policy", "noeviction"))
    limit = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0))
    usage = f"{used / 2**20:.0f} MB used" + (f" of {limit / 2**20:.0f} MB" if limit else ", no maxmemory")
    if policy.startswith("allkeys"):
        return Check(
            "eviction",
            FAIL,
            f"maxmemory-policy {policy} lets Redis delete queued jobs when memory runs out ({usage}); "
            "use noeviction (enqueues then fail loudly instead)",
        )
    if policy != "noeviction":
        return Check(
            "eviction", WARN, f"maxmemory-policy {policy} may evict job data ({usage}); noeviction is safest"
        )
    if limit and used > 0.9 * limit:
        return Check(
            "eviction", WARN, f"Redis memory is nearly full ({usage}); enqueues will fail when it is"
        )
    return Check("eviction", OK, f"maxmemory-policy noeviction ({usage})")


def _workers_check(workers: list[monitor.WorkerInfo], stats: dict[str, monitor.QueueStats]) -> Check:
    if not workers:
        waiting = sum(s.queued for s in stats.values())
        return Check(
            "workers", FAIL, f"no worker is running ({waiting} job(s) waiting); start one: atomq worker"
        )
    served = {q for w in workers for q in w.queues}
    orphaned = [name for name, s in stats.items() if s.queued and name not in served]
    summary = "; ".join(f"{w.name} ({w.state}) on {','.join(w.queues)}" for w in workers[:10])
    if orphaned:
        return Check(
            "workers", FAIL, f"jobs wait on {', '.join(orphaned)} but no worker listens there. {summary}"
        )
    return Check("workers", OK, f"{len(workers)} worker(s): {summary}")


def _queues_check(stats: dict[str, monitor.QueueStats]) -> Check:
    parts = [f"{s.name}={s.queued}" for s in stats.values()]
    slow = [s for s in stats.values() if s.oldest_queued_age is not None and s.oldest_queued_age > 300]
    if slow:
        worst = max(slow, key=lambda s: s.oldest_queued_age or 0)
        return Check(
            "queues",
            WARN,
            f"{worst.name}'s oldest job has waited {worst.oldest_queued_age:.0f} s: "
            "workers are too few or stuck. "
            f"Queued: {', '.join(parts)}",
        )
    return Check("queues", OK, "queued: " + (", ".join(parts) or "no queues yet"))


def _failed_check(stats: dict[str, monitor.QueueStats]) -> Check:
    failing = {s.name: s.failed for s in stats.values() if s.failed}
    if failing:
        listed = ", ".join(f"{name}={count}" for name, count in failing.items())
        return Check(
            "failed", WARN, f"failed jobs: {listed}. See `atomq failed`, then `atomq requeue --queue Q`"
        )
    return Check("failed", OK, "no failed jobs")


def _scheduler_check(connection: redis.Redis, names: list[str]) -> Check:
    status = monitor.scheduler_status(connection)
    scheduled = monitor.list_scheduled(connection, names, limit=1)
    overdue = scheduled and scheduled[0]["due_in"] < -OVERDUE_SECONDS
    if not status["leader"]:
        if scheduled:
            return Check(
                "scheduler",
                FAIL,
                "no scheduler is running, so scheduled jobs will not run; "
                "start workers (they run one) or `atomq scheduler run`",
            )
        return Check("scheduler", WARN, "no scheduler is running (nothing is scheduled yet)")
    if overdue:
        return Check(
            "scheduler",
            WARN,
            f"scheduler {status['leader']} holds the lock but a job is "
            f"{-scheduled[0]['due_in']:.0f} s overdue",
        )
    return Check(
        "scheduler",
        OK,
        f"{status['leader']} holds the scheduler lock ({len(status['schedulers'])} scheduler(s) running)",
    )


def _ping_check(tq: TaskQueue, workers: list[monitor.WorkerInfo], queue: str | None, timeout: float) -> Check:
    served = [q for w in workers for q in w.queues]
    if queue is None:
        preferred = [q for q in ("default", *tq.settings.queues) if q in served]
        if not preferred:
            return Check("ping", FAIL, "no worker to run a ping job")
        queue = preferred[0]
    job = tq.enqueue("ping", queue=queue, at_front=True, result_ttl=600, meta={"doctor": True})
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = tq.get_job_status(job.id)
        if status["status"] == "finished":
            took = time.monotonic() - started
            host = (status["result"] or {}).get("host", "?")
            return Check("ping", OK, f"a ping job on {queue} ran on {host} in {took * 1000:.0f} ms")
        if status["status"] in ("failed", "stopped", "canceled"):
            return Check("ping", FAIL, f"the ping job on {queue} ended {status['status']}: {status['error']}")
        time.sleep(0.05)
    with contextlib.suppress(AtomqError):
        tq.cancel_job(job.id)  # do not leave a stray ping behind a backlog
    return Check(
        "ping",
        FAIL,
        f"no worker ran a ping job on {queue} within {timeout:.0f} s; workers may be stuck "
        "on long jobs or unable to reach Redis (see their logs)",
    )
