"""The sections every atomq dashboard has, read from Redis: scheduled jobs and running jobs."""

from __future__ import annotations

from datetime import UTC, datetime

from atomq.core.visibility import INTERNALS, allows
from atomq.engine.jobs import load_jobs
from atomq.engine.plugins import (
    Context,
    ProgressItem,
    TimelineItem,
    progress_source,
    timeline_source,
)
from atomq.ops import monitor


@timeline_source("jobs", title="Scheduled jobs", order=10)
def scheduled_jobs(ctx: Context, until: datetime, limit: int) -> list[TimelineItem]:
    """Jobs waiting in the scheduled registries (``enqueue_in``/``enqueue_at``, retries with a delay)."""
    names = monitor.known_queues(ctx.connection, ctx.settings.queues)
    items = []
    for entry in monitor.list_scheduled(ctx.connection, names, limit=limit):
        at = datetime.fromisoformat(entry["due_at"])
        if at > until:
            break  # list_scheduled is soonest first
        items.append(
            TimelineItem(
                at=at,
                kind="job",
                title=entry["task"] or "?",
                ref=entry["job_id"],
                queue=entry["queue"],
                status="overdue" if at < ctx.now else "scheduled",
                link=f"jobs/{entry['job_id']}",
                # RQ's default description spells out the arguments: admin only, as in the API.
                detail=entry["description"] if allows(ctx.scope, INTERNALS) else None,
            )
        )
    return items


@progress_source("running", title="Running jobs", order=90)
def running_jobs(ctx: Context, limit: int) -> list[ProgressItem]:
    """Jobs workers are running now, with the share of their timeout used so far.

    A job close to its timeout is about to be killed: that is what an on-call engineer looks for.
    """
    running: list[tuple[str, str]] = []
    for worker in monitor.list_workers(ctx.connection):
        running.extend((job_id, worker.name) for job_id in worker.current_jobs)
    running = running[:limit]
    jobs = load_jobs([job_id for job_id, _ in running], ctx.connection)
    items = []
    for (job_id, worker_name), job in zip(running, jobs, strict=True):
        if job is None:
            continue
        started = job.started_at.replace(tzinfo=UTC) if job.started_at else None
        elapsed = (ctx.now - started).total_seconds() if started else 0.0
        timeout = job.timeout if job.timeout and job.timeout > 0 else None
        try:
            title = job.func_name or "?"
        except Exception:  # an undecodable payload must not break the page
            title = "<unreadable>"
        items.append(
            ProgressItem(
                kind="job",
                ref=job_id,
                title=title,
                status="running",
                done=round(max(0.0, elapsed), 1),
                total=float(timeout) if timeout else None,
                unit="s",
                started_at=started,
                link=f"jobs/{job_id}",
                detail=f"on {worker_name}, queue {job.origin}",
            )
        )
    items.sort(key=lambda i: -(i.percent or 0.0))
    return items
