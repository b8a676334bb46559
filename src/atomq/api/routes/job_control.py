"""Long-running jobs: progress and liveness of a job, and a clean stop.

``GET /api/v1/tasks/jobs/{job_id}/progress`` returns the guide's status dictionary unchanged
under ``job``, with ``progress`` and ``liveness`` beside it.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atomq.api.deps import Queue, Reader, Writer
from atomq.api.schemas import GuideStatusOut
from atomq.features.longjobs.progress import job_view
from atomq.features.longjobs.stopping import MAX_GRACE_SECONDS, stop_job

router = APIRouter(prefix="/api/v1/tasks/jobs", tags=["jobs"])


class ProgressOut(BaseModel):
    fraction: float = Field(description="0 to 1, as last reported by the job.")
    percent: float
    message: str | None
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


@router.get("/{job_id}/progress", response_model=JobViewOut, summary="A job's status, progress and liveness")
def progress(job_id: str, tq: Queue, _: Reader) -> JobViewOut:
    return JobViewOut(**job_view(tq.connection, tq.fetch_job(job_id)))


@router.post("/{job_id}/stop", response_model=JobViewOut, summary="Stop a running job cleanly")
def stop(job_id: str, tq: Queue, _: Writer, body: StopIn | None = None) -> JobViewOut:
    body = body or StopIn()
    return JobViewOut(**stop_job(tq, job_id, grace=body.grace, wait=body.wait))
