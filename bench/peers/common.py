"""What every peer's tasks share: where to record start times."""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis

#: List the ``record`` tasks push ``[index, due, started]`` onto.
STARTS_KEY = "bench:starts"

#: Counter the I/O tasks increment when they end (the I/O drain counts completions).
DONE_KEY = "bench:done"

#: Seconds each I/O task waits (a call to a slow outside service).
IO_SECONDS = 0.1

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def record_start(index: int, due: float) -> None:
    """Note when a scheduled job actually started."""
    started = time.time()
    client().rpush(STARTS_KEY, json.dumps([index, due, started]))


def mark_done() -> None:
    """Count one finished I/O job (a blocking call of ~0.1 ms, also from coroutines)."""
    client().incr(DONE_KEY)


def io_sync() -> None:
    """The synchronous I/O job: block the thread for :data:`IO_SECONDS`."""
    time.sleep(IO_SECONDS)
    mark_done()


async def io_async() -> None:
    """The asynchronous I/O job: yield to the event loop for :data:`IO_SECONDS`."""
    await asyncio.sleep(IO_SECONDS)
    mark_done()
