"""Celery's benchmark tasks on a Redis broker, results off (as measured in DESIGN.md)."""

from __future__ import annotations

import os

from celery import Celery

from bench.peers.common import io_sync, record_start

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.record")
def record(index: int, due: float) -> None:
    record_start(index, due)


@app.task(name="bench.io")
def io() -> None:
    io_sync()
