"""One entry point for "run this task now, after a delay, or at a time": what the HTTP API's
``POST /api/v1/tasks/jobs`` (and any other front end taking plain values) calls.

It differs from :meth:`TaskQueue.enqueue_at` on one point on purpose: a due time without a
UTC offset is refused unless the caller names its timezone. A Python caller has
``ATOMQ_TIMEZONE`` in its own configuration; a remote caller sending ``14:30`` most likely
means its own wall clock, and guessing the server's would schedule the post at the wrong hour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atomq.errors import InvalidJobOptionError, JobNotFoundError
from atomq.jobs import AtomqJob
from atomq.task_queue import TaskQueue
from atomq.timeutil import to_aware


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


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` or :class:`InvalidJobOptionError` naming the field."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
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
            return task_queue.enqueue_at(resolve_due_time(at, timezone), task, **call)
        if delay is not None:
            return task_queue.enqueue_in(delay, task, **call)
        return task_queue.enqueue(task, **call)
    except JobNotFoundError as exc:
        # A request naming a job that does not exist is bad input, not a missing resource.
        if exc.field == "depends_on":
            raise InvalidJobOptionError(exc.message, field="depends_on") from None
        raise
