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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

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


async def _run(pool: ThreadPoolExecutor, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
