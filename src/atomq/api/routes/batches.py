"""Batches: ``POST /api/v1/tasks/batches``, ``GET .../batches/{id}``, ``DELETE .../batches/{id}/cancel``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from atomq.api.deps import Queue, Reader, State, Writer
from atomq.api.jsonio import JsonRoute
from atomq.engine.batches import MAX_BATCH_ITEMS
from atomq.features.batches.progress import batch_progress
from atomq.features.batches.tracking import cancel_batch

router = APIRouter(prefix="/api/v1/tasks/batches", tags=["batches"], route_class=JsonRoute)


class BatchIn(BaseModel):
    """One task, one item (keyword arguments) per job."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="Registered task name.")
    items: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_BATCH_ITEMS, description="Keyword arguments of each call."
    )
    queue: str | None = Field(default=None, description="Queue instead of the task's own.")
    batch_id: str | None = Field(default=None, description="Batch id (default: generated).")
    chunk_size: int | None = Field(default=None, ge=1, le=100_000, description="Jobs per Redis round trip.")
    timeout: int | None = Field(default=None, gt=0, description="Seconds each job may run.")
    retry: int | None = Field(
        default=None, ge=0, le=100, description="Retries per job (exponential backoff)."
    )
    description: str | None = Field(default=None, max_length=1000)


class BatchOut(BaseModel):
    """Where a batch stands."""

    id: str
    task: str
    queue: str
    state: str = Field(description="running, finished or canceled")
    total: int
    queued: int
    running: int
    finished: int
    failed: int
    stopped: int
    canceled: int
    ended: int
    percent: float
    rate: float | None = Field(description="Items ended per second since the first one started.")
    eta_seconds: float | None
    estimated_finish_at: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    description: str | None


@router.post("", status_code=201, response_model=BatchOut, summary="Queue a batch of calls of one task")
def create_batch(body: BatchIn, state: State, tq: Queue, _: Writer) -> BatchOut:
    options: dict[str, Any] = {}
    for name in ("queue", "timeout", "retry"):
        value = getattr(body, name)
        if value is not None:
            options[name] = value
    batch = tq.enqueue_batch(
        body.task,
        body.items,
        batch_id=body.batch_id,
        chunk_size=body.chunk_size,
        description=body.description,
        **options,
    )
    return BatchOut(**batch_progress(state.redis, batch.id).as_dict())


@router.get("/{batch_id}", response_model=BatchOut, summary="Progress of a batch")
def get_batch(batch_id: str, state: State, _: Reader) -> BatchOut:
    return BatchOut(**batch_progress(state.redis, batch_id).as_dict())


@router.delete("/{batch_id}/cancel", response_model=BatchOut, summary="Cancel a batch's unstarted items")
def cancel(batch_id: str, state: State, _: Writer) -> BatchOut:
    progress = cancel_batch(state.redis, batch_id, result_ttl=state.settings.result_ttl)
    return BatchOut(**progress.as_dict())
