"""Deleting jobs for good (the dashboard's and the API's admin-only "delete")."""

from __future__ import annotations

import redis
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from atomq.core.errors import JobNotFoundError, JobStateError
from atomq.engine.jobs import load_job


def delete_job(connection: redis.Redis, job_id: str) -> str:
    """Delete a job that is not running: its hash, its results, its place in queues and registries.

    Returns the status the job had. A running job is refused (stop it with ``cancel_job`` first):
    deleting it under its worker would leave the worker writing into a job that no longer exists.
    """
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        raise JobNotFoundError(f"no job with id {job_id!r}", field="job_id") from None
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        raise JobStateError(f"job {job_id} is running; cancel it first, then delete it")
    with connection.pipeline() as pipe:
        job.delete(pipeline=pipe)
        pipe.execute()
    return str(status.value)
