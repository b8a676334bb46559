"""Recurring jobs: cron expressions or fixed intervals, each in its own IANA timezone.

Define them in Python (in a task module)::

    recurring("nightly-report", "build_report", cron="30 2 * * *", timezone="Europe/Paris",
              kwargs={"kind": "daily"}, missed="run_once")
    recurring("poll-feeds", "poll_feeds", every=60)

or in a YAML/JSON file named by ``ATOMQ_RECURRING_FILE`` (a list of the same fields).

**Exactly once, however many schedulers run.** The leading scheduler plans occurrences
ahead (:data:`LOOKAHEAD_SECONDS`) into RQ's scheduled registry, where the scheduler's atomic
move enqueues them when due. The job of the occurrence due at instant ``T`` is always
``recurring-<name>-<T in ms>`` and is written with ``unique=True``: two schedulers that both
believe they lead (a lease handover) plan the same ids, and the second write is refused.
Because occurrences are planned ahead, a scheduler that dies costs nothing as long as a
standby takes over within the look-ahead.

**Daylight saving.** Cron fields are wall-clock times in the schedule's zone. A time the
clocks skip (02:30 on a spring-forward night) runs once, at the instant the clocks jump; a
time they repeat (the autumn hour) runs once, at its first occurrence. ``every`` counts
real seconds on a fixed grid from the Unix epoch, unaffected by DST.

**Missed runs.** Occurrences that fell due while no scheduler ran (more than
:data:`LATE_TOLERANCE_SECONDS` ago) are skipped (``missed="skip"``, the default), or only
the latest of them runs, at once (``missed="run_once"``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from croniter import croniter

from atomq.core import keys
from atomq.core.errors import ConfigurationError, DuplicateJobError
from atomq.core.files import read_data_file
from atomq.core.options import DerivedJobId
from atomq.core.settings import Settings
from atomq.engine.plugins import Context, periodic
from atomq.engine.task_queue import TaskQueue

logger = logging.getLogger("atomq.features.recurring.schedules")

#: Occurrences due within this many seconds are planned (written to the scheduled registry).
LOOKAHEAD_SECONDS = 60.0

#: An occurrence this late is still enqueued at once; older ones are "missed".
LATE_TOLERANCE_SECONDS = 60.0

#: Most occurrences planned per schedule per pass (an every=1 schedule plans 60 at most).
MAX_PLANNED_PER_PASS = 500

#: Hash of schedule name -> due time (epoch seconds) of the last occurrence planned.
PLANNED_KEY = f"{keys.PREFIX}:recurring:planned"

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

Missed = Literal["skip", "run_once"]


@dataclass(frozen=True)
class Schedule:
    """A recurring call of a task."""

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    missed: Missed = "skip"
    queue: str | None = None
    timeout: int | None = None

    def __post_init__(self) -> None:
        where = f"recurring job {self.name!r}"
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigurationError(f"{where}: name must be 1-64 letters, digits, '_', '.' or '-'")
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"{where}: give exactly one of cron or every")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ConfigurationError(f"{where}: {self.cron!r} is not a valid cron expression")
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int | float) or self.every < 1
        ):
            raise ConfigurationError(f"{where}: every must be at least 1 second, got {self.every!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"{where}: unknown IANA timezone {self.timezone!r}") from None
        if self.missed not in ("skip", "run_once"):
            raise ConfigurationError(f"{where}: missed must be 'skip' or 'run_once', got {self.missed!r}")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.every:g}s"

    def occurrences(self, after: float, until: float, limit: int = MAX_PLANNED_PER_PASS) -> list[float]:
        """Due instants (epoch seconds, UTC) in ``(after, until]``, in order."""
        out: list[float] = []
        if self.every is not None:
            step = float(self.every)
            due = (math.floor(after / step) + 1) * step
            while due <= until and len(out) < limit:
                out.append(due)
                due += step
            return out
        assert self.cron is not None
        zone = self.zone
        # Walk wall-clock times from a little before ``after`` (a time moved forward by a DST
        # gap may still lie after it), then map each to a real instant.
        start = datetime.fromtimestamp(after, zone).replace(tzinfo=None) - timedelta(hours=3)
        walker = croniter(self.cron, start)
        until_wall = datetime.fromtimestamp(until, zone).replace(tzinfo=None) + timedelta(hours=3)
        while len(out) < limit:
            try:
                wall: datetime = walker.get_next(datetime)
            except (ValueError, KeyError, OverflowError):  # croniter gives up on impossible dates
                break
            if wall > until_wall:
                break
            due = to_instant(wall, zone)
            if after < due <= until and (not out or due > out[-1]):
                out.append(due)
        return out

    def job_id(self, due: float) -> str:
        return f"recurring-{self.name}-{round(due * 1000)}"


def to_instant(wall: datetime, zone: ZoneInfo) -> float:
    """The epoch time of wall-clock ``wall`` in ``zone``: skipped times map to the instant the
    clocks jump, repeated times to their first occurrence."""
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first.timestamp()
    # ``wall`` falls in a gap: the jump lies between the two readings of it; find the first
    # second after which the offset has changed.
    low = wall.replace(tzinfo=zone, fold=1).timestamp()
    high = first.timestamp()
    low, high = min(low, high), max(low, high)
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return float(high)


# -- definitions ---------------------------------------------------------------------------

_registry: dict[str, Schedule] = {}


def recurring(name: str, task: str, **options: Any) -> Schedule:
    """Register a recurring call of ``task`` (see :class:`Schedule` for the options)."""
    schedule = Schedule(name, task, **options)
    _registry[name] = schedule
    return schedule


def load_schedules_file(path: str | Path) -> list[Schedule]:
    """Schedules from a YAML or JSON file: a list of mappings, or ``{"recurring": [...]}``."""
    path = Path(path)
    try:
        data = read_data_file(path)
    except ValueError as exc:
        raise ConfigurationError(f"recurring jobs file: {exc}") from None
    if isinstance(data, Mapping):
        data = data.get("recurring")
    if not isinstance(data, list):
        raise ConfigurationError(f"{path}: expected a list of recurring jobs")
    out = []
    for index, raw in enumerate(data):
        if not isinstance(raw, Mapping) or "name" not in raw or "task" not in raw:
            raise ConfigurationError(f"{path}: entry {index + 1} needs at least a name and a task")
        try:
            out.append(Schedule(**raw))
        except TypeError as exc:
            raise ConfigurationError(f"{path}: recurring job {raw.get('name')!r}: {exc}") from None
    return out


def all_schedules(settings: Settings) -> list[Schedule]:
    """Schedules defined in code and in ``ATOMQ_RECURRING_FILE`` (the file wins on a name clash)."""
    found = dict(_registry)
    if settings.recurring_file:
        for schedule in load_schedules_file(settings.recurring_file):
            found[schedule.name] = schedule
    return [found[name] for name in sorted(found)]


# -- planning ------------------------------------------------------------------------------


def plan(
    tq: Any, schedules: list[Schedule], now: float, lookahead: float = LOOKAHEAD_SECONDS
) -> dict[str, int]:
    """Write the occurrences due up to ``now + lookahead`` of every schedule; return how many
    each planned. Idempotent: running it again, or from several processes at once, plans
    nothing twice."""
    connection: redis.Redis = tq.connection
    planned = {_text(k): float(v) for k, v in connection.hgetall(PLANNED_KEY).items()}
    counts: dict[str, int] = {}
    for schedule in schedules:
        counts[schedule.name] = _plan_one(tq, schedule, planned.get(schedule.name), now, lookahead)
    return counts


def _plan_one(tq: Any, schedule: Schedule, last: float | None, now: float, lookahead: float) -> int:
    start = last if last is not None else now
    written = 0
    newest: float | None = None
    if last is not None and last < now - LATE_TOLERANCE_SECONDS:
        missed = schedule.occurrences(last, now - LATE_TOLERANCE_SECONDS, limit=100_000)
        if missed:
            logger.warning(
                "recurring %s: %d run(s) missed while no scheduler ran (%s)",
                schedule.name,
                len(missed),
                "running the latest now" if schedule.missed == "run_once" else "skipped",
            )
            if schedule.missed == "run_once":
                written += _write(tq, schedule, missed[-1], run_now=True)
            newest = missed[-1]
        start = now - LATE_TOLERANCE_SECONDS
    dues = schedule.occurrences(start, now + lookahead)
    for due in dues:
        written += _write(tq, schedule, due)
    if dues:
        newest = dues[-1]
    if newest is not None:
        # Only forward: a slower planner holding an older view must not move it back.
        tq.connection.eval(_ADVANCE, 1, PLANNED_KEY, schedule.name, repr(newest))
    return written


_ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


def _write(tq: Any, schedule: Schedule, due: float, *, run_now: bool = False) -> int:
    options: dict[str, Any] = {
        "job_id": DerivedJobId(schedule.job_id(due)),
        "unique": True,
        "description": f"recurring {schedule.name} due {datetime.fromtimestamp(due, UTC).isoformat()}",
        "meta": {"recurring": schedule.name, "due": due},
    }
    if schedule.queue:
        options["queue"] = schedule.queue
    if schedule.timeout:
        options["timeout"] = schedule.timeout
    when = datetime.now(UTC) if run_now else datetime.fromtimestamp(due, UTC)
    try:
        tq.enqueue_at(when, schedule.task, kwargs=dict(schedule.kwargs), **options)
    except DuplicateJobError:
        return 0
    return 1


def describe(connection: redis.Redis, schedules: list[Schedule], now: float) -> list[dict[str, Any]]:
    """What ``atomq scheduler`` lists: each schedule with its next due time."""
    planned = {_text(k): float(v) for k, v in connection.hgetall(PLANNED_KEY).items()}
    out = []
    for schedule in schedules:
        upcoming = schedule.occurrences(now, now + 400 * 86_400, limit=1)
        nxt = upcoming[0] if upcoming else None
        last = planned.get(schedule.name)
        out.append(
            {
                "name": schedule.name,
                "task": schedule.task,
                "schedule": schedule.describe(),
                "timezone": schedule.timezone,
                "missed": schedule.missed,
                "next_due": datetime.fromtimestamp(nxt, schedule.zone).isoformat() if nxt else None,
                "next_due_utc": datetime.fromtimestamp(nxt, UTC).isoformat() if nxt else None,
                "planned_until": datetime.fromtimestamp(last, UTC).isoformat() if last else None,
            }
        )
    return out


@periodic("recurring.plan", interval=5)
def _plan_periodic(ctx: Context) -> None:
    schedules = all_schedules(ctx.settings)
    if not schedules:
        return

    counts = plan(TaskQueue(settings=ctx.settings, connection=ctx.connection), schedules, time.time())
    if any(counts.values()):
        logger.debug("recurring: planned %s", counts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
