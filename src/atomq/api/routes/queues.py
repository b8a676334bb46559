"""Queue statistics: the guide's ``GET /api/v1/tasks/queues``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atomq.api.deps import Admin, Reader, State
from atomq.core.errors import NotFoundError
from atomq.core.options import validate_queue_name
from atomq.ops import admin, monitor
from atomq.ops.overview import queue_overview

router = APIRouter(prefix="/api/v1/tasks", tags=["queues"])


class QueueOut(BaseModel):
    """The guide's five counts, then what atomq adds."""

    name: str
    queued: int
    started: int
    finished: int
    failed: int
    scheduled: int
    deferred: int
    canceled: int
    oldest_queued_age: float | None = Field(description="Seconds the oldest queued job has waited.")


class QueuesOut(BaseModel):
    queues: list[QueueOut]


@router.get("/queues", response_model=QueuesOut, summary="Job counts per queue")
def list_queues(state: State, _: Reader) -> QueuesOut:
    stats = queue_overview(state.redis, state.settings.queues).queues
    return QueuesOut(queues=[QueueOut(**s.as_dict()) for s in stats])


class EmptiedOut(BaseModel):
    queue: str
    deleted: int = Field(description="Queued jobs deleted (their data too).")


@router.delete(
    "/queues/{name}/jobs",
    response_model=EmptiedOut,
    summary="Empty a queue: delete every queued job (admin)",
    responses={404: {"description": "No such queue"}},
)
def empty_queue(name: str, state: State, _: Admin) -> EmptiedOut:
    validate_queue_name(name)
    if name not in monitor.known_queues(state.redis, state.settings.queues):
        raise NotFoundError(f"no queue named {name!r}", field="name")
    return EmptiedOut(queue=name, deleted=admin.empty_queue(state.redis, name))
