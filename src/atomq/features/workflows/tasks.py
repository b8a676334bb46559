"""The job every workflow step runs, registered without importing the workflow machinery.

Every atomq process imports this module; the step's code (SQLAlchemy, the run records) is
imported on a process's first step, or before forking where a process forks per job.
"""

from __future__ import annotations

from typing import Any

from atomq.engine.tasks import task

#: The task every step job runs (it calls the step's own task; see atomq.features.workflows.steps).
STEP_TASK = "atomq.workflow_step"

#: Run states: ``running`` until every step succeeded (``succeeded``), a step failed for good
#: (``failed``; ``retry`` makes it ``running`` again) or it was canceled. Kept here, free of
#: SQLAlchemy, so the CLI can offer them as choices without loading the models.
RUN_STATES = ("running", "succeeded", "failed", "canceled")

#: Step states: ``pending`` waits for its dependencies, ``queued`` has a job, ``running`` is
#: executing (or waiting for a retry), then ``succeeded``, ``failed`` or ``canceled``.
STEP_STATES = ("pending", "queued", "running", "succeeded", "failed", "canceled")

#: Most runs one list call returns.
MAX_PAGE = 200


@task(STEP_TASK, queue="workflows", preload=("atomq.features.workflows.steps",))
def workflow_step(run_id: str, step: str, attempt: int) -> Any:
    """Run one step of a workflow run (see :mod:`atomq.features.workflows.steps`)."""
    # Deferred: a cycle (atomq.features.workflows.tasks is imported while the module below is initialising).
    from atomq.features.workflows.steps import run_step

    return run_step(run_id, step, attempt)
