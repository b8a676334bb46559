"""The dashboard's timeline and progress sections, gathered from the registered sources.

A feature shows its records on the dashboard by registering a function in one of its
``dashboard`` modules (see :mod:`atomq.engine.plugins`; an application lists its own in
``ATOMQ_DASHBOARD_MODULES``)::

    from atomq.engine.plugins import Context, TimelineItem, timeline_source

    @timeline_source("posts", title="Scheduled posts", order=20)
    def scheduled_posts(ctx: Context, until: datetime, limit: int) -> list[TimelineItem]:
        with ctx.database.session() as session:
            return [TimelineItem(at=p.publish_at, kind="post", title=p.text[:60], ref=p.id,
                                 status=p.state) for p in posts_due_before(session, until, limit)]

Sources get what they need through :class:`Context` (settings, Redis, the database on
demand) and return plain dataclasses; the pages render them generically. A source that raises
shows its error in its own section; the rest of the page still renders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

import redis

from atomq.engine import plugins
from atomq.engine.plugins import (
    Context,
    ProgressFunc,
    ProgressItem,
    Source,
    TimelineFunc,
    TimelineItem,
    registry,
)

logger = logging.getLogger("atomq.dashboard")

T = TypeVar("T", TimelineItem, ProgressItem)


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


def load_sources(extra: Iterable[str] = ()) -> None:
    """Import the features' ``dashboard`` modules and ``extra`` (``ATOMQ_DASHBOARD_MODULES``)."""
    plugins.load("dashboard", ("atomq.dashboard.builtin", *extra), setting="ATOMQ_DASHBOARD_MODULES")


def timeline_sources() -> list[Source[TimelineFunc]]:
    return sorted(registry.timeline.values(), key=lambda s: (s.order, s.name))


def progress_sources() -> list[Source[ProgressFunc]]:
    return sorted(registry.progress.values(), key=lambda s: (s.order, s.name))


def collect_timeline(ctx: Context, until: datetime, limit: int) -> list[SectionResult[TimelineItem]]:
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


def collect_progress(ctx: Context, limit: int) -> list[SectionResult[ProgressItem]]:
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
