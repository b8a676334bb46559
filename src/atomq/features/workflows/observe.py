"""Workflow runs on the dashboard, as progress bars (steps done of steps)."""

from __future__ import annotations

from sqlalchemy import select

from atomq.engine.plugins import Context, ProgressItem, progress_source
from atomq.features.workflows.models import WorkflowRun

#: Run states that still show on the dashboard (finished runs drop off).
LIVE_RUN_STATES = ("running", "failed")


@progress_source("workflows", title="Workflow runs", order=30)
def workflow_runs(ctx: Context, limit: int) -> list[ProgressItem]:
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
