"""Running publishing's blocking steps (database, Redis) off the event loop.

Publishing is async so that a worker can wait on many platforms at once, but its records are
SQLAlchemy sessions and its limits redis-py calls, both blocking. :func:`off_loop` runs one
such step on a small pool of threads of this process and awaits it, so the loop keeps serving
the other posts meanwhile.

The pools are publishing's own rather than the loop's default executor: that one is shared
with whatever else runs on the loop (a worker may run sync tasks in it), and a step that records
a post's outcome must not queue behind them. The common path takes two steps per post, each
on one of these threads: the start (read, the account's rate limit and in-flight lock, the
claim) and the end (the publish recorded, the lock given back). The few Redis-only steps (a
lock given back after a failure, riding out a Redis outage) have a pool of their own.

The database pool is small on purpose. Its steps are mostly Python holding the GIL, so more
threads do not make them faster; they only make them share the CPU: with 8 threads, a burst of
100 posts had all 100 start steps progressing together and finishing together, late, where 2
threads finish them nearly in order, so the first posts leave at once and an account's next
post starts sooner. Measured with ``bench/bench_posts.py --burst --platform-latency 200``
(400 posts, 200 accounts): p99 lateness 1.6-2.2 s with 8 threads, 1.3-1.9 s with 2. On SQLite
(one writer at a time, no network to wait on) one thread is best: p99 0.73-0.80 s against
0.83-0.89 s with 2, alternating runs. A database a network hop away keeps 2, so that one step
runs while another waits for its answer: on PostgreSQL one thread gave 1.41-1.47 s against
1.27-1.28 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item, beside R its result
R = TypeVar("R")

#: Threads per process for publishing's database steps (see above): on SQLite, elsewhere,
#: and for its Redis steps.
SQLITE_THREADS = 1
OFF_LOOP_THREADS = 2
REDIS_THREADS = 4

_SIZES = {"sqlite": SQLITE_THREADS, "db": OFF_LOOP_THREADS, "redis": REDIS_THREADS}

_lock = threading.Lock()
_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}


def executor(kind: str = "db") -> ThreadPoolExecutor:
    """This process's pool for ``kind`` ("db", "sqlite" or "redis"); a forked child makes its
    own: threads do not survive a fork."""
    pid = os.getpid()
    with _lock:
        pool = _pools.get((pid, kind))
        if pool is None:
            for key in [k for k in _pools if k[0] != pid]:
                del _pools[key]
            size = _SIZES[kind]
            pool = _pools[(pid, kind)] = ThreadPoolExecutor(size, thread_name_prefix=f"atomq-posts-{kind}")
        return pool


async def off_loop(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` on publishing's database threads, awaited.

    The call sees the caller's context variables (the job's log fields), as
    :func:`asyncio.to_thread` does. Cancelling the await does not stop a step already
    running: it completes, and the state machine's compare-and-set updates make that safe.
    """
    return await _run(executor("db"), func, *args, **kwargs)


def threads(kind: str) -> int:
    """How many threads the pool for ``kind`` has."""
    return _SIZES[kind]


def database_kind(dialect: str) -> str:
    """The pool for steps on a database of ``dialect`` (see the module's docstring)."""
    return "sqlite" if dialect == "sqlite" else "db"


async def on_pool(kind: str, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """:func:`off_loop` on the pool for ``kind`` (see :func:`database_kind`)."""
    return await _run(executor(kind), func, *args, **kwargs)


async def redis_off_loop(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """:func:`off_loop` for a Redis step, on threads no database step holds."""
    return await _run(executor("redis"), func, *args, **kwargs)


#: Calls a :class:`Batches` runs together at most, by default.
BATCH_LIMIT = 64


class Batches(Generic[I, R]):
    """One step's calls that arrive while its pool is busy, run together as one step.

    ``run_many(items)`` returns a result or an exception for each item, in order. A call made
    while the pool has a thread free runs at once (alone, when it is alone); calls made while
    every thread runs a batch wait for the next one, up to ``limit`` per batch. So an idle
    worker's post waits for nobody, and a burst's posts share reads and transactions instead
    of queueing for them one by one. A batch runs outside any job's context: its step must
    not log as one job.
    """

    def __init__(
        self, run_many: Callable[[list[I]], list[R | Exception]], kind: str, limit: int = BATCH_LIMIT
    ) -> None:
        self.run_many = run_many
        self.kind = kind
        self.limit = limit
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiting[I, R]] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, item: I) -> R:
        """``item``'s result (or its exception raised), once its batch has run."""
        loop = asyncio.get_running_loop()
        waiting = self._loops.get(loop)
        if waiting is None:
            waiting = self._loops[loop] = _Waiting()
        future: asyncio.Future[R] = loop.create_future()
        waiting.items.append((item, future))
        self._pump(loop, waiting)
        return await future

    def _pump(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting[I, R]) -> None:
        items = waiting.items
        while items and waiting.running < threads(self.kind):
            # A caller gone before its batch started (cancelled at a time limit) is left out, as
            # a step still queued for a thread is; one whose batch runs is like a step that
            # started. Looked at only as a batch is taken: every call pumps, and looking over
            # all that wait each time cost a burst (hundreds waiting) time quadratic in them.
            batch: list[tuple[I, asyncio.Future[R]]] = []
            while items and len(batch) < self.limit:
                entry = items.popleft()
                if not entry[1].done():
                    batch.append(entry)
            if not batch:
                return
            waiting.running += 1
            done = loop.run_in_executor(executor(self.kind), self.run_many, [item for item, _ in batch])
            done.add_done_callback(functools.partial(self._settle, loop, waiting, batch))

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: _Waiting[I, R],
        batch: list[tuple[I, asyncio.Future[R]]],
        done: asyncio.Future[list[R | Exception]],
    ) -> None:
        waiting.running -= 1
        failed = done.exception() if not done.cancelled() else asyncio.CancelledError()
        results: list[R | BaseException] = (
            [failed] * len(batch) if failed is not None else list(done.result())
        )
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled (a time limit): nobody to tell
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._pump(loop, waiting)


@dataclass
class _Waiting(Generic[I, R]):
    """A loop's calls of one :class:`Batches` not started yet, and its batches running."""

    items: deque[tuple[I, asyncio.Future[R]]] = field(default_factory=deque)
    running: int = 0


async def _run(pool: ThreadPoolExecutor, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
