"""Queue statistics: the guide's ``GET /api/v1/tasks/queues``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atomq.api.deps import Admin, Reader, State
from atomq.api.jsonio import JsonRoute
from atomq.core.errors import NotFoundError
from atomq.core.options import validate_queue_name
from atomq.engine import pause
from atomq.ops import admin, monitor
from atomq.ops.overview import queue_overview

router = APIRouter(prefix="/api/v1/tasks", tags=["queues"], route_class=JsonRoute)


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
    paused_since: float | None = Field(
        default=None, description="Epoch seconds since which workers skip the queue (null: not paused)."
    )


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


class PausedOut(BaseModel):
    queue: str
    paused: bool
    paused_since: float | None = Field(description="Epoch seconds since which the queue is paused.")
    changed: bool = Field(description="False when the queue already was in that state.")


@router.post(
    "/queues/{name}/pause",
    response_model=PausedOut,
    summary="Pause a queue: workers stop taking its jobs within a second (admin)",
)
def pause_queue(name: str, state: State, _: Admin) -> PausedOut:
    was = name in pause.paused_queues(state.redis)
    since = admin.pause_queue(state.redis, name)
    return PausedOut(queue=name, paused=True, paused_since=since, changed=not was)


@router.post("/queues/{name}/resume", response_model=PausedOut, summary="Resume a paused queue (admin)")
def resume_queue(name: str, state: State, _: Admin) -> PausedOut:
    changed = admin.resume_queue(state.redis, name)
    return PausedOut(queue=name, paused=False, paused_since=None, changed=changed)
