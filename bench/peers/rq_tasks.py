"""RQ's benchmark tasks (imported by `rq worker` by dotted path)."""

from __future__ import annotations

from bench.peers.common import record_start


def noop() -> None:
    return None


def record(index: int, due: float) -> None:
    record_start(index, due)
