"""Everything one dashboard page shows, gathered in a few Redis round trips.

These functions return plain data; the HTTP layer renders it. What each scope sees follows
:mod:`atomq.core.visibility`, as in the HTTP API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from atomq.core import visibility
from atomq.core.options import validate_queue_name
from atomq.dashboard.sections import SectionResult, collect_progress, collect_timeline
from atomq.engine.plugins import Context, ProgressItem, TimelineItem
from atomq.engine.task_queue import TaskQueue
from atomq.ops import monitor

#: How far ahead the timeline looks.
TIMELINE_WINDOW = timedelta(hours=24)

#: Most items one timeline or progress section shows.
SECTION_LIMIT = 100

#: Failed jobs shown on the overview (the failed page pages through all of them).
OVERVIEW_FAILED = 20

#: A queued job waiting longer than this is flagged.
SLOW_QUEUE_SECONDS = 300.0


@dataclass
class QueueRow:
    """A queue's counts plus the workers serving it."""

    stats: monitor.QueueStats
    workers: int

    @property
    def problem(self) -> str | None:
        """Why this queue needs attention, in a few words, or ``None``."""
        if self.stats.queued and not self.workers:
            return "no worker listens on this queue"
        age = self.stats.oldest_queued_age
        if age is not None and age > SLOW_QUEUE_SECONDS:
            return "jobs wait longer than 5 minutes"
        return None


@dataclass
class Timeline:
    """Timeline sections with the window they cover."""

    start: datetime
    end: datetime
    sections: list[SectionResult[TimelineItem]]

    def position(self, at: datetime) -> float:
        """Where ``at`` sits on the axis, 0-100 (overdue items sit at 0)."""
        span = (self.end - self.start).total_seconds()
        offset = (at - self.start).total_seconds()
        return max(0.0, min(100.0, 100.0 * offset / span)) if span > 0 else 0.0


@dataclass
class Overview:
    """The dashboard's main page."""

    now: datetime
    queues: list[QueueRow]
    workers: list[monitor.WorkerInfo]
    scheduler: dict[str, Any]
    failed: list[dict[str, Any]]
    failed_total: int
    timeline: Timeline
    progress: list[SectionResult[ProgressItem]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("queued", "started", "scheduled", "failed", "finished")
        return {key: sum(getattr(row.stats, key) for row in self.queues) for key in keys}


def gather(ctx: Context, *, window: timedelta = TIMELINE_WINDOW) -> Overview:
    """Queues, workers, scheduler, recent failures, timeline and progress for the main page."""
    names = monitor.known_queues(ctx.connection, ctx.settings.queues)
    stats = monitor.queue_stats(ctx.connection, names)
    workers = monitor.list_workers(ctx.connection)
    rows = [QueueRow(s, sum(1 for w in workers if s.name in w.queues)) for s in stats]
    failed = monitor.list_failed(ctx.connection, names, limit=OVERVIEW_FAILED, scope=ctx.scope)
    end = ctx.now + window
    return Overview(
        now=ctx.now,
        queues=rows,
        workers=workers,
        scheduler=monitor.scheduler_status(ctx.connection),
        failed=failed,
        failed_total=sum(s.failed for s in stats),
        timeline=Timeline(ctx.now, end, collect_timeline(ctx, end, SECTION_LIMIT)),
        progress=collect_progress(ctx, SECTION_LIMIT),
    )


@dataclass
class FailedPage:
    """One page of failed jobs, optionally of one queue."""

    queue: str | None
    queues: list[str]
    page: int
    per_page: int
    total: int
    jobs: list[dict[str, Any]]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def failed_page(ctx: Context, *, queue: str | None, page: int, per_page: int = 50) -> FailedPage:
    """Failed jobs, newest first, ``per_page`` at a time."""
    names = monitor.known_queues(ctx.connection, ctx.settings.queues)
    chosen = [validate_queue_name(queue)] if queue else names
    stats = monitor.queue_stats(ctx.connection, chosen)
    page = max(1, page)
    jobs = monitor.list_failed(
        ctx.connection, chosen, offset=(page - 1) * per_page, limit=per_page, scope=ctx.scope
    )
    return FailedPage(queue, names, page, per_page, sum(s.failed for s in stats), jobs)


def job_detail(tq: TaskQueue, job_id: str, *, scope: str) -> dict[str, Any]:
    """A job's status dictionary and where it ran, as ``scope`` may see them
    (:mod:`atomq.core.visibility`): result and error message from ``write`` up, arguments and
    traceback for ``admin`` only."""
    status = visibility.job_status(scope, tq.get_job_status(job_id))  # JobNotFoundError if none
    detail = monitor.failure_detail(tq.connection, job_id)
    internals = visibility.allows(scope, visibility.INTERNALS)
    shown: dict[str, Any] = {**status, **{k: detail[k] for k in ("queue", "task", "worker")}}
    shown["error_summary"] = visibility.error_text(scope, detail["error"])
    shown["can_see_internals"] = internals
    shown["can_see_content"] = visibility.allows(scope, visibility.CONTENT)
    if internals:
        shown["args"] = detail["args"]
        shown["kwargs"] = detail["kwargs"]
        shown["traceback"] = detail["traceback"]
    return shown
