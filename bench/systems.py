"""The task systems the benchmarks compare: how to enqueue into each, schedule, and start its
workers (2 processes each, every system at its own defaults).

atomq is used only through its public API (``from atomq import TaskQueue``) and the ``atomq``
command; it reads its settings from the environment this module sets.

Job kinds: ``noop`` (returns at once), ``io`` (waits 100 ms: ``time.sleep`` in sync systems,
``asyncio.sleep`` in arq, saq and atomq's ``async def`` task) and ``record`` (notes its
start time, for scheduling lateness).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

from bench.harness import BIN, AsyncRunner

#: Jobs per enqueue_many call where a library has one.
BULK_CHUNK = 5000


class System:
    """How to enqueue into, run and observe one task system."""

    name: str
    queue_key: str
    bulk_api: str | None = None  # what enqueue_bulk calls, for the report
    env: dict[str, str]

    def __init__(self, name: str, url: str, queue_key: str, jobs_scale: float = 1.0) -> None:
        self.name = name
        self.url = url
        self.queue_key = queue_key
        self.jobs_scale = jobs_scale  # fraction of --jobs to drain (RQ's forking worker is slow)
        self.env = {}

    def enqueue_one(self, kind: str = "noop") -> None:
        raise NotImplementedError

    def enqueue_single(self, n: int, kind: str = "noop") -> None:
        for _ in range(n):
            self.enqueue_one(kind)

    def enqueue_bulk(self, n: int, kind: str = "noop") -> bool:
        """Enqueue in bulk; False when the library has no bulk API."""
        return False

    def timed_calls(self, n: int, interval: float) -> list[float]:
        """Seconds each of ``n`` single enqueues took, one every ``interval`` seconds."""
        times = []
        next_at = time.perf_counter()
        for _ in range(n):
            next_at += interval
            started = time.perf_counter()
            self.enqueue_one()
            times.append(time.perf_counter() - started)
            time.sleep(max(0.0, next_at - time.perf_counter()))
        return times

    def schedule(self, items: list[tuple[int, float]]) -> None:
        """Schedule ``record(index, due)`` for each (index, due as Unix time)."""
        raise NotImplementedError

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        raise NotImplementedError

    def queue_length(self, client: redis.Redis) -> int:
        return int(client.llen(self.queue_key))

    def close(self) -> None:
        return None


class Atomq(System):
    """atomq through its public API; ``io_task`` picks the async or the sync I/O task, ``count``
    the worker processes of the supervisor (``atomq worker --count``)."""

    def __init__(
        self,
        url: str,
        name: str = "atomq",
        io_task: str = "bench_io",
        concurrency: int | None = None,
        count: int = 2,
    ) -> None:
        super().__init__(name, url, "rq:queue:bench")
        self.env = {
            "REDIS_URL": url,
            "ATOMQ_TASK_MODULES": "bench.peers.atomq_tasks",
            "ATOMQ_QUEUES": "bench",
        }
        # The public TaskQueue reads these on first use.
        os.environ.update(self.env)
        from atomq import TaskQueue

        self.tq = TaskQueue()
        self.tasks = {"noop": "bench_noop", "io": io_task}
        self.concurrency = concurrency
        self.count = count
        self.bulk_api = "task_queue.enqueue_many"

    def enqueue_one(self, kind: str = "noop") -> None:
        self.tq.enqueue(self.tasks[kind])

    def enqueue_bulk(self, n: int, kind: str = "noop") -> bool:
        for start in range(0, n, BULK_CHUNK):
            self.tq.enqueue_many([(self.tasks[kind], {})] * min(BULK_CHUNK, n - start))
        return True

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.tq.enqueue_at(datetime.fromtimestamp(due, UTC), "bench_record", index=index, due=due)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        command = [str(BIN / "atomq"), "worker", "bench", "--count", str(self.count)]
        if self.concurrency:
            command += ["--concurrency", str(self.concurrency)]
        return [command if scheduling else [*command, "--no-scheduler"]]


class AtomqNoHistory(Atomq):
    """The same worker without the per-minute history (issue 15): the difference between the
    two rows is what recording the history costs."""

    def __init__(self, url: str) -> None:
        super().__init__(url, name="atomq-nohistory")
        self.env["ATOMQ_TASK_MODULES"] = "bench.peers.atomq_nohistory_tasks"


def atomq_has_concurrency() -> bool:
    """Whether ``atomq worker`` takes ``--concurrency`` (being built in parallel)."""
    shown = subprocess.run(
        [str(BIN / "atomq"), "worker", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return "--concurrency" in shown.stdout


class RQ(System):
    def __init__(self, url: str, simple: bool) -> None:
        super().__init__("rq-simple" if simple else "rq", url, "rq:queue:bench", 1.0 if simple else 0.1)
        from rq import Queue

        self.simple = simple
        self.queue = Queue("bench", connection=redis.Redis.from_url(url))
        self.bulk_api = "Queue.enqueue_many"

    def enqueue_one(self, kind: str = "noop") -> None:
        self.queue.enqueue(f"bench.peers.rq_tasks.{kind}")

    def enqueue_bulk(self, n: int, kind: str = "noop") -> bool:
        from rq import Queue

        for start in range(0, n, BULK_CHUNK):
            count = min(BULK_CHUNK, n - start)
            self.queue.enqueue_many(
                [Queue.prepare_data(f"bench.peers.rq_tasks.{kind}") for _ in range(count)]
            )
        return True

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.queue.enqueue_at(datetime.fromtimestamp(due, UTC), "bench.peers.rq_tasks.record", index, due)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        command = [str(BIN / "rq"), "worker", "bench", "--url", self.url]
        if self.simple:
            command += ["-w", "rq.worker.SimpleWorker"]
        first = [*command, "--with-scheduler"] if scheduling else command
        return [first, command]


class Dramatiq(System):
    """dramatiq's Redis broker; its default 8 threads per process."""

    def __init__(self, url: str) -> None:
        super().__init__("dramatiq", url, "dramatiq:bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import dramatiq_tasks

        self.tasks = dramatiq_tasks

    def enqueue_one(self, kind: str = "noop") -> None:
        getattr(self.tasks, kind).send()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        now = time.time()
        for index, due in items:
            self.tasks.record.send_with_options(args=(index, due), delay=int((due - now) * 1000))

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [[str(BIN / "dramatiq"), "bench.peers.dramatiq_tasks", "--processes", "2"]]


class Huey(System):
    """huey with 2 worker processes (``-k process``)."""

    def __init__(self, url: str) -> None:
        super().__init__("huey", url, "huey.redis.bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import huey_tasks

        self.tasks = huey_tasks

    def enqueue_one(self, kind: str = "noop") -> None:
        getattr(self.tasks, kind)()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        now = time.time()
        for index, due in items:
            self.tasks.record.schedule(args=(index, due), delay=due - now)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [[str(BIN / "huey_consumer"), "bench.peers.huey_tasks.huey", "-w", "2", "-k", "process"]]


class Celery(System):
    """Celery prefork with 2 children, results off."""

    def __init__(self, url: str) -> None:
        super().__init__("celery", url, "bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import celery_tasks

        self.tasks = celery_tasks

    def enqueue_one(self, kind: str = "noop") -> None:
        getattr(self.tasks, kind).delay()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.tasks.record.apply_async(args=(index, due), eta=datetime.fromtimestamp(due, UTC))

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [
            [
                str(BIN / "celery"),
                "-A",
                "bench.peers.celery_tasks",
                "worker",
                "-c",
                "2",
                "-P",
                "prefork",
                "-Q",
                "bench",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ]
        ]


class AsyncSystem(System):
    """A peer whose client is asyncio-only: its calls run on a loop in a thread."""

    def __init__(self, name: str, url: str, queue_key: str) -> None:
        super().__init__(name, url, queue_key)
        self.runner = AsyncRunner()

    async def _enqueue(self, kind: str) -> None:
        raise NotImplementedError

    async def _schedule(self, index: int, due: float) -> None:
        raise NotImplementedError

    def enqueue_one(self, kind: str = "noop") -> None:
        self.runner.run(self._enqueue(kind))

    def enqueue_single(self, n: int, kind: str = "noop") -> None:
        async def many() -> None:
            for _ in range(n):
                await self._enqueue(kind)

        self.runner.run(many())

    def timed_calls(self, n: int, interval: float) -> list[float]:
        import asyncio

        async def calls() -> list[float]:
            times = []
            next_at = time.perf_counter()
            for _ in range(n):
                next_at += interval
                started = time.perf_counter()
                await self._enqueue("noop")
                times.append(time.perf_counter() - started)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            return times

        return self.runner.run(calls())

    def schedule(self, items: list[tuple[int, float]]) -> None:
        async def all_of_them() -> None:
            for index, due in items:
                await self._schedule(index, due)

        self.runner.run(all_of_them())

    def close(self) -> None:
        self.runner.close()


class Arq(AsyncSystem):
    """arq at its defaults (``max_jobs`` 10, asyncio), one ``arq`` process per worker."""

    def __init__(self, url: str) -> None:
        super().__init__("arq", url, "arq:queue")
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = self.runner.run(create_pool(RedisSettings.from_dsn(url)))

    async def _enqueue(self, kind: str) -> None:
        await self.pool.enqueue_job(kind)

    async def _schedule(self, index: int, due: float) -> None:
        await self.pool.enqueue_job("record", index, due, _defer_until=datetime.fromtimestamp(due, UTC))

    def queue_length(self, client: redis.Redis) -> int:
        return int(client.zcard(self.queue_key))

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        command = [str(BIN / "arq"), "bench.peers.arq_tasks.WorkerSettings"]
        return [command, command]


class Saq(AsyncSystem):
    """saq at its defaults (``concurrency`` 10 per process), ``saq --workers 2``."""

    def __init__(self, url: str) -> None:
        super().__init__("saq", url, "saq:bench:queued")
        from saq import Queue

        async def connect() -> Any:
            queue = Queue.from_url(url, name="bench")
            await queue.connect()
            return queue

        self.queue = self.runner.run(connect())

    async def _enqueue(self, kind: str) -> None:
        await self.queue.enqueue(kind)

    async def _schedule(self, index: int, due: float) -> None:
        # saq's ``scheduled`` is documented as epoch seconds (int); it stores a float as given.
        await self.queue.enqueue("record", index=index, due=due, scheduled=due)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [[str(BIN / "saq"), "bench.peers.saq_tasks.settings", "--workers", "2"]]


SYSTEMS: dict[str, Callable[[str], System]] = {
    "atomq": Atomq,
    "atomq-nohistory": AtomqNoHistory,
    "rq": lambda url: RQ(url, simple=False),
    "rq-simple": lambda url: RQ(url, simple=True),
    "dramatiq": Dramatiq,
    "huey": Huey,
    "celery": Celery,
    "arq": Arq,
    "saq": Saq,
}

#: The peers whose best figure is the bar for atomq.
BEST_PEERS = ("dramatiq", "arq", "saq")
