"""Workflow runs and batches on the dashboard, as progress bars."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from atomq.dashboard.sections import DashboardContext, ProgressItem, progress_source
from atomq.engine.scripts import decode
from atomq.features.batches.progress import ACTIVE_BATCHES, BatchNotFoundError, batch_progress
from atomq.features.workflows.models import WorkflowRun

#: Run states that still show on the dashboard (finished runs drop off).
LIVE_RUN_STATES = ("running", "failed")


@progress_source("workflows", title="Workflow runs", order=30)
def workflow_runs(ctx: DashboardContext, limit: int) -> list[ProgressItem]:
    """Runs still going (and failed ones awaiting a retry), newest first, steps done of steps."""
    with ctx.database.session() as session:
        runs = session.scalars(
            select(WorkflowRun)
            .where(WorkflowRun.status.in_(LIVE_RUN_STATES))
            .order_by(WorkflowRun.created_at.desc(), WorkflowRun.id.desc())
            .limit(limit)
        ).all()
        items = []
        for run in runs:
            steps = list(run.steps)
            done = sum(1 for step in steps if step.status == "succeeded")
            failed = [step.name for step in steps if step.status == "failed"]
            items.append(
                ProgressItem(
                    kind="workflow",
                    ref=run.id,
                    title=run.workflow,
                    status=run.status,
                    done=done,
                    total=len(steps),
                    failed=len(failed),
                    unit="steps",
                    started_at=run.started_at or run.created_at,
                    detail=f"failed: {', '.join(failed)}" if failed else None,
                )
            )
    return items


@progress_source("batches", title="Batches", order=40)
def batches(ctx: DashboardContext, limit: int) -> list[ProgressItem]:
    """Batches not yet finished, with items ended of items, rate and estimated finish."""
    items = []
    for raw in ctx.connection.zrevrange(ACTIVE_BATCHES, 0, limit - 1):
        try:
            progress = batch_progress(ctx.connection, decode(raw))
        except BatchNotFoundError:
            continue
        rate = f"{progress.rate:.1f}/s" if progress.rate else None
        eta = f"done ~{progress.estimated_finish_at}" if progress.estimated_finish_at else None
        items.append(
            ProgressItem(
                kind="batch",
                ref=progress.id,
                title=progress.description or progress.task,
                status=progress.state,
                done=progress.ended,
                total=progress.total,
                failed=progress.failed,
                unit="items",
                started_at=datetime.fromisoformat(progress.started_at) if progress.started_at else None,
                detail=", ".join(part for part in (rate, eta) if part) or None,
            )
        )
    return items
