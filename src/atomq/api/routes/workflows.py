"""Workflows: start runs, follow them, retry failed ones, cancel them.

``POST /api/v1/tasks/workflows/{name}/runs``, ``GET /api/v1/tasks/workflows/runs[/{id}]``,
``POST .../runs/{id}/retry``, ``DELETE .../runs/{id}/cancel``, ``GET /api/v1/tasks/workflows``.

A token bound to a user starts runs that belong to that user and reaches only those; what
each scope sees of a run (input, results, errors) follows :mod:`atomq.core.visibility`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atomq.api.deps import Queue, State, UserReader, UserWriter
from atomq.api.jsonio import JsonRoute
from atomq.core import visibility
from atomq.features.workflows import service

router = APIRouter(prefix="/api/v1/tasks/workflows", tags=["workflows"], route_class=JsonRoute)

RunStatus = Literal["running", "succeeded", "failed", "canceled"]


class StepOut(BaseModel):
    name: str
    task: str
    status: str = Field(description="pending, queued, running, succeeded, failed or canceled")
    depends_on: list[str]
    attempt: int = Field(description="Raised by each retry of the run; part of the step's job id.")
    tries: int = Field(description="Executions started, automatic retries included.")
    job_id: str | None
    result: Any = None
    error: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None


class RunOut(BaseModel):
    """A run. Its input and step results are null, and errors only their kind, for the read
    scope."""

    id: str
    workflow: str
    status: str = Field(description="running, succeeded, failed or canceled")
    input: Any = None
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    steps: list[StepOut]


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last.")


class RunIn(BaseModel):
    input: Any = Field(default=None, description="Given to every step whose task takes `input`.")


class StepDefinitionOut(BaseModel):
    name: str
    task: str
    depends_on: list[str]
    kwargs: dict[str, Any] | None = Field(description="The step's own arguments (admin scope only).")


class WorkflowOut(BaseModel):
    name: str
    description: str
    queue: str
    steps: list[StepDefinitionOut]


class WorkflowsOut(BaseModel):
    items: list[WorkflowOut]


@router.get("", response_model=WorkflowsOut, summary="Known workflows")
def list_workflows(state: State, principal: UserReader) -> WorkflowsOut:
    arguments = visibility.allows(principal.scope, visibility.INTERNALS)
    definitions = service.list_definitions(state.database)
    return WorkflowsOut(
        items=[
            WorkflowOut(
                name=w.name,
                description=w.description,
                queue=w.queue,
                steps=[
                    StepDefinitionOut(
                        name=s.name,
                        task=s.task,
                        depends_on=list(s.depends_on),
                        kwargs=dict(s.kwargs) if arguments else None,
                    )
                    for s in w.steps
                ],
            )
            for w in definitions.values()
        ]
    )


@router.get("/runs", response_model=RunPage, summary="Workflow runs, newest first")
def list_runs(
    state: State,
    principal: UserReader,
    workflow: str | None = Query(default=None, max_length=64),
    status: RunStatus | None = None,
    limit: int = Query(default=50, ge=1, le=service.MAX_PAGE),
    cursor: str | None = Query(default=None, max_length=500),
) -> RunPage:
    page = service.list_runs(
        state.database,
        workflow=workflow,
        status=status,
        limit=limit,
        cursor=cursor,
        scope=principal.scope,
        owner=principal.user,
    )
    return RunPage(**page)


@router.get("/runs/{run_id}", response_model=RunOut, summary="A run with each step's state")
def get_run(run_id: str, state: State, principal: UserReader) -> RunOut:
    return RunOut(**service.get_run(state.database, run_id, scope=principal.scope, owner=principal.user))


@router.post("/runs/{run_id}/retry", response_model=RunOut, summary="Re-run the failed steps and continue")
def retry_run(run_id: str, state: State, tq: Queue, principal: UserWriter) -> RunOut:
    return RunOut(**service.retry_run(state.database, tq, run_id, owner=principal.user))


@router.delete("/runs/{run_id}/cancel", response_model=RunOut, summary="Cancel a run")
def cancel_run(run_id: str, state: State, tq: Queue, principal: UserWriter) -> RunOut:
    return RunOut(**service.cancel_run(state.database, tq, run_id, owner=principal.user))


@router.post("/{name}/runs", status_code=201, response_model=RunOut, summary="Start a run of a workflow")
def start_run(name: str, state: State, tq: Queue, principal: UserWriter, body: RunIn | None = None) -> RunOut:
    run = service.start_run(state.database, tq, name, (body or RunIn()).input, user_id=principal.user)
    return RunOut(**run)
