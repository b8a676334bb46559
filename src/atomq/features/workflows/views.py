"""Reading workflow runs: one run with its steps, and pages of runs (keyset pagination)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from atomq.core import visibility
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


def run_view(run: WorkflowRun, scope: str = visibility.INTERNALS) -> dict[str, Any]:
    """A run as the API and the CLI show it; its input, results and errors as ``scope`` may
    see them (:mod:`atomq.core.visibility`)."""
    content = visibility.allows(scope, visibility.CONTENT)
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "input": run.input if content else None,
        "error": _run_error(run.error, content),
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
                "result": step.result if content else None,
                "error": visibility.error_text(scope, step.error),
                "queued_at": iso(step.queued_at),
                "started_at": iso(step.started_at),
                "finished_at": iso(step.finished_at),
                "duration_seconds": _seconds(step.started_at, step.finished_at),
            }
            for step in run.steps
        ],
    }


def _run_error(error: str | None, content: bool) -> str | None:
    """A run's error (``step b failed: ValueError: ...``), without what the step said when
    that is not to be shown (``step b failed``: the step's own ``error`` shows its kind)."""
    if error is None or content:
        return error
    head, sep, _ = error.partition(" failed: ")
    return f"{head} failed" if sep else error


def owned(run: WorkflowRun | None, owner: str | None) -> bool:
    """Whether ``run`` exists and ``owner`` (a token's user, or ``None`` for any) may see it."""
    return run is not None and (owner is None or run.user_id == owner)


def get_run(
    database: Database, run_id: str, *, scope: str = visibility.INTERNALS, owner: str | None = None
) -> dict[str, Any]:
    """One run with every step's state, timings, result or error (as ``scope`` sees them).
    With ``owner``, another user's run is as absent as a missing one."""
    with database.session() as session:
        run = session.get(WorkflowRun, run_id)
        if run is None or not owned(run, owner):
            raise RunNotFoundError(f"no workflow run with id {run_id!r}", field="run_id")
        return run_view(run, scope)


def list_runs(
    database: Database,
    *,
    workflow: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    scope: str = visibility.INTERNALS,
    owner: str | None = None,
) -> dict[str, Any]:
    """Runs, newest first: ``{"items": [...], "next_cursor": ...}`` (pass it back for more);
    with ``owner``, only that user's runs."""
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
    if owner is not None:
        query = query.where(WorkflowRun.user_id == owner)
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
        items = [run_view(run, scope) for run in runs[:limit]]
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
