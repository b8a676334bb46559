"""A FastAPI app whose ``async def`` endpoints enqueue jobs and await their results with
``atomq.aio``, so the event loop keeps serving other requests meanwhile.

Run it (Redis at ``REDIS_URL``, or ``source var/atomq.env`` after ``./scripts/up``)::

    ATOMQ_TASK_MODULES=examples.tasks atomq worker &
    uvicorn examples.fastapi_app:app --port 8001

    curl -X POST localhost:8001/signup -H 'content-type: application/json' -d '{"user_id": "u1"}'
    curl 'localhost:8001/jobs/<job_id>?wait=5'
    curl -X POST localhost:8001/thumbnails -H 'content-type: application/json' \
         -d '{"image_url": "https://example.org/cat.png"}'
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

from atomq import JobFailedError, JobNotFoundError, JobStateError, WaitTimeoutError
from atomq.aio import task_queue
from examples import tasks  # noqa: F401 - registers the tasks this app enqueues


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await task_queue.aclose()  # the Redis client belongs to this event loop


app = FastAPI(title="atomq FastAPI example", lifespan=lifespan)


class Signup(BaseModel):
    user_id: str


class Thumbnail(BaseModel):
    image_url: str
    width: int = 128


@app.post("/signup", status_code=202)
async def signup(body: Signup) -> dict[str, str]:
    """Enqueue and answer at once: the email goes out in the background."""
    job = await task_queue.enqueue("send_welcome_email", user_id=body.user_id)
    return {"job_id": job.id, "status": job.status}


@app.post("/thumbnails")
async def thumbnail(body: Thumbnail, response: Response) -> dict[str, Any]:
    """Enqueue and await the result (up to 10 s) without blocking the server."""
    job = await task_queue.enqueue("make_thumbnail", image_url=body.image_url, width=body.width)
    try:
        return {"job_id": job.id, "result": await task_queue.wait(job.id, timeout=10)}
    except WaitTimeoutError:
        response.status_code = 202  # still running: the client polls /jobs/{id}
        return {"job_id": job.id, "result": None}
    except JobFailedError as exc:
        raise HTTPException(422, detail={"job_id": job.id, "error": exc.error}) from None


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, wait: float = 0) -> dict[str, Any]:
    """The job's status; with ``wait``, once it has ended (or ``wait`` seconds passed)."""
    try:
        if wait > 0:
            # Ended or not, failed or not: the status below says how it stands.
            with contextlib.suppress(WaitTimeoutError, JobFailedError):
                await task_queue.wait(job_id, timeout=min(wait, 30))
        return await task_queue.get_job_status(job_id)
    except JobNotFoundError as exc:
        raise HTTPException(404, detail=str(exc)) from None


@app.delete("/jobs/{job_id}")
async def cancel(job_id: str) -> dict[str, Any]:
    try:
        return await task_queue.cancel_job(job_id)
    except JobNotFoundError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except JobStateError as exc:
        raise HTTPException(409, detail=str(exc)) from None


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
