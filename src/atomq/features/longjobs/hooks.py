"""What long-running jobs plug into workers: the heartbeat around each run, and stop commands."""

from __future__ import annotations

import redis
from rq.job import Job

from atomq.engine.hooks import JobHooks
from atomq.engine.plugins import job_hooks
from atomq.features.longjobs.progress import job_finished, job_started
from atomq.features.longjobs.stopping import StopHooks


class ProgressHooks(JobHooks):
    """Beat for the job while it runs (see :mod:`atomq.features.longjobs.progress`)."""

    def running(self, job: Job, connection: redis.Redis) -> None:
        job_started(job.id, connection)

    def returned(self, job: Job) -> None:
        job_finished(job.id)


job_hooks(ProgressHooks())
job_hooks(StopHooks())
