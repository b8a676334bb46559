"""The Redis side of a post: its job, with an id derived from the post and its revision.

``post_<hex>-r<revision>`` is the job that publishes a revision; ``...-a<n>`` the job that
resumes it after attempt ``n`` died mid-publish. Because the ids are deterministic and
created with ``unique=True``, the API, a retry and the reconciler can all "make sure the job
exists" without ever making two; and a reschedule (new revision) gets a new id, so the old
job, if it still runs, finds a revision mismatch and does nothing.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from atomq.core import keys
from atomq.core.errors import DuplicateJobError
from atomq.core.options import DerivedJobId
from atomq.core.settings import Settings
from atomq.engine.jobs import load_job
from atomq.engine.task_queue import TaskQueue
from atomq.features.posts.models import ScheduledPost
from atomq.features.posts.tasks import DEFAULT_JOB_TIMEOUT

#: The task that publishes a post, and its queue (the guide's names).
TASK = "process_scheduled_post"

#: What a post job's timeout keeps beyond its attempt's lease.
JOB_TIMEOUT_MARGIN = 30
QUEUE = "social_media"

#: Job statuses in which the job will still run (or is running).
LIVE_STATUSES = frozenset({"scheduled", "queued", "started", "deferred", "created"})


def job_id_for(post_id: str, revision: int, *, resume_after: int | None = None) -> str:
    """The deterministic job id of ``post_id`` at ``revision`` (or of its resume job)."""
    base = f"{post_id}-r{revision}"
    return base if resume_after is None else f"{base}-a{resume_after}"


def within_horizon(post: ScheduledPost, settings: Settings, now: datetime) -> bool:
    """Whether the post is due soon enough to have its job in Redis."""
    return post.scheduled_for <= now + timedelta(seconds=settings.posts_horizon)


def job_timeout(settings: Settings, post: ScheduledPost) -> int | None:
    """A job timeout covering the post's longest attempt, or None when the task's default
    (DEFAULT_JOB_TIMEOUT) already does.

    Media uploads lengthen an attempt; a job killed at its timeout while its attempt still
    holds the lease would leave the post waiting for that lease to run out.
    """
    # Deferred: loads httpx only when this runs.
    from atomq.features.posts.attempts import attempt_seconds

    needed = math.ceil(attempt_seconds(settings, len(post.media_urls or []))) + JOB_TIMEOUT_MARGIN
    return needed if needed > DEFAULT_JOB_TIMEOUT else None


def account_group(account_id: str) -> str:
    """The job group of an account's publishes (see :mod:`atomq.engine.groups`)."""
    return f"account:{account_id}"


def ensure_job(tq: TaskQueue, post: ScheduledPost, job_id: str) -> bool:
    """Create ``job_id`` for ``post`` at its due time unless it exists; True when created."""
    options: dict[str, Any] = {}
    timeout = job_timeout(tq.settings, post)
    if timeout is not None:
        options["timeout"] = timeout
    try:
        tq.enqueue_at(
            post.scheduled_for,
            TASK,
            kwargs={"post_id": post.id, "user_id": post.user_id, "revision": post.revision},
            job_id=DerivedJobId(job_id),
            unique=True,
            queue=QUEUE,
            # One publish at a time per account, fairly beside every other account: an account
            # with thousands of posts due at once neither delays others nor fills the workers.
            group=account_group(post.account_id),
            description=f"publish {post.id} (revision {post.revision})",
            **options,
        )
    except DuplicateJobError:
        return False
    return True


#: The ``status`` field of each job hash in KEYS (false, i.e. nil, for a missing job).
#: One command however many jobs: the reconciler asks about every post within the horizon on
#: each pass, and one pipelined HGET per post costs more client time than Redis time.
STATUSES_SCRIPT = """
local statuses = {}
for i, key in ipairs(KEYS) do
    statuses[i] = redis.call('HGET', key, 'status')
end
return statuses
"""


def job_statuses(connection: redis.Redis, job_ids: list[str]) -> list[str | None]:
    """The stored status of each job (``None`` when Redis has no such job), one round trip."""
    if not job_ids:
        return []
    script = connection.register_script(STATUSES_SCRIPT)
    replies = script(keys=[keys.job_key(job_id) for job_id in job_ids])
    return [reply.decode() if isinstance(reply, bytes) else reply for reply in replies]


def withdraw_job(connection: redis.Redis, job_id: str | None) -> bool:
    """Take a job that has not started off its queue or schedule and mark it canceled.

    A job that already started is left alone: stopping a publish half-way would leave its
    outcome unknown. It finds the post changed (revision or status) and does nothing.
    """
    if not job_id:
        return False
    try:
        job = load_job(job_id, connection)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.SCHEDULED:
        removed = connection.zrem(keys.scheduled_key(job.origin), job_id)
    elif status == JobStatus.QUEUED:
        removed = connection.lrem(keys.queue_key(job.origin), 0, job_id)
        if not removed and job.group:  # parked, waiting for its account's running publish
            removed = connection.lrem(keys.group_parked_key(job.group), 0, job_id)
    else:
        return False
    if removed:
        job.cancel()
    return bool(removed)


def delete_job(connection: redis.Redis, job_id: str) -> None:
    """Remove an ended job entirely, so a job with the same id can be created again."""
    try:
        load_job(job_id, connection).delete()
    except NoSuchJobError:
        return
