"""atomq's benchmark tasks."""

from __future__ import annotations

from atomq import task
from bench.peers.common import io_async, io_sync, record_start


@task("bench_noop", queue="bench")
def noop() -> None:
    return None


@task("bench_record", queue="bench")
def record(index: int, due: float) -> None:
    record_start(index, due)


@task("bench_io", queue="bench")
async def io() -> None:
    await io_async()


@task("bench_io_sync", queue="bench")
def io_blocking() -> None:
    io_sync()
