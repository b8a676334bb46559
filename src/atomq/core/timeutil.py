"""Time helpers: aware datetimes everywhere, naive ones read in the configured zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from atomq.core.errors import InvalidJobOptionError


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def rq_text(moment: datetime) -> str:
    """``moment`` in RQ's text form, ``2026-02-06T14:30:00.000000Z`` (what ``rq.utils.utcformat``
    writes, without its ``strftime``: a worker formats two of these per job). ``moment`` is UTC,
    aware or naive."""
    if moment.tzinfo is UTC:
        moment = moment.replace(tzinfo=None)
    elif moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def to_aware(value: datetime, zone: tzinfo, *, field: str = "at") -> datetime:
    """``value`` as an aware datetime; a naive one is wall-clock time in ``zone``.

    A wall-clock time that a DST change skips (02:30 on a spring-forward night) is refused
    rather than silently moved; an ambiguous one (the repeated hour in autumn) takes the
    first occurrence, as ``fold=0`` means.
    """
    if not isinstance(value, datetime):
        raise InvalidJobOptionError(f"{field} must be a datetime, got {type(value).__name__}", field=field)
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value
    aware = value.replace(tzinfo=zone)
    # Round-trip through UTC: a time inside a DST gap does not come back unchanged.
    back = aware.astimezone(UTC).astimezone(zone)
    if back.replace(tzinfo=None) != value.replace(tzinfo=None, fold=0):
        raise InvalidJobOptionError(
            f"{value.isoformat()} does not exist in {zone} (skipped by a daylight-saving change)", field=field
        )
    return aware


def as_timedelta(value: timedelta | float | int, *, field: str = "delay") -> timedelta:
    """Accept a ``timedelta`` or a number of seconds; refuse negatives."""
    if isinstance(value, bool):
        raise InvalidJobOptionError(f"{field} must be a timedelta or seconds, got {value!r}", field=field)
    if isinstance(value, int | float):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise InvalidJobOptionError(
            f"{field} must be a timedelta or seconds, got {type(value).__name__}", field=field
        )
    if value < timedelta(0):
        raise InvalidJobOptionError(f"{field} cannot be negative, got {value}", field=field)
    return value
