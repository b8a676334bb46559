"""Workers and the scheduler: who is running, doing what, and what is scheduled next."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atomq.api.deps import Reader, State
from atomq.api.jsonio import JsonRoute
from atomq.core import visibility
from atomq.core.options import validate_queue_name
from atomq.ops import monitor

router = APIRouter(prefix="/api/v1/tasks", tags=["workers"], route_class=JsonRoute)


class WorkerOut(BaseModel):
    name: str
    state: str
    queues: list[str]
    pid: int | None
    hostname: str | None
    birth: str | None
    last_heartbeat: str | None
    successful_jobs: int
    failed_jobs: int
    current_jobs: list[str]


class WorkersOut(BaseModel):
    workers: list[WorkerOut]


class SchedulerOut(BaseModel):
    leader: str | None = Field(description="Scheduler holding the lease; none means nothing moves due jobs.")
    schedulers: dict[str, str] = Field(description="Running schedulers: name -> 'host pid started_at'.")


class ScheduledJobOut(BaseModel):
    job_id: str
    queue: str
    task: str | None
    due_at: str
    due_in: float = Field(description="Seconds until due (negative: overdue).")
    description: str | None


class ScheduledOut(BaseModel):
    scheduler: SchedulerOut
    jobs: list[ScheduledJobOut]


@router.get("/workers", response_model=WorkersOut, summary="Live workers")
def list_workers(state: State, _: Reader) -> WorkersOut:
    return WorkersOut(workers=[WorkerOut(**w.as_dict()) for w in monitor.list_workers(state.redis)])


@router.get("/scheduled", response_model=ScheduledOut, summary="Scheduled jobs, soonest first")
def list_scheduled(
    state: State,
    principal: Reader,
    queue: Annotated[str | None, Query(max_length=64, description="Only this queue.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ScheduledOut:
    names = (
        [validate_queue_name(queue)]
        if queue is not None
        else monitor.known_queues(state.redis, state.settings.queues)
    )
    private = visibility.allows(principal.scope, visibility.INTERNALS)  # generated descriptions
    jobs = monitor.list_scheduled(state.redis, names, limit=limit, private=private)
    return ScheduledOut(
        scheduler=SchedulerOut(**monitor.scheduler_status(state.redis)),
        jobs=[ScheduledJobOut(**j) for j in jobs],
    )
