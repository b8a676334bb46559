"""atomq's benchmark tasks."""

from __future__ import annotations

from atomq import task
from bench.peers.common import record_start


@task("bench_noop", queue="bench")
def noop() -> None:
    return None


@task("bench_record", queue="bench")
def record(index: int, due: float) -> None:
    record_start(index, due)
