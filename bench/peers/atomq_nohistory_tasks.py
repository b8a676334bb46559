"""atomq's benchmark tasks, in a worker that records no per-minute history.

Only for ``bench_engine.py --systems atomq,atomq-nohistory`` (``bench/systems.py``): the difference between the two
is what the history (issue 15) costs per job. Switching it off by replacing the writer is a
benchmark's measuring device, not a setting atomq offers.
"""

from __future__ import annotations

from typing import Any

from atomq.engine import history
from bench.peers.atomq_tasks import io, io_blocking, noop, record

__all__ = ["io", "io_blocking", "noop", "record"]


def _skip(self: history.HistoryTally, pipe: Any, *, now: float | None = None) -> None:
    return None


history.HistoryTally.write = _skip  # type: ignore[method-assign]
