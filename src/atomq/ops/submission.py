"""One entry point for "run this task now, after a delay, or at a time": what the HTTP API's
``POST /api/v1/tasks/jobs`` (and any other front end taking plain values) calls.

It differs from :meth:`TaskQueue.enqueue_at` on one point on purpose: a due time without a
UTC offset is refused unless the caller names its timezone. A Python caller has
``ATOMQ_TIMEZONE`` in its own configuration; a remote caller sending ``14:30`` most likely
means its own wall clock, and guessing the server's would schedule the post at the wrong hour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atomq.core.errors import InvalidJobOptionError, JobNotFoundError
from atomq.core.timeutil import to_aware, utcnow
from atomq.engine.jobs import AtomqJob
from atomq.engine.task_queue import TaskQueue

#: How far ahead a due time may be: the same ten years as the API's largest ``delay``. A time
#: beyond it (year 9999) is a client's mistake, and would sit in Redis for ever.
FARTHEST_AHEAD = timedelta(days=3650)

#: How far in the past a due time may be. A time a little in the past runs at once (clocks
#: differ, requests are slow); one from days or centuries ago is a wrong year or zone.
FARTHEST_BEHIND = timedelta(days=1)


def resolve_due_time(at: datetime, timezone: str | None) -> datetime:
    """``at`` as an aware datetime: its own offset, else wall-clock time in ``timezone``."""
    if at.tzinfo is not None and at.utcoffset() is not None:
        return at
    if not timezone:
        raise InvalidJobOptionError(
            f"at ({at.isoformat()}) has no UTC offset: add one (e.g. {at.isoformat()}+00:00) "
            'or give timezone (e.g. "Europe/Paris")',
            field="at",
        )
    return to_aware(at, zone(timezone), field="at")


def check_due_range(when: datetime) -> datetime:
    """``when`` if it is at most a day ago and at most ten years ahead; else 422 on ``at``."""
    now = utcnow()
    if when.astimezone(UTC) > now + FARTHEST_AHEAD:
        raise InvalidJobOptionError(
            f"at ({when.isoformat()}) is more than ten years ahead; pick an earlier time", field="at"
        )
    if when.astimezone(UTC) < now - FARTHEST_BEHIND:
        raise InvalidJobOptionError(
            f"at ({when.isoformat()}) is more than a day in the past (wrong year or timezone?); "
            "leave at out to run the job now",
            field="at",
        )
    return when


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` or :class:`InvalidJobOptionError` naming the field."""
    try:
        # IANA names are short; a long one would only reach the filesystem as a bad path.
        if len(name) > 64:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidJobOptionError(
            f"unknown IANA timezone {name[:80]!r} (for example 'UTC' or 'Europe/Paris')", field="timezone"
        ) from None


def submit(
    task_queue: TaskQueue,
    task: str,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    delay: float | None = None,
    at: datetime | None = None,
    timezone: str | None = None,
    **options: Any,
) -> AtomqJob:
    """Enqueue ``task`` now, after ``delay`` seconds, or at ``at``.

    ``options`` are :meth:`TaskQueue.enqueue`'s (``queue``, ``job_id``, ``timeout``, ``retry``,
    ...); pass only the ones that are set, so the task's own defaults apply to the rest.
    """
    call: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs or {}), **options}
    if delay is not None and at is not None:
        raise InvalidJobOptionError("give delay or at, not both", field="delay")
    if timezone is not None and at is None:
        raise InvalidJobOptionError("timezone only applies to at", field="timezone")
    try:
        if at is not None:
            return task_queue.enqueue_at(check_due_range(resolve_due_time(at, timezone)), task, **call)
        if delay is not None:
            return task_queue.enqueue_in(delay, task, **call)
        return task_queue.enqueue(task, **call)
    except JobNotFoundError as exc:
        # A request naming a job that does not exist is bad input, not a missing resource.
        if exc.field == "depends_on":
            raise InvalidJobOptionError(exc.message, field="depends_on") from None
        raise
