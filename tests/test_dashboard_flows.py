"""Workflow runs and batches as progress bars on the dashboard."""

from __future__ import annotations

from atomq.core.timeutil import utcnow
from atomq.engine.plugins import Context
from atomq.engine.tasks import load_task_modules
from atomq.features.batches.observe import batches
from atomq.features.workflows.observe import workflow_runs
from atomq.features.workflows.service import start_run


def test_workflow_runs_and_batches_show_progress(tq, settings, connection, database):
    load_task_modules(["tests.jobs"])
    run = start_run(database, tq, "diamond", {"n": 4})
    batch = tq.enqueue_batch("add", [{"a": i, "b": 1} for i in range(25)])
    ctx = Context(settings, connection, now=utcnow(), database_factory=lambda: database)

    (shown,) = workflow_runs(ctx, 10)
    assert (shown.kind, shown.ref, shown.title, shown.status) == ("workflow", run["id"], "diamond", "running")
    assert (shown.done, shown.total, shown.unit) == (0, 4, "steps")

    (listed,) = batches(ctx, 10)
    assert (listed.kind, listed.ref, listed.total, listed.done, listed.unit) == (
        "batch",
        batch.id,
        25,
        0,
        "items",
    )
    assert listed.percent == 0.0
