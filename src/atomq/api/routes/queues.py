"""Queue statistics: the guide's ``GET /api/v1/tasks/queues``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atomq import monitor
from atomq.api.deps import Reader, State

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
    names = monitor.known_queues(state.redis, state.settings.queues)
    stats = monitor.queue_stats(state.redis, names)
    return QueuesOut(queues=[QueueOut(**s.as_dict()) for s in stats])
