"""Reading workflow runs: one run with its steps, and pages of runs (keyset pagination)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from atomq.core.errors import InvalidInputError, NotFoundError
from atomq.db.engine import Database
from atomq.engine.jobs import iso
from atomq.features.workflows.models import WorkflowRun
from atomq.features.workflows.tasks import MAX_PAGE, RUN_STATES

#: Largest page of runs a list returns.


class RunNotFoundError(NotFoundError):
    """No run has that id."""

    code = "run_not_found"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def run_view(run: WorkflowRun) -> dict[str, Any]:
    """A run as the API and the CLI show it."""
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "input": run.input,
        "error": run.error,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": _seconds(run.started_at, run.finished_at),
        "steps": [
            {
                "name": step.name,
                "task": step.task,
                "status": step.status,
                "depends_on": list(step.depends_on or []),
                "attempt": step.attempt,
                "tries": step.tries,
                "job_id": step.job_id,
                "result": step.result,
                "error": step.error,
                "queued_at": iso(step.queued_at),
                "started_at": iso(step.started_at),
                "finished_at": iso(step.finished_at),
                "duration_seconds": _seconds(step.started_at, step.finished_at),
            }
            for step in run.steps
        ],
    }


def get_run(database: Database, run_id: str) -> dict[str, Any]:
    """One run with every step's state, timings, result or error."""
    with database.session() as session:
        run = session.get(WorkflowRun, run_id)
        if run is None:
            raise RunNotFoundError(f"no workflow run with id {run_id!r}", field="run_id")
        return run_view(run)


def list_runs(
    database: Database,
    *,
    workflow: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Runs, newest first: ``{"items": [...], "next_cursor": ...}`` (pass it back for more)."""
    if status is not None and status not in RUN_STATES:
        raise InvalidInputError(
            f"status must be one of {', '.join(RUN_STATES)}, got {status!r}", field="status"
        )
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE}, got {limit}", field="limit")
    query = select(WorkflowRun)
    if workflow:
        query = query.where(WorkflowRun.workflow == workflow)
    if status:
        query = query.where(WorkflowRun.status == status)
    if cursor:
        created, run_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                WorkflowRun.created_at < created,
                and_(WorkflowRun.created_at == created, WorkflowRun.id < run_id),
            )
        )
    query = query.order_by(WorkflowRun.created_at.desc(), WorkflowRun.id.desc()).limit(limit + 1)
    with database.session() as session:
        runs = list(session.scalars(query))
        items = [run_view(run) for run in runs[:limit]]
        more = len(runs) > limit
        last = runs[limit - 1] if more else None
        next_cursor = _encode_cursor(last.created_at, last.id) if last is not None else None
    return {"items": items, "next_cursor": next_cursor}


def _encode_cursor(created: datetime, run_id: str) -> str:
    raw = json.dumps([created.isoformat(), run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        return datetime.fromisoformat(created), str(run_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError("cursor is not one this API returned", field="cursor") from exc
