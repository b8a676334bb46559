"""dramatiq's benchmark actors on its Redis broker."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers.common import io_sync, record_start

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(queue_name="bench", max_retries=0)
def record(index: int, due: float) -> None:
    record_start(index, due)


@dramatiq.actor(queue_name="bench", max_retries=0)
def io() -> None:
    io_sync()
