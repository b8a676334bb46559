"""The guide's task: ``process_scheduled_post(post_id, user_id)`` on the ``social_media`` queue.

It is an ``async def`` task: publishing waits on platforms, and a worker that runs async jobs
on one event loop publishes many posts at once through one pooled HTTP client. A worker that
runs each async job on a loop of its own (RQ's ``perform``) still runs it, one post at a time.

Every atomq process imports this module (``BUILTIN_TASK_MODULES``), so it only registers the
task: publishing's own imports (SQLAlchemy, httpx, the publishers, cryptography: ~30 MB) are
made by the processes that publish, before their first job (``preload``: workers serving
``social_media``, and RQ's worker before it forks), and such a worker also builds publishing's
runtime then (``warm_up``). The periodic reconciler registers where a scheduler runs (the
feature's ``periodic`` modules, see :mod:`atomq.engine.plugins`).
"""

from __future__ import annotations

from typing import Any

from atomq.engine.tasks import Retry, task

#: Retries cover failed sends; waits (rate limits, a busy account) defer without using one
#: (atomq.Defer). The post itself counts real attempts and gives up after
#: ATOMQ_POSTS_MAX_ATTEMPTS.
POST_RETRY = Retry(max=30, delay=2, backoff=2, max_delay=600, jitter=0.25)

#: What publishing imports, preloaded before a process forks per job.
PUBLISHING_MODULES = (
    "atomq.features.posts.publishing",
    "atomq.features.posts.attempts",
    "atomq.features.posts.offloop",
    "atomq.features.posts.runtime",
    "atomq.features.posts.credentials",
    "atomq.features.posts.publishers.clients",
    "atomq.features.posts.publishers.http",
    "atomq.features.posts.publishers.mastodon",
    "atomq.features.posts.publishers.outbox",
    "atomq.features.posts.publishers.webhook",
)


#: process_scheduled_post's timeout when a post has no media to lengthen its attempt
#: (posts/jobs.py gives those a longer one).
DEFAULT_JOB_TIMEOUT = 300


@task(
    "process_scheduled_post",
    queue="social_media",
    timeout=DEFAULT_JOB_TIMEOUT,
    retry=POST_RETRY,
    preload=PUBLISHING_MODULES,
    warm_up="atomq.features.posts.runtime:warm_up",
)
async def process_scheduled_post(post_id: str, user_id: str, revision: int | None = None) -> dict[str, Any]:
    """Publish scheduled post ``post_id`` of ``user_id``, at most once however often it runs.

    Returns the post's state (``status``, ``platform_post_id``, ``url``...). Safe to run
    directly for testing, as the guide shows, on a loop:
    ``asyncio.run(process_scheduled_post(post_id=..., user_id=...))``.
    """
    from rq import get_current_job

    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.publishing import publish_post_async
    from atomq.features.posts.runtime import from_environment

    job = get_current_job()
    runtime = from_environment(job.connection if job is not None else None)
    return await publish_post_async(runtime, post_id, user_id, revision)
