"""Workflow runs: start, advance, retry, cancel, look up. The API and the CLI call these.

A run and its steps are rows; Redis only holds the job of each step that is ready. The job
of step ``S`` of run ``R`` at attempt ``n`` is always ``R-S-n`` and is queued with
``unique=True``, so queuing it again (two finishing steps advancing the run at once, or the
reconciler resuming a run whose jobs Redis lost) never makes a second job while the first
exists.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from atomq.core.errors import (
    AtomqError,
    ConflictError,
    DuplicateJobError,
    InvalidInputError,
    InvalidTextError,
    NotFoundError,
)
from atomq.core.options import DerivedJobId, check_json
from atomq.db.base import new_id, utcnow
from atomq.db.engine import Database
from atomq.engine.task_queue import TaskQueue
from atomq.engine.tasks import Retry
from atomq.features.longjobs.stopping import stop_job
from atomq.features.workflows.definitions import Workflow, WorkflowDefinitionError, registered_workflows
from atomq.features.workflows.models import WorkflowDefinitionRecord, WorkflowRun, WorkflowStep
from atomq.features.workflows.tasks import MAX_PAGE, STEP_TASK
from atomq.features.workflows.views import RunNotFoundError, get_run, list_runs, owned, run_view

logger = logging.getLogger("atomq.features.workflows")


class WorkflowNotFoundError(NotFoundError):
    """No workflow (in code or loaded from a file) has that name."""

    code = "workflow_not_found"


class RunStateError(ConflictError):
    """The run's state does not allow the operation (retry a running run, cancel a finished one)."""

    code = "invalid_run_state"


def step_job_id(run_id: str, step: str, attempt: int) -> str:
    """The deterministic job id of one attempt of one step."""
    return f"{run_id}-{step}-{attempt}"


# -- definitions ---------------------------------------------------------------------------


def store_definition(database: Database, workflow: Workflow, source: str | None = None) -> None:
    """Save a workflow loaded from a file, replacing an earlier version of the same name."""
    if workflow.name in registered_workflows():
        raise ConflictError(
            f"workflow {workflow.name!r} is defined in code; a file cannot replace it", field="name"
        )
    with database.session() as session:
        record = session.get(WorkflowDefinitionRecord, workflow.name)
        if record is None:
            record = WorkflowDefinitionRecord(name=workflow.name)
            session.add(record)
        record.definition = workflow.to_dict()
        record.source = source
        record.loaded_at = utcnow()


def find_definition(database: Database, name: str) -> Workflow:
    """The workflow called ``name``: defined in code, else loaded from a file."""
    found = registered_workflows().get(name)
    if found is not None:
        return found
    with database.session() as session:
        record = session.get(WorkflowDefinitionRecord, name)
        if record is not None:
            return Workflow.from_dict(record.definition, source=f"stored workflow {name!r}")
    known = ", ".join(sorted(list_definitions(database))) or "none"
    raise WorkflowNotFoundError(f"no workflow is called {name!r} (known: {known})", field="workflow")


def list_definitions(database: Database) -> dict[str, Workflow]:
    """Every known workflow by name (code first, then stored)."""
    out = {}
    with database.session() as session:
        for record in session.scalars(select(WorkflowDefinitionRecord)):
            out[record.name] = Workflow.from_dict(
                record.definition, source=f"stored workflow {record.name!r}"
            )
    out.update(registered_workflows())
    return dict(sorted(out.items()))


# -- runs ------------------------------------------------------------------------------------


def start_run(
    database: Database, tq: TaskQueue, name: str, input: Any = None, *, user_id: str | None = None
) -> dict[str, Any]:
    """Start a run of workflow ``name`` with ``input``; the first steps are queued at once.
    ``user_id`` is the user the run belongs to (a token bound to a user started it)."""
    workflow = find_definition(database, name).validate(tq.registry)
    try:
        check_json(input, "input")
    except InvalidTextError:
        raise
    except AtomqError as exc:
        raise InvalidInputError(exc.message, field=exc.field or "input") from None
    now = utcnow()
    run = WorkflowRun(
        id=new_id("wfr"),
        workflow=workflow.name,
        user_id=user_id,
        status="running",
        input=input,
        definition=workflow.to_dict(),
        created_at=now,
        started_at=now,
        updated_at=now,
    )
    run.steps = [
        WorkflowStep(
            name=step.name,
            position=position,
            task=step.task,
            status="pending",
            depends_on=list(step.depends_on),
            attempt=1,
            tries=0,
        )
        for position, step in enumerate(workflow.steps)
    ]
    with database.session() as session:
        session.add(run)
    logger.info("workflow %s: run %s started", workflow.name, run.id)
    advance(database, tq, run.id)
    return get_run(database, run.id)


def advance(
    database: Database, tq: TaskQueue, run_id: str, *, succeeded: tuple[str, int, Any] | None = None
) -> list[str]:
    """Queue every pending step whose dependencies all succeeded; finish the run when all did.

    ``succeeded`` (step name, attempt, result) records a step's success in the same
    transaction first (one commit per finished step instead of two). Safe to call any number
    of times from anywhere: returns the names of the steps queued.
    """
    ready: list[tuple[str, int]] = []
    with database.session() as session:
        run = _lock_run(session, run_id)
        if run is None:
            return []
        steps = {step.name: step for step in run.steps}
        now = utcnow()
        if succeeded is not None:
            name, attempt, result = succeeded
            step = steps.get(name)
            if step is None or step.attempt != attempt or step.status not in ("queued", "running"):
                return []  # canceled or retried meanwhile: this result is not wanted
            step.status = "succeeded"
            step.result = result
            step.error = None
            step.finished_at = now
        if run.status != "running":
            return []
        if all(step.status == "succeeded" for step in steps.values()):
            run.status = "succeeded"
            run.finished_at = now
            logger.info("workflow %s: run %s succeeded", run.workflow, run.id)
            return []
        for step in steps.values():
            if step.status == "pending" and all(steps[d].status == "succeeded" for d in step.depends_on):
                step.status = "queued"
                step.job_id = step_job_id(run.id, step.name, step.attempt)
                step.queued_at = now
                ready.append((step.name, step.attempt))
        definition = Workflow.from_dict(run.definition, source=f"run {run.id}")
    # Queued after the commit: a crash in between leaves a 'queued' step without a job,
    # which the reconciler sees and queues (same id) again.
    for name, attempt in ready:
        enqueue_step(tq, run_id, definition, name, attempt)
    return [name for name, _ in ready]


def enqueue_step(tq: TaskQueue, run_id: str, definition: Workflow, name: str, attempt: int) -> bool:
    """Queue the job of one step attempt; False when it already exists (nothing is queued twice)."""
    step = definition.get(name)
    spec = tq.registry.get(step.task)
    retry: Retry | None = step.retry or spec.retry
    options: dict[str, Any] = {
        "job_id": DerivedJobId(step_job_id(run_id, name, attempt)),
        "unique": True,
        "queue": step.queue or definition.queue,
        "timeout": step.timeout or spec.timeout or tq.settings.default_timeout,
        "description": f"workflow {definition.name} run {run_id} step {name} ({step.task})",
    }
    if retry is not None:
        options["retry"] = retry
    try:
        tq.enqueue(STEP_TASK, kwargs={"run_id": run_id, "step": name, "attempt": attempt}, **options)
    except DuplicateJobError:
        return False
    return True


def _lock_run(session: Session, run_id: str) -> WorkflowRun | None:
    # FOR UPDATE serialises concurrent advances of one run on PostgreSQL; SQLite serialises
    # writers anyway.
    return session.scalars(select(WorkflowRun).where(WorkflowRun.id == run_id).with_for_update()).first()


def fail_step(database: Database, run_id: str, name: str, attempt: int, error: str) -> bool:
    """Record that a step failed for good: the run fails, its dependents stay pending."""
    with database.session() as session:
        run = _lock_run(session, run_id)
        step = session.get(WorkflowStep, (run_id, name))
        if run is None or step is None or step.attempt != attempt:
            return False
        if step.status in ("succeeded", "failed", "canceled"):
            return False
        now = utcnow()
        step.status = "failed"
        step.error = error
        step.finished_at = now
        if run.status == "running":
            run.status = "failed"
            run.error = f"step {name} failed: {error}"
            run.finished_at = now
        logger.warning("workflow %s: run %s failed at step %s: %s", run.workflow, run_id, name, error)
        return True


def note_retry(database: Database, run_id: str, name: str, attempt: int, error: str) -> None:
    """Show why a step is waiting for an automatic retry (it stays ``running``)."""
    with database.session() as session:
        step = session.get(WorkflowStep, (run_id, name))
        if step is not None and step.attempt == attempt and step.status == "running":
            step.error = error


def succeed_step(database: Database, run_id: str, name: str, attempt: int, result: Any) -> bool:
    """Record a step's result; False when the step moved on meanwhile (canceled, retried)."""
    with database.session() as session:
        step = session.get(WorkflowStep, (run_id, name))
        if step is None or step.attempt != attempt or step.status not in ("queued", "running"):
            return False
        step.status = "succeeded"
        step.result = result
        step.error = None
        step.finished_at = utcnow()
        return True


def retry_run(database: Database, tq: TaskQueue, run_id: str, *, owner: str | None = None) -> dict[str, Any]:
    """Run the failed steps of a failed run again (new attempt) and carry on from there.
    With ``owner``, only that user's runs."""
    with database.session() as session:
        run = _lock_run(session, run_id)
        if run is None or not owned(run, owner):
            raise RunNotFoundError(f"no workflow run with id {run_id!r}", field="run_id")
        if run.status != "failed":
            raise RunStateError(f"run {run_id} is {run.status}; only failed runs can be retried")
        for step in run.steps:
            if step.status == "failed":
                step.status = "pending"
                step.attempt += 1
                step.job_id = None
                step.result = None
                step.queued_at = step.started_at = step.finished_at = None
        run.status = "running"
        run.error = None
        run.finished_at = None
    logger.info("run %s: retrying its failed steps", run_id)
    advance(database, tq, run_id)
    return get_run(database, run_id)


def cancel_run(
    database: Database, tq: TaskQueue, run_id: str, *, grace: float | None = None, owner: str | None = None
) -> dict[str, Any]:
    """Cancel a run: pending and queued steps are canceled, running ones asked to stop.
    With ``owner``, only that user's runs."""

    to_cancel: list[str] = []
    to_stop: list[str] = []
    with database.session() as session:
        run = _lock_run(session, run_id)
        if run is None or not owned(run, owner):
            raise RunNotFoundError(f"no workflow run with id {run_id!r}", field="run_id")
        if run.status in ("succeeded", "canceled"):
            raise RunStateError(f"run {run_id} is already {run.status}; nothing to cancel")
        now = utcnow()
        for step in run.steps:
            if step.status in ("pending", "queued", "running"):
                if step.status == "queued" and step.job_id:
                    to_cancel.append(step.job_id)
                elif step.status == "running" and step.job_id:
                    to_stop.append(step.job_id)
                step.status = "canceled"
                step.finished_at = now
        run.status = "canceled"
        run.finished_at = now
    for job_id in to_cancel + to_stop:
        try:
            if job_id in to_stop:
                stop_job(tq, job_id, grace=grace)
            else:
                tq.cancel_job(job_id)
        except (ConflictError, NotFoundError):
            pass  # it ended (or Redis lost it) meanwhile: nothing left to stop
    logger.info("run %s canceled (%d job(s) canceled, %d stopped)", run_id, len(to_cancel), len(to_stop))
    return get_run(database, run_id)


__all__ = [
    "MAX_PAGE",
    "RunNotFoundError",
    "RunStateError",
    "WorkflowDefinitionError",
    "WorkflowNotFoundError",
    "advance",
    "cancel_run",
    "find_definition",
    "get_run",
    "list_definitions",
    "list_runs",
    "retry_run",
    "run_view",
    "start_run",
    "store_definition",
]
