"""The guide's task: ``process_scheduled_post(post_id, user_id)`` on the ``social_media`` queue.

Importing this module (every atomq process does, through ``BUILTIN_TASK_MODULES``) registers
the task and the posts reconciler. It also imports what publishing needs (SQLAlchemy, httpx,
the publishers, cryptography) up front, so that a work-horse forked per job (RQ's worker
class, or ``isolation="fork"``) starts publishing at once instead of spending most of a
second on imports.
"""

from __future__ import annotations

from typing import Any

import atomq.posts.credentials
import atomq.posts.publishers.http
import atomq.posts.publishers.mastodon
import atomq.posts.publishers.outbox
import atomq.posts.publishers.webhook  # noqa: F401 - preloaded for forked work-horses (see above)
from atomq.posts import reconciler as _reconciler  # noqa: F401 - registers the periodic reconciler
from atomq.posts.publishing import publish_post
from atomq.posts.runtime import from_environment
from atomq.tasks import Retry, task

#: Retries cover waits (rate limits, a busy account) as well as failed sends; the post itself
#: counts real attempts and gives up after ATOMQ_POSTS_MAX_ATTEMPTS.
POST_RETRY = Retry(max=30, delay=2, backoff=2, max_delay=600, jitter=0.25)


@task("process_scheduled_post", queue="social_media", timeout=300, retry=POST_RETRY)
def process_scheduled_post(post_id: str, user_id: str, revision: int | None = None) -> dict[str, Any]:
    """Publish scheduled post ``post_id`` of ``user_id``, at most once however often it runs.

    Returns the post's state (``status``, ``platform_post_id``, ``url``...). Safe to call
    directly for testing, as the guide shows.
    """
    from rq import get_current_job

    job = get_current_job()
    runtime = from_environment(job.connection if job is not None else None)
    return publish_post(runtime, post_id, user_id, revision)
