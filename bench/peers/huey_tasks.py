"""huey's benchmark tasks on its Redis storage."""

from __future__ import annotations

import os

from huey import RedisHuey

from bench.peers.common import io_sync, record_start

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"], results=False)


@huey.task()
def noop() -> None:
    return None


@huey.task()
def record(index: int, due: float) -> None:
    record_start(index, due)


@huey.task()
def io() -> None:
    io_sync()
