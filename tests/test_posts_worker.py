"""Scheduled posts with real worker processes: on time, once, through kills and lost Redis data."""

from __future__ import annotations

import json
import signal
import statistics
import time
from datetime import datetime, timedelta

import pytest

from atomq.core import keys
from atomq.core.timeutil import utcnow
from atomq.features.posts.publishing import idempotency_key
from atomq.features.posts.service import PostChanges
from testkit.fakes.mastodon import rate_limited, slow
from testkit.fakes.server import Plan
from testkit.posts import schedule
from testkit.support import wait_for

pytestmark = pytest.mark.slow


def published(service, post_id, timeout=30.0):
    return wait_for(
        lambda: service.get(post_id).status not in ("scheduled", "publishing") and service.get(post_id),
        timeout,
        interval=0.1,
        what=f"post {post_id} to leave scheduled/publishing",
    )


def test_worker_publishes_on_time_once(service, accounts, mastodon, procs, posts_env, posts_tq):
    procs.worker("--count", "2", env=posts_env)
    due = utcnow() + timedelta(seconds=3)
    post = schedule(service, accounts.mastodon(mastodon), "on time", at=due)
    done = published(service, post.id)
    assert done.status == "published"
    assert len(mastodon.statuses) == 1
    lateness = (done.published_at - due).total_seconds()
    assert -0.05 <= lateness < 2.0, lateness
    assert mastodon.requests[0].at >= due.timestamp() - 0.01  # never early
    # The worker records a job's end along with its next step, so it may show a moment later.
    job = wait_for(
        lambda: (status := posts_tq.get_job_status(post.job_id))["status"] == "finished" and status,
        10,
        what="the job to be recorded finished",
    )
    assert job["result"]["status"] == "published"


def test_duplicate_jobs_publish_once(service, accounts, mastodon, procs, posts_env, posts_tq):
    post = schedule(service, accounts.mastodon(mastodon), "twice", publish_now=True, at=None)
    mastodon.plan(Plan(delay=0.3))  # keep the first publish in flight while the copies start
    copies = [
        posts_tq.enqueue(
            "process_scheduled_post", post_id=post.id, user_id=post.user_id, queue="social_media"
        )
        for _ in range(2)
    ]
    procs.worker("--count", "2", env=posts_env)
    for job_id in [post.job_id, *(job.id for job in copies)]:
        wait_for(
            lambda job_id=job_id: posts_tq.get_job_status(job_id)["status"] == "finished",
            30,
            what=f"job {job_id}",
        )
    assert service.get(post.id).status == "published"
    assert len(mastodon.statuses) == 1
    assert len(mastodon.requests) == 1


def test_429_is_retried_after_retry_after(service, accounts, mastodon, procs, posts_env):
    mastodon.plan(rate_limited(retry_after="1"))
    post = schedule(service, accounts.mastodon(mastodon), "patience", publish_now=True, at=None)
    procs.worker(env=posts_env)
    assert published(service, post.id).status == "published"
    first, second = mastodon.requests
    assert second.at - first.at >= 0.9
    assert (
        first.headers["idempotency-key"] == second.headers["idempotency-key"] == idempotency_key(post.id, 1)
    )
    assert len(mastodon.statuses) == 1


def test_canceled_post_is_not_published(service, accounts, mastodon, procs, posts_env, posts_tq):
    procs.worker(env=posts_env)
    post = schedule(service, accounts.mastodon(mastodon), "never", at=utcnow() + timedelta(seconds=2))
    service.cancel(post.id)
    time.sleep(3.5)
    assert mastodon.requests == []
    assert service.get(post.id).status == "canceled"
    assert posts_tq.get_job_status(post.job_id)["status"] == "canceled"


def test_reschedule_moves_the_job(service, accounts, mastodon, procs, posts_env):
    procs.worker(env=posts_env)
    post = schedule(service, accounts.mastodon(mastodon), "later", at=utcnow() + timedelta(seconds=1.5))
    new_due = utcnow() + timedelta(seconds=4)
    service.update(post.id, PostChanges(scheduled_for=new_due))
    time.sleep(2.5)
    assert mastodon.requests == []  # the old time passed without a publish
    done = published(service, post.id)
    assert done.status == "published"
    assert done.published_at >= new_due
    assert len(mastodon.statuses) == 1


def start_publish_then_kill(service, procs, posts_env, connection, account, server):
    """Start a worker, let it send a request the server never answers, SIGKILL it mid-call."""
    server.plan(slow(60))
    worker = procs.worker(env=posts_env)
    post = schedule(service, account, "killed mid-publish", publish_now=True, at=None)
    server.wait_for_requests(1, timeout=30)
    assert service.get(post.id).status == "publishing"
    procs.stop(worker, signal.SIGKILL)  # the supervisor, its worker and its scheduler, at once
    # The dead scheduler's leader lease would keep the next one waiting 15 s; skip the wait.
    connection.delete(keys.SCHEDULER_LEADER)
    return post


def test_sigkill_mid_publish_with_idempotency_key_resumes_once(
    service, accounts, mastodon, procs, posts_env, connection
):
    post = start_publish_then_kill(
        service, procs, posts_env, connection, accounts.mastodon(mastodon), mastodon
    )
    procs.worker(env=posts_env)  # a new worker and scheduler: the reconciler finds the dead attempt
    done = published(service, post.id, timeout=40)
    assert done.status == "published"
    # Both requests carried the same key; Mastodon made one status of them.
    assert len(mastodon.requests) == 2
    assert {r.headers["idempotency-key"] for r in mastodon.requests} == {idempotency_key(post.id, 1)}
    assert len(mastodon.statuses) == 1
    assert done.platform_post_id == mastodon.statuses[0]["id"]


def test_sigkill_mid_publish_without_idempotency_is_unconfirmed(
    service, accounts, webhook, procs, posts_env, connection
):
    post = start_publish_then_kill(service, procs, posts_env, connection, accounts.webhook(webhook), webhook)
    procs.worker(env=posts_env)
    done = published(service, post.id, timeout=40)
    assert done.status == "unconfirmed"
    assert "stopped answering" in done.last_error
    time.sleep(2)
    assert len(webhook.requests) == 1  # never sent again: the receiver may have acted on it
    assert len(webhook.accepted) == 1


def test_redis_flushed_while_100_posts_are_scheduled(
    service, accounts, procs, posts_env, connection, posts_settings, posts_tq
):
    procs.worker("--count", "2", env=posts_env)
    outboxes = [accounts.outbox(handle=f"local-{i}") for i in range(4)]
    start = utcnow() + timedelta(seconds=8)
    # Due over 4 s (25 a second), with Redis emptied before the first is due.
    posts = [
        schedule(service, outboxes[i % 4], f"post {i}", at=start + timedelta(milliseconds=40 * i))
        for i in range(100)
    ]
    assert all(connection.exists(f"rq:job:{p.job_id}") for p in posts)
    assert utcnow() < start - timedelta(seconds=2.5), "creating the posts took too long for this test"
    connection.flushall()  # Redis loses every job (a restart without persistence, an accident)
    assert not any(connection.exists(f"rq:job:{p.job_id}") for p in posts)
    ids = {p.id for p in posts}

    def all_published():
        page = service.list_posts(status=["published"], limit=500)
        return ids <= {p.id for p in page.items}

    wait_for(all_published, 90, interval=0.5, what="all 100 posts to be published")
    final = [service.get(p.id) for p in posts]
    assert {p.status for p in final} == {"published"}
    lines = [json.loads(line) for line in (posts_settings.data_dir / "outbox.jsonl").read_text().splitlines()]
    assert sorted(line["post_id"] for line in lines) == sorted(ids)  # each exactly once
    # On time: the reconciler put every job back before its post was due...
    for post in posts:
        created = datetime.fromisoformat(posts_tq.get_job_status(post.job_id)["created_at"])
        assert created < post.scheduled_for, (post.id, created, post.scheduled_for)
    # ...so none ran early, and lateness is the workers' (on a shared 2-core machine), not the flush's.
    lateness = sorted((p.published_at - p.scheduled_for).total_seconds() for p in final)
    assert lateness[0] >= -0.05
    assert statistics.median(lateness) < 5.0, lateness
    assert lateness[-1] < 15.0, lateness
