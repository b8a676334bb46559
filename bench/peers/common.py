"""What every peer's tasks share: where to record start times."""

from __future__ import annotations

import json
import os
import time

import redis

#: List the ``record`` tasks push ``[index, due, started]`` onto.
STARTS_KEY = "bench:starts"

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
