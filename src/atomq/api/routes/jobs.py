"""Jobs: enqueue a registered task, read its status, cancel or stop it, requeue it.

What a token sees follows :mod:`atomq.core.visibility`: ``read`` gets the guide's status
dictionary without the result and with the error's kind only, ``write`` the whole
dictionary, ``admin`` also the arguments, meta and traceback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from atomq.api.deps import Queue, Reader, State, Writer
from atomq.api.errors import ApiError
from atomq.api.jsonio import JsonRoute
from atomq.api.schemas import GuideStatusOut
from atomq.engine.jobs import TERMINAL_STATUSES
from atomq.engine.waiting import ENDED
from atomq.ops import admin, monitor
from atomq.ops.submission import submit

router = APIRouter(prefix="/api/v1/tasks", tags=["jobs"], route_class=JsonRoute)

#: Longest a TTL or delay given through the API may be (ten years, in seconds).
MAX_SECONDS = 10 * 365 * 86_400

#: Longest ``DELETE /jobs/{id}?wait=`` may hold the request while a running job stops.
MAX_STOP_WAIT = 30.0

#: Longest ``GET /jobs/{id}?wait=`` may hold the request until the job ends.
MAX_WAIT = 30.0


class EnqueueIn(BaseModel):
    """A call of a registered task. Give ``delay`` or ``at`` to run it later."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=128, description="Registered task name.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON values).")
    args: list[Any] = Field(default_factory=list, description="Positional arguments (rarely needed).")
    queue: str | None = Field(None, max_length=64, description="Queue to use instead of the task's own.")
    job_id: str | None = Field(
        None,
        max_length=128,
        description="Your own id: letters, digits, _ and -. An id that exists is a 409 unless `replace`; "
        "the forms atomq gives its own jobs (posts, workflow steps, batch items) are refused.",
    )
    delay: float | None = Field(None, ge=0, le=MAX_SECONDS, description="Run after this many seconds.")
    at: datetime | None = Field(
        None,
        description="Run at this time: ISO-8601 with an offset, or without one plus `timezone`. "
        "At most ten years ahead; a time up to a day in the past runs at once, an older one is refused.",
    )
    timezone: str | None = Field(None, max_length=64, description="IANA zone for an `at` without offset.")
    timeout: int | None = Field(None, gt=0, le=7 * 86_400, description="Job timeout, seconds.")
    retry: int | None = Field(None, ge=0, le=100, description="Retries with exponential backoff.")
    at_front: bool = Field(False, description="Put the job at the front of its queue.")
    unique: bool = Field(False, description="Refuse (409) if a job with `job_id` exists (the default).")
    replace: bool = Field(
        False, description="Overwrite the job with `job_id` if it exists (admin scope only: 403 otherwise)."
    )
    depends_on: list[str] | None = Field(None, max_length=100, description="Run after these jobs finish.")
    description: str | None = Field(None, max_length=1000)
    group: str | None = Field(
        None,
        max_length=128,
        description="Jobs of one group run one at a time, in order (e.g. `account:42` for one "
        "account's calls to a platform); other groups run beside them.",
    )
    meta: dict[str, Any] | None = None
    result_ttl: int | None = Field(None, ge=-1, le=MAX_SECONDS, description="Seconds to keep the result.")
    failure_ttl: int | None = Field(None, ge=-1, le=MAX_SECONDS, description="Seconds to keep a failure.")
    ttl: int | None = Field(None, ge=-1, le=MAX_SECONDS, description="Seconds the job may wait to start.")


class JobOut(GuideStatusOut):
    """The guide's status dictionary, then where the job runs; admin-only fields last.
    ``result`` is null and ``error`` only the error's kind for the ``read`` scope."""

    queue: str | None = None
    task: str | None = None
    description: str | None = None
    worker: str | None = None
    retries_left: int | None = None
    args: list[Any] | None = Field(None, description="admin scope only")
    kwargs: dict[str, Any] | None = Field(None, description="admin scope only")
    meta: dict[str, Any] | None = Field(None, description="admin scope only")
    traceback: str | None = Field(None, description="admin scope only")


_ENQUEUE_FIELDS = ("args", "kwargs", "delay", "at", "timezone")


def _details(state: State, job_id: str, scope: str) -> JobOut:
    job = state.task_queue.fetch_job(job_id)
    return JobOut(**monitor.job_details(state.redis, job, scope=scope))


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    response_model_exclude_unset=True,
    summary="Enqueue a registered task (now, after a delay, or at a time)",
)
def enqueue(body: EnqueueIn, state: State, tq: Queue, principal: Writer, response: Response) -> JobOut:
    if body.replace and not principal.allows("admin"):
        raise ApiError(
            403, "forbidden", "replace (overwriting an existing job) needs the 'admin' scope", field="replace"
        )
    options = body.model_dump(exclude_none=True, exclude={"task", *_ENQUEUE_FIELDS})
    for flag in ("at_front", "unique", "replace"):
        if not options.get(flag):
            options.pop(flag, None)
    job = submit(
        tq,
        body.task,
        args=body.args,
        kwargs=body.kwargs,
        delay=body.delay,
        at=body.at,
        timezone=body.timezone,
        **options,
    )
    response.headers["Location"] = f"/api/v1/tasks/jobs/{job.id}"
    return _details(state, job.id, principal.scope)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    response_model_exclude_unset=True,
    summary="A job's status (the guide's dictionary); with `wait`, once it has ended",
)
async def get_job(
    job_id: str,
    state: State,
    principal: Reader,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT,
            description="Seconds to wait for the job to end (finished, failed, stopped or canceled) "
            "before answering; the answer is the same either way, with the status at that moment.",
        ),
    ] = 0.0,
) -> JobOut:
    details = await run_in_threadpool(_details, state, job_id, principal.scope)
    if not wait or details.status in ENDED:
        return details
    # Only for a job this token may see. Woken by Redis when the job ends; the server's
    # event loop serves others meanwhile.
    await state.aio_task_queue.wait_for_end(job_id, wait)
    return await run_in_threadpool(_details, state, job_id, principal.scope)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    response_model_exclude_unset=True,
    summary="Cancel a waiting job or stop a running one",
    responses={
        202: {"description": "A running job was told to stop and has not ended yet"},
        409: {"description": "The job has already ended"},
    },
)
def cancel_job(
    job_id: str,
    state: State,
    tq: Queue,
    principal: Writer,
    response: Response,
    wait: Annotated[
        float, Query(ge=0, le=MAX_STOP_WAIT, description="Seconds to wait for a running job to stop.")
    ] = 2.0,
) -> JobOut:
    status = tq.cancel_job(job_id, wait=wait)
    if status["status"] not in {s.value for s in TERMINAL_STATUSES}:
        response.status_code = 202
    return _details(state, job_id, principal.scope)


@router.post(
    "/jobs/{job_id}/requeue",
    response_model=JobOut,
    response_model_exclude_unset=True,
    summary="Put a failed or stopped job back on its queue",
    responses={409: {"description": "The job is not failed or stopped"}},
)
def requeue_job(job_id: str, state: State, tq: Queue, principal: Writer) -> JobOut:
    tq.fetch_job(job_id)  # a clean 404 for unknown or malformed ids
    admin.requeue_failed(state.redis, job_ids=[job_id])
    return _details(state, job_id, principal.scope)
