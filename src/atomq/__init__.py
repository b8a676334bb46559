"""atomq: background tasks for Python web backends, on Redis and RQ's data layout.

::

    from atomq import task, task_queue, get_job_status, cancel_job

    @task("send_welcome_email", queue="default", retry=3)
    def send_welcome_email(user_id: str) -> None: ...

    job = task_queue.enqueue("send_welcome_email", user_id="user_456")
    get_job_status(job.id)["status"]
    task_queue.wait(job.id, timeout=10)   # its result, once a worker has run it

Asyncio code uses ``atomq.aio`` (the same methods as coroutines).
"""

from __future__ import annotations

from atomq.core.errors import (
    AtomqError,
    Defer,
    DuplicateJobError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobStopped,
    PermanentError,
    RetryableError,
    WaitTimeoutError,
)
from atomq.engine.task_queue import Call, TaskQueue, cancel_job, get_job_status, task_queue
from atomq.engine.tasks import Retry, task
from atomq.features.longjobs.progress import job_stopping, raise_if_stopping, report_progress

__all__ = [
    "AtomqError",
    "Call",
    "Defer",
    "DuplicateJobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobStateError",
    "JobStopped",
    "PermanentError",
    "Retry",
    "RetryableError",
    "TaskQueue",
    "WaitTimeoutError",
    "cancel_job",
    "get_job_status",
    "job_stopping",
    "raise_if_stopping",
    "report_progress",
    "task",
    "task_queue",
]
