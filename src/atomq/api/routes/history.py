"""Job history over time: ``GET /api/v1/tasks/stats`` (issue 15), the series the charts draw."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atomq.api.deps import Reader, State
from atomq.ops import charts

router = APIRouter(prefix="/api/v1/tasks", tags=["queues"])


class HistoryOut(BaseModel):
    """Columns of points: ``t`` holds each point's start, each series one value per point."""

    range: str
    step: int = Field(description="Seconds each point covers.")
    queues: list[str] = Field(description="The queues summed.")
    t: list[int] = Field(description="Start of each point, epoch seconds.")
    series: dict[str, list[float | None]] = Field(
        description="finished, failed, retried: jobs per minute; queued, running: the last depth sample "
        "(null: none taken); duration_avg, duration_p95, lateness_avg, lateness_p95: seconds (null: no job)."
    )


@router.get("/stats", response_model=HistoryOut, summary="Jobs per minute, queue depth, durations, lateness")
def job_history(
    state: State,
    _: Reader,
    range_name: Annotated[str, Query(alias="range", description="1h, 6h or 24h.")] = "1h",
    queue: Annotated[str | None, Query(description="One queue (default: every queue summed).")] = None,
) -> HistoryOut:
    found = charts.job_history(state.redis, state.settings.queues, range_name=range_name, queue=queue)
    return HistoryOut(**found.as_dict())
