"""arq's benchmark functions (asyncio; ``arq bench.peers.arq_tasks.WorkerSettings``).

Everything is at arq's defaults: ``max_jobs`` 10 in flight per process, queue ``arq:queue``.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from bench.peers.common import io_async, record_start


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def record(ctx: dict[str, Any], index: int, due: float) -> None:
    record_start(index, due)


async def io(ctx: dict[str, Any]) -> None:
    await io_async()


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


class WorkerSettings:
    functions = [noop, record, io]
    redis_settings = redis_settings()
