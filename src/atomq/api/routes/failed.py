"""Failed jobs: a paginated list with error summaries, and requeueing them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from atomq.api.deps import Reader, State, Writer
from atomq.api.jsonio import JsonRoute
from atomq.core.errors import InvalidInputError
from atomq.core.options import validate_queue_name
from atomq.ops import admin, monitor

router = APIRouter(prefix="/api/v1/tasks", tags=["failed jobs"], route_class=JsonRoute)

#: Deepest page of the all-queues listing (merging reads offset + limit ids from every queue).
MAX_MERGED_OFFSET = 10_000


class FailedJobOut(BaseModel):
    job_id: str
    queue: str
    task: str | None
    status: str
    ended_at: str | None
    error: str | None = Field(
        description="Last line of the traceback; only the error's kind for the read scope "
        "(GET /jobs/{id} as admin: all of it)."
    )


class FailedPageOut(BaseModel):
    total: int = Field(description="Failed jobs in the queues asked for.")
    offset: int
    limit: int
    jobs: list[FailedJobOut]


class RequeueIn(BaseModel):
    """Which failed jobs to requeue: one queue, or all of them with ``all: true``."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = Field(None, max_length=64)
    all: bool = Field(False, description="Every failed job of every queue.")


class RequeueOut(BaseModel):
    requeued: int
    queues: list[str]


def _names(state: State, queue: str | None) -> list[str]:
    if queue is not None:
        return [validate_queue_name(queue)]
    return monitor.known_queues(state.redis, state.settings.queues)


@router.get("/failed", response_model=FailedPageOut, summary="Failed jobs, newest first")
def list_failed(
    state: State,
    principal: Reader,
    queue: Annotated[str | None, Query(max_length=64, description="Only this queue.")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> FailedPageOut:
    names = _names(state, queue)
    if len(names) > 1 and offset > MAX_MERGED_OFFSET:
        raise InvalidInputError(
            f"offset past {MAX_MERGED_OFFSET} needs a queue= filter (pages of all queues are merged)",
            field="offset",
        )
    rows = monitor.list_failed(state.redis, names, offset=offset, limit=limit, scope=principal.scope)
    return FailedPageOut(
        total=monitor.count_failed(state.redis, names),
        offset=offset,
        limit=limit,
        jobs=[FailedJobOut(**row) for row in rows],
    )


@router.post("/failed/requeue", response_model=RequeueOut, summary="Requeue failed jobs (a queue, or all)")
def requeue_failed(body: RequeueIn, state: State, _: Writer) -> RequeueOut:
    if body.queue is None and not body.all:
        raise InvalidInputError('give "queue" or "all": true', field="queue")
    if body.queue is not None and body.all:
        raise InvalidInputError('give "queue" or "all": true, not both', field="all")
    names = _names(state, body.queue)
    requeued = admin.requeue_failed(state.redis, queues=names)
    return RequeueOut(requeued=len(requeued), queues=names)
