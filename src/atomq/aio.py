"""atomq for asyncio code (FastAPI ``async def`` endpoints, aiohttp, ...): the task queue's
methods as coroutines, over ``redis.asyncio``, so enqueueing never blocks the event loop.

::

    from atomq.aio import task_queue

    @app.post("/signup")
    async def signup(user_id: str) -> dict:
        job = await task_queue.enqueue("send_welcome_email", user_id=user_id)
        return {"job_id": job.id}

    result = await task_queue.wait(job.id, timeout=10)   # woken by Redis when the job ends
    await task_queue.get_job_status(job.id)
    await task_queue.cancel_job(job.id)

It reads the same settings as the sync API (``REDIS_URL``, ``ATOMQ_TASK_MODULES``...) and
connects on first use, inside the running event loop. ``enqueue``, ``enqueue_in``,
``enqueue_at`` and ``enqueue_many`` return :class:`QueuedJob` records; ``enqueue_batch`` a
:class:`~atomq.engine.batches.Batch`.
"""

from __future__ import annotations

from typing import Any

from atomq.engine.aio_queue import AsyncTaskQueue, task_queue
from atomq.engine.calls import QueuedJob

__all__ = ["AsyncTaskQueue", "QueuedJob", "cancel_job", "get_job_status", "task_queue", "wait"]


async def get_job_status(job_id: str) -> dict[str, Any]:
    """The guide's status dictionary for ``job_id``."""
    return await task_queue.get_job_status(job_id)


async def cancel_job(job_id: str) -> dict[str, Any]:
    """Cancel a waiting job, or stop a running one."""
    return await task_queue.cancel_job(job_id)


async def wait(job_id: str, timeout: float = 30.0) -> Any:
    """Wait for ``job_id`` to end and return its result (raises if it failed or timed out)."""
    return await task_queue.wait(job_id, timeout)
