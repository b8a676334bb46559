"""A worker's warm-up: what the tasks it serves would build on their first job, built first.

A worker that starts at 8:59 and finds hundreds of posts due at 9:00 must not spend the first
of them opening pools, loading a TLS bundle and compiling queries: measured on a 400-post burst
(``bench/bench_posts.py --burst``), a fresh worker's first post reached the platform about
200 ms after its due time, where the engine starts a job within a few milliseconds. A task names
its warm-up (``@task(warm_up="module:function")``); the worker calls each one once, before it
claims any job.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from atomq.engine.tasks import TaskSpec, warm_up_function

logger = logging.getLogger("atomq.worker")

#: Longest a warm-up may hold up a worker's start; past it the worker starts anyway and the
#: warm-up (an async one) is cancelled.
WARM_UP_SECONDS = 10.0


def warm_up(
    specs: Iterable[TaskSpec],
    connection: redis.Redis,
    loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Call the warm-up of every task in ``specs`` (each function once), with ``connection``:
    coroutine functions on ``loop()`` (the event loop the async jobs share), others here.
    Failures are logged, never raised: the jobs then warm up by themselves."""
    done: set[Callable[[Any], Any]] = set()
    for spec in specs:
        func = warm_up_function(spec)
        if func is None or func in done:
            continue
        done.add(func)
        started = time.monotonic()
        try:
            if inspect.iscoroutinefunction(func):
                future = asyncio.run_coroutine_threadsafe(func(connection), loop())
                try:
                    future.result(WARM_UP_SECONDS)
                except TimeoutError:
                    future.cancel()
                    raise
            else:
                func(connection)
        except Exception as exc:
            logger.warning(
                "task %s: warm-up %s failed (%r); its first jobs warm up by themselves",
                spec.name,
                spec.warm_up,
                exc,
            )
            continue
        logger.debug("task %s: warmed up in %.0f ms", spec.name, (time.monotonic() - started) * 1000)
