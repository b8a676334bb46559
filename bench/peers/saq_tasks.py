"""saq's benchmark functions (asyncio; ``saq bench.peers.saq_tasks.settings --workers 2``).

Everything is at saq's defaults: ``concurrency`` 10 per worker process.
"""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from bench.peers.common import io_async, record_start


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def record(ctx: dict[str, Any], *, index: int, due: float) -> None:
    record_start(index, due)


async def io(ctx: dict[str, Any]) -> None:
    await io_async()


def queue() -> Queue:
    return Queue.from_url(os.environ["BENCH_REDIS_URL"], name="bench")


settings = {"queue": queue(), "functions": [noop, record, io]}
