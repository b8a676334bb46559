"""Long-running jobs: progress and liveness of a job, and a clean stop.

``GET /api/v1/tasks/jobs/{job_id}/progress`` returns the guide's status dictionary unchanged
under ``job``, with ``progress`` and ``liveness`` beside it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atomq.api.deps import Queue, Reader, Writer
from atomq.api.jsonio import JsonRoute
from atomq.api.schemas import GuideStatusOut
from atomq.core import visibility
from atomq.features.longjobs.progress import job_view
from atomq.features.longjobs.stopping import MAX_GRACE_SECONDS, stop_job

router = APIRouter(prefix="/api/v1/tasks/jobs", tags=["jobs"], route_class=JsonRoute)


class ProgressOut(BaseModel):
    fraction: float = Field(description="0 to 1, as last reported by the job.")
    percent: float
    message: str | None = Field(description="As the job last reported it; null for the read scope.")
    updated_at: str | None


class LivenessOut(BaseModel):
    state: str = Field(description="waiting, alive, stalled (no heartbeat for 5 s while started) or ended")
    heartbeat_at: str | None
    heartbeat_age: float | None = Field(description="Seconds since the job's process last beat.")
    stop_requested_at: str | None
    stop_deadline: str | None = Field(description="When the job is killed if it has not stopped by itself.")
    worker: str | None


class JobViewOut(BaseModel):
    job: GuideStatusOut
    progress: ProgressOut | None
    liveness: LivenessOut


class StopIn(BaseModel):
    grace: float | None = Field(
        default=None,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="Seconds the job gets to stop by itself before it is killed "
        "(default ATOMQ_STOP_GRACE_SECONDS).",
    )
    wait: float = Field(default=0, ge=0, le=30, description="Seconds to wait for the job to end.")


def _seen(view: dict[str, Any], scope: str) -> JobViewOut:
    """The view as ``scope`` may see it: the job's result, error and progress message are the
    work's content (:mod:`atomq.core.visibility`)."""
    view = {**view, "job": visibility.job_status(scope, view["job"])}
    if view.get("progress") and not visibility.allows(scope, visibility.CONTENT):
        view["progress"] = {**view["progress"], "message": None}
    return JobViewOut(**view)


@router.get("/{job_id}/progress", response_model=JobViewOut, summary="A job's status, progress and liveness")
def progress(job_id: str, tq: Queue, principal: Reader) -> JobViewOut:
    return _seen(job_view(tq.connection, tq.fetch_job(job_id)), principal.scope)


@router.post("/{job_id}/stop", response_model=JobViewOut, summary="Stop a running job cleanly")
def stop(job_id: str, tq: Queue, principal: Writer, body: StopIn | None = None) -> JobViewOut:
    body = body or StopIn()
    return _seen(stop_job(tq, job_id, grace=body.grace, wait=body.wait), principal.scope)
