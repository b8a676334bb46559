"""Extension points of the dashboard: timeline and progress sources.

A feature shows its records on the dashboard by registering a function, in a module listed in
:data:`SOURCE_MODULES` (or in ``ATOMQ_DASHBOARD_MODULES`` for an application's own)::

    from atomq.dashboard.sections import TimelineItem, timeline_source

    @timeline_source("posts", title="Scheduled posts", order=20)
    def scheduled_posts(ctx: DashboardContext, until: datetime, limit: int) -> list[TimelineItem]:
        with ctx.database.session() as session:
            return [TimelineItem(at=p.publish_at, kind="post", title=p.text[:60], ref=p.id,
                                 status=p.state) for p in posts_due_before(session, until, limit)]

Sources get what they need through :class:`DashboardContext` (settings, Redis, the database on
demand) and return plain dataclasses; the pages render them generically. A source that raises
shows its error in its own section; the rest of the page still renders.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Generic, TypeVar

import redis

from atomq.core.errors import ConfigurationError
from atomq.core.settings import Settings
from atomq.db.engine import Database

logger = logging.getLogger("atomq.dashboard")

#: Modules imported before the dashboard first renders, so their sources are registered.
#: Scheduled posts, workflow runs and batches add their modules here.
SOURCE_MODULES: tuple[str, ...] = (
    "atomq.dashboard.builtin",
    "atomq.features.posts.observe",
    "atomq.dashboard.flows",
)


@dataclass(frozen=True)
class TimelineItem:
    """Something due at a moment: a scheduled job, a scheduled post, a timer in a workflow."""

    at: datetime
    kind: str
    title: str
    ref: str | None = None
    status: str = "scheduled"
    queue: str | None = None
    #: Where the item's details are: relative to ``/dashboard/`` (``jobs/ID``) or absolute.
    link: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ProgressItem:
    """Something made of parts, part of the way through: a workflow run, a batch, a long job."""

    kind: str
    ref: str
    title: str
    status: str
    done: float
    total: float | None = None
    failed: int = 0
    unit: str = ""
    started_at: datetime | None = None
    link: str | None = None
    detail: str | None = None

    @property
    def percent(self) -> float | None:
        """Share done, 0-100, or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(100.0, 100.0 * self.done / self.total))


@dataclass
class DashboardContext:
    """What a source may use. ``database`` is opened only if a source asks for it."""

    settings: Settings
    connection: redis.Redis
    now: datetime
    scope: str = "read"
    database_factory: Callable[[], Database] | None = None

    @cached_property
    def database(self) -> Database:
        if self.database_factory is None:
            raise ConfigurationError("this dashboard has no database configured")
        return self.database_factory()


TimelineFunc = Callable[[DashboardContext, datetime, int], list[TimelineItem]]
ProgressFunc = Callable[[DashboardContext, int], list[ProgressItem]]
F = TypeVar("F", TimelineFunc, ProgressFunc)
T = TypeVar("T", TimelineItem, ProgressItem)


@dataclass(frozen=True)
class Source(Generic[F]):
    """A registered source: its name, the section title, its place on the page."""

    name: str
    title: str
    order: int
    func: F


@dataclass
class SectionResult(Generic[T]):
    """One section as rendered: the source's items, or the reason it has none."""

    name: str
    title: str
    items: list[T] = field(default_factory=list)
    error: str | None = None
    limit: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.limit) and len(self.items) >= self.limit


_timeline: dict[str, Source[TimelineFunc]] = {}
_progress: dict[str, Source[ProgressFunc]] = {}


def timeline_source(name: str, *, title: str, order: int = 100) -> Callable[[TimelineFunc], TimelineFunc]:
    """Register ``func(ctx, until, limit)``: items due before ``until`` (overdue ones too), soonest first."""

    def decorate(func: TimelineFunc) -> TimelineFunc:
        _timeline[name] = Source(name, title, order, func)
        return func

    return decorate


def progress_source(name: str, *, title: str, order: int = 100) -> Callable[[ProgressFunc], ProgressFunc]:
    """Register ``func(ctx, limit)``: items in progress, the most relevant first."""

    def decorate(func: ProgressFunc) -> ProgressFunc:
        _progress[name] = Source(name, title, order, func)
        return func

    return decorate


def load_sources(extra: Iterable[str] = ()) -> None:
    """Import :data:`SOURCE_MODULES` and ``extra`` so their sources register (idempotent)."""
    for module in (*SOURCE_MODULES, *extra):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"cannot import dashboard module {module!r}: {exc}", field="ATOMQ_DASHBOARD_MODULES"
            ) from exc


def timeline_sources() -> list[Source[TimelineFunc]]:
    return sorted(_timeline.values(), key=lambda s: (s.order, s.name))


def progress_sources() -> list[Source[ProgressFunc]]:
    return sorted(_progress.values(), key=lambda s: (s.order, s.name))


def collect_timeline(ctx: DashboardContext, until: datetime, limit: int) -> list[SectionResult[TimelineItem]]:
    """Every timeline section, each source guarded so one failure cannot blank the page."""
    results: list[SectionResult[TimelineItem]] = []
    for source in timeline_sources():
        result: SectionResult[TimelineItem] = SectionResult(source.name, source.title, limit=limit)
        try:
            result.items = sorted(source.func(ctx, until, limit)[:limit], key=lambda i: i.at)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:
            logger.exception("dashboard timeline source %s failed", source.name)
            result.error = f"{type(exc).__name__}: {exc}"
        results.append(result)
    return results


def collect_progress(ctx: DashboardContext, limit: int) -> list[SectionResult[ProgressItem]]:
    """Every progress section, each source guarded like the timeline's."""
    results: list[SectionResult[ProgressItem]] = []
    for source in progress_sources():
        result: SectionResult[ProgressItem] = SectionResult(source.name, source.title, limit=limit)
        try:
            result.items = source.func(ctx, limit)[:limit]
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:
            logger.exception("dashboard progress source %s failed", source.name)
            result.error = f"{type(exc).__name__}: {exc}"
        results.append(result)
    return results
