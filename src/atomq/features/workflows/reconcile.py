"""The workflow reconciler: resumes runs after worker crashes and Redis data loss.

Run every few seconds by the leading scheduler. For each running run it compares what the
database says each queued or running step is doing with its job in Redis:

* the job is gone (Redis lost it, or the process died between committing and queuing):
  queue it again under the same id (``unique``: never a second copy of a live job);
* the job failed or was stopped for good (a worker died and recovery failed it, a timeout
  the step could not record): the step fails, and with it the run;
* the job finished but the step was not recorded (the process died right after): the
  step's result is taken from the job;

then it advances the run, which queues any step whose dependencies all succeeded.
"""

from __future__ import annotations

import logging

import redis
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError

from atomq.core import keys
from atomq.db.engine import Database
from atomq.engine.jobs import error_summary, latest_result, load_job
from atomq.engine.plugins import Context, periodic
from atomq.engine.task_queue import TaskQueue
from atomq.features.workflows.definitions import Workflow
from atomq.features.workflows.models import WorkflowRun, WorkflowStep
from atomq.features.workflows.service import advance, enqueue_step, fail_step, succeed_step

logger = logging.getLogger("atomq.features.workflows")

#: Runs looked at per pass (the oldest running first).
RUNS_PER_PASS = 500


def reconcile(database: Database, tq: TaskQueue) -> dict[str, int]:
    """One pass over running runs; returns counts of what it did."""
    done = {"requeued": 0, "failed": 0, "recovered": 0, "advanced": 0}
    with database.session() as session:
        runs = list(
            session.scalars(
                select(WorkflowRun)
                .where(WorkflowRun.status == "running")
                .order_by(WorkflowRun.created_at)
                .limit(RUNS_PER_PASS)
            )
        )
        work = [
            (run.id, run.definition, [(s.name, s.attempt, s.job_id) for s in run.steps if _active(s)])
            for run in runs
        ]
    connection = tq.connection
    for run_id, definition, steps in work:
        job_ids = [found for _, _, found in steps if found]
        with connection.pipeline(transaction=False) as pipe:
            for found in job_ids:
                pipe.hget(keys.job_key(found), "status")
            statuses = dict(zip(job_ids, pipe.execute(), strict=True))
        workflow = Workflow.from_dict(definition, source=f"run {run_id}")
        for name, attempt, step_job in steps:
            job_id: str | None = step_job
            raw = statuses.get(job_id) if job_id else None
            status: str | None = raw.decode() if isinstance(raw, bytes) else raw
            if status is None:
                if enqueue_step(tq, run_id, workflow, name, attempt):
                    logger.warning("run %s: step %s had no job in Redis; queued it again", run_id, name)
                    done["requeued"] += 1
            elif status in ("failed", "stopped", "canceled"):
                error = _job_error(connection, job_id) or f"its job ended {status}"
                if fail_step(database, run_id, name, attempt, error):
                    done["failed"] += 1
            elif status == "finished":
                result = _job_result(connection, job_id)
                if succeed_step(database, run_id, name, attempt, result):
                    done["recovered"] += 1
        if advance(database, tq, run_id):
            done["advanced"] += 1
    return done


def _active(step: WorkflowStep) -> bool:
    return step.status in ("queued", "running")


def _job_error(connection: redis.Redis, job_id: str | None) -> str | None:
    if not job_id:
        return None
    try:
        latest = latest_result(load_job(job_id, connection))
    except Exception:  # a vanished or unreadable job only loses the detail
        return None
    return error_summary(latest.exc_string) if latest is not None else None


def _job_result(connection: redis.Redis, job_id: str | None) -> object:
    if not job_id:
        return None
    try:
        latest = latest_result(load_job(job_id, connection))
    except Exception:
        return None
    return latest.return_value if latest is not None else None


_missing_tables_logged = False


@periodic("workflows.reconcile", interval=2)
def _reconcile_periodic(ctx: Context) -> None:
    global _missing_tables_logged  # noqa: PLW0603 - log the hint once per process
    try:
        counts = reconcile(ctx.database, TaskQueue(settings=ctx.settings, connection=ctx.connection))
    except (OperationalError, ProgrammingError) as exc:
        # No workflow tables: this deployment has not migrated (or uses no workflows).
        if "workflow_runs" not in str(exc):
            raise
        if not _missing_tables_logged:
            logger.info("workflow tables missing (run `atomq db upgrade`); workflow reconciling is off")
            _missing_tables_logged = True
        return
    if any(counts.values()):
        logger.info("workflow reconciler: %s", counts)
