"""Running publishing's blocking steps (database, Redis) off the event loop.

Publishing is async so that a worker can wait on many platforms at once, but its records are
SQLAlchemy sessions and its limits redis-py calls, both blocking. :func:`off_loop` runs one
such step on a small pool of threads of this process and awaits it, so the loop keeps serving
the other posts meanwhile.

The pool is publishing's own rather than the loop's default executor: that one is shared with
whatever else runs on the loop (a worker may run sync tasks in it), and a step that records a
post's outcome must not queue behind them. Its size stays within the database's connection
pool (5 + 10 overflow on PostgreSQL), so threads never wait for a connection.
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

#: Threads per process for publishing's database and Redis steps. Each step is short (one
#: query, one script), so a few threads keep up with hundreds of posts in flight.
OFF_LOOP_THREADS = 8

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def executor() -> ThreadPoolExecutor:
    """This process's pool (a forked child makes its own: threads do not survive a fork)."""
    pid = os.getpid()
    with _lock:
        pool = _pools.get(pid)
        if pool is None:
            _pools.clear()
            pool = _pools[pid] = ThreadPoolExecutor(OFF_LOOP_THREADS, thread_name_prefix="atomq-posts")
        return pool


async def off_loop(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` on publishing's threads, awaited.

    The call sees the caller's context variables (the job's log fields), as
    :func:`asyncio.to_thread` does. Cancelling the await does not stop a step already
    running: it completes, and the state machine's compare-and-set updates make that safe.
    """
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor(), call)
