"""The series the dashboard's charts draw and ``GET /api/v1/tasks/stats`` returns (issue 15).

A thin layer over :mod:`atomq.engine.history`: it checks what a caller asked for (a range the
history keeps points for, a queue that exists) and picks the queues to sum.
"""

from __future__ import annotations

import redis

from atomq.core.errors import InvalidInputError, NotFoundError
from atomq.core.options import validate_queue_name
from atomq.engine import history
from atomq.ops.monitor import known_queues

#: Ranges a caller may ask for, shortest first.
RANGE_NAMES: tuple[str, ...] = tuple(history.RANGES)


def job_history(
    connection: redis.Redis,
    configured: list[str],
    *,
    range_name: str = "1h",
    queue: str | None = None,
    now: float | None = None,
) -> history.History:
    """Per-minute rates, depth, durations and lateness over ``range_name``, for ``queue`` or
    summed over every queue; one round trip for the history (plus one for the queue list)."""
    if range_name not in history.RANGES:
        raise InvalidInputError(
            f"range must be one of {', '.join(RANGE_NAMES)}, not {range_name!r}", field="range"
        )
    names = known_queues(connection, configured)
    if queue is not None:
        validate_queue_name(queue)
        if queue not in names:
            raise NotFoundError(f"no queue named {queue!r}", field="queue")
        names = [queue]
    return history.read(
        connection,
        names,
        range_name=range_name,
        now=now,
    )
