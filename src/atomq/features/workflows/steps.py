"""The job every workflow step runs: call the step's task with its inputs, record the outcome.

``atomq.workflow_step(run_id, step, attempt)`` looks the step up in the database, calls the
step's own registered task with the step's kwargs (plus ``input`` and ``results`` when the
task takes them), records the result or the final failure, and queues the steps that became
ready. It is safe to run twice: a step that already succeeded, was canceled or was retried
under a newer attempt is not run again.
"""

from __future__ import annotations

import logging
from typing import Any

from rq.job import get_current_job
from sqlalchemy.orm import configure_mappers

from atomq.core.errors import AtomqError, JobStopped, PermanentError, UnknownTaskError
from atomq.core.options import check_json
from atomq.core.settings import load_settings
from atomq.db.base import utcnow
from atomq.db.engine import process_database
from atomq.engine.task_queue import TaskQueue
from atomq.engine.tasks import registry
from atomq.features.workflows.models import WorkflowRun, WorkflowStep
from atomq.features.workflows.service import advance, fail_step, note_retry

logger = logging.getLogger("atomq.features.workflows")

# Mapper configuration otherwise happens at the first query of every forked work-horse,
# costing tens of milliseconds per step; done once here, in the worker, before it forks.
configure_mappers()

_warmed = False


def warm_database() -> None:
    """In the worker, before it forks the process of a step: build the engine once and
    connect once, so every step's process starts with an initialised engine."""
    global _warmed  # noqa: PLW0603 - once per worker process
    if _warmed:
        return
    _warmed = True
    try:
        database = process_database(load_settings())
        database.ping()
        database.engine.dispose()  # the worker itself keeps no connection open
    except AtomqError as exc:
        logger.warning("could not prepare the workflow database: %s", exc)


def _call_kwargs(run: WorkflowRun, step: WorkflowStep) -> tuple[str, dict[str, Any]]:
    definition = next(s for s in run.definition["steps"] if s["name"] == step.name)
    spec = registry.get(definition["task"])
    kwargs = dict(definition.get("kwargs") or {})
    params = spec.signature.parameters
    if "input" in params:
        kwargs["input"] = run.input
    if "results" in params:
        by_name = {s.name: s for s in run.steps}
        kwargs["results"] = {name: by_name[name].result for name in step.depends_on}
    return definition["task"], kwargs


def run_step(run_id: str, step: str, attempt: int) -> Any:
    """Run one step of a workflow run (the body of the ``atomq.workflow_step`` job)."""
    job = get_current_job()
    settings = load_settings()
    database = process_database(settings)
    with database.session() as session:
        run = session.get(WorkflowRun, run_id)
        record = session.get(WorkflowStep, (run_id, step))
        if run is None or record is None:
            raise PermanentError(f"workflow run {run_id} or its step {step!r} no longer exists")
        if record.attempt != attempt or record.status in ("succeeded", "failed", "canceled"):
            logger.info(
                "run %s step %s attempt %d is %s; not running it", run_id, step, attempt, record.status
            )
            return record.result if record.status == "succeeded" else None
        if run.status != "running":
            logger.info("run %s is %s; step %s waits", run_id, run.status, step)
            return None
        task_name, kwargs = _call_kwargs(run, record)
        record.status = "running"
        record.tries += 1
        tries = record.tries
        record.started_at = record.started_at or utcnow()
        if job is not None:
            record.job_id = job.id
    spec = registry.get(task_name)
    try:
        result = spec.func(**kwargs)
        try:
            check_json(result, "result")
        except AtomqError as exc:
            raise PermanentError(f"step {step} returned a value JSON cannot store: {exc.message}") from None
    except BaseException as exc:
        retries_left = (job.retries_left or 0) if job is not None else 0
        final = isinstance(exc, PermanentError | UnknownTaskError | JobStopped) or retries_left <= 0
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if final:
            fail_step(database, run_id, step, attempt, message)
        else:
            note_retry(database, run_id, step, attempt, f"try {tries} failed, will retry: {message}")
        raise
    tq = TaskQueue(settings=settings, connection=job.connection if job is not None else None)
    advance(database, tq, run_id, succeeded=(step, attempt, result))
    return result
