"""RQ's benchmark tasks (imported by `rq worker` by dotted path)."""

from __future__ import annotations

from bench.peers.common import io_sync, record_start


def noop() -> None:
    return None


def record(index: int, due: float) -> None:
    record_start(index, due)


def io() -> None:
    io_sync()
