"""What workflows plug into workers: the database made ready before a step's process forks."""

from __future__ import annotations

from typing import Any

from rq.job import Job

from atomq.engine.hooks import JobHooks
from atomq.engine.plugins import job_hooks
from atomq.features.workflows.tasks import STEP_TASK


class WorkflowHooks(JobHooks):
    """Open the workflow database once per worker, before the first step forks (RQ's worker
    forks a process per job; each would otherwise build the engine again)."""

    def started(self, job: Job, pipeline: Any) -> None:
        if job.func_name == STEP_TASK:
            # Deferred: SQLAlchemy and the models load only in workers that run steps.
            from atomq.features.workflows.steps import warm_database

            warm_database()


job_hooks(WorkflowHooks())
