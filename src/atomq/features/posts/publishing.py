"""Publishing a post at most once while its job may run any number of times.

Every move of a post is a compare-and-set ``UPDATE`` committed *before* the outside call
(``scheduled → publishing``, with an attempt id and a lease) and *after* it (``→ published``,
``failed``, ``unconfirmed``, or back to ``scheduled`` when nothing was sent). So:

* a second run of the job (duplicate, retry, reconciler) finds the post no longer
  ``scheduled`` and publishes nothing;
* two runs at the same moment race on the ``UPDATE``; one wins, and the account's in-flight
  lock (:mod:`atomq.features.posts.ratelimit`) keeps even their requests apart;
* a worker killed mid-call leaves ``publishing`` with an expired lease. Whoever finds it next
  (the job's retry, or the reconciler) repeats the call only when the platform honours the
  idempotency key and the key is still remembered; otherwise the post becomes
  ``unconfirmed`` and a person decides.

Retries happen only when safe: nothing was sent (connection refused, 429 - after the
platform's ``Retry-After``), or the outcome is unknown and the key makes a repeat harmless.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.sql import ColumnElement

from atomq.core.errors import Defer, PermanentError, RetryableError
from atomq.core.logging import log_context
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.db.base import new_id
from atomq.features.posts.models import FINAL_STATUSES, Account, ScheduledPost
from atomq.features.posts.publishers import (
    NotSent,
    OutcomeUnknown,
    Publisher,
    PublishError,
    PublishRequest,
    RateLimited,
    idempotency_of,
    requests_per_post,
)
from atomq.features.posts.publishers.mastodon import MEDIA_PROCESSING_WAIT
from atomq.features.posts.ratelimit import AccountLimiter, limit_for
from atomq.features.posts.records import load_post, update_post
from atomq.features.posts.runtime import PostsRuntime

logger = logging.getLogger("atomq.features.posts")

#: An attempt's lease covers the publisher's connect and read timeouts plus a margin (a
#: quarter of the timeout, at least this many seconds): past it the attempt is certainly
#: over, and may be declared dead.
LEASE_MARGIN = 2.0

#: Seconds a run waits for another publish of the same account to finish before it steps
#: back and retries later (publishes are short; most waits are milliseconds).
BUSY_WAIT = 5.0

#: Retry delays after a failed send: base * 2**(attempt-1), capped, +-25 % jitter.
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0

#: Part of an idempotency window kept clear: a repeat must reach the platform while it still
#: remembers the key, so the last stretch is not used.
WINDOW_SAFETY = 0.1


def lease_seconds(runtime: PostsRuntime, media: int = 0) -> float:
    """How long one attempt may hold a post (and its account's in-flight lock)."""
    return attempt_seconds(runtime.settings, media)


def attempt_seconds(settings: Settings, media: int = 0) -> float:
    """The longest one publishing attempt can take: its lease.

    Each of ``media`` files adds its download, upload and the wait for the platform to
    process it (all before the post itself is sent).
    """

    timeout = settings.posts_publish_timeout
    per_media = 3 * timeout + MEDIA_PROCESSING_WAIT
    return 2 * timeout + max(LEASE_MARGIN, timeout / 4) + media * per_media


def idempotency_key(post_id: str, revision: int) -> str:
    """The key every request for this revision of the post carries (stable across retries)."""
    digest = hashlib.sha256(f"{post_id}:{revision}".encode()).hexdigest()[:32]
    return f"atomq-{digest}"


@dataclass
class Snapshot:
    """The post and its account as read at the start of a run."""

    post: ScheduledPost
    account: Account


def publish_post(
    runtime: PostsRuntime, post_id: str, user_id: str, revision: int | None = None
) -> dict[str, Any]:
    """Publish ``post_id`` once, whatever happened before; return what became of it.

    ``revision`` (set by the jobs atomq creates) makes a job for an edited or rescheduled post
    a no-op. Raises ``RetryableError`` to be run again later, ``PermanentError`` when the post
    failed or its outcome is unknown (so the job shows as failed and alerts).
    """
    with log_context(post_id=post_id):
        snap = _load(runtime, post_id)
        post, account = snap.post, snap.account
        if post.user_id != user_id:
            raise PermanentError(f"post {post_id} belongs to user {post.user_id!r}, not {user_id!r}")
        if revision is not None and revision != post.revision:
            return _result(post, note=f"revision {revision} was replaced by revision {post.revision}")
        if post.status in FINAL_STATUSES:
            return _result(post, note=f"already {post.status}")
        resuming = False
        if post.status == "publishing":
            decision = _in_flight_decision(runtime, post, account, utcnow())
            if isinstance(decision, float):
                # Another run is publishing it right now (a duplicate job): see how it ends.
                post = _await_other_attempt(runtime, post)
                if post.status != "publishing":
                    return _result(post, note=f"another run got there first ({post.status})")
                decision = _in_flight_decision(runtime, post, account, utcnow())
                if isinstance(decision, float):
                    raise Defer(_jitter(decision), "another attempt is publishing this post")
            if decision == "unconfirmed":
                return _give_up_unknown(runtime, post, "the attempt that was publishing it stopped answering")
            resuming = True
        return _attempt(runtime, post, account, resuming=resuming)


def _await_other_attempt(runtime: PostsRuntime, post: ScheduledPost) -> ScheduledPost:
    """Re-read the post until the attempt holding it ends or :data:`BUSY_WAIT` passes."""
    deadline = time.monotonic() + BUSY_WAIT
    while time.monotonic() < deadline:
        time.sleep(0.05)
        post = _load(runtime, post.id).post
        if post.status != "publishing" or post.attempt_id is None:
            break
        if post.lease_until is not None and post.lease_until <= utcnow():
            break  # the other attempt's lease ran out: it is over, one way or another
    return post


def _load(runtime: PostsRuntime, post_id: str) -> Snapshot:
    found = load_post(runtime.database, post_id)
    if found is None:
        raise PermanentError(f"no scheduled post {post_id}")
    return Snapshot(*found)


def resumable(post: ScheduledPost, account: Account, runtime: PostsRuntime, now: datetime) -> bool:
    """Whether repeating the call for a post in ``publishing`` cannot publish it twice."""
    idempotent, window = idempotency_of(account.platform, dict(account.options or {}))
    if not idempotent or post.attempts >= runtime.settings.posts_max_attempts:
        return False
    if post.first_sent_at is None:
        return True
    usable = window * (1 - WINDOW_SAFETY) - lease_seconds(runtime, len(post.media_urls or []))
    return (now - post.first_sent_at).total_seconds() < usable


def _in_flight_decision(
    runtime: PostsRuntime, post: ScheduledPost, account: Account, now: datetime
) -> float | str:
    """For a post found in ``publishing``: seconds to wait while another attempt holds it,
    ``"resume"`` when repeating is safe, else ``"unconfirmed"``."""
    if post.attempt_id is not None and post.lease_until is not None and post.lease_until > now:
        return (post.lease_until - now).total_seconds()
    return "resume" if resumable(post, account, runtime, now) else "unconfirmed"


def _attempt(
    runtime: PostsRuntime, post: ScheduledPost, account: Account, *, resuming: bool
) -> dict[str, Any]:
    token = new_id("att")
    lease = lease_seconds(runtime, len(post.media_urls or []))
    limiter = runtime.limiter
    limit = limit_for(account.platform, dict(account.options or {}), runtime.settings)
    request_name = f"{post.id}:{post.revision}:{post.attempts + 1}"
    cost = requests_per_post(account.platform, len(post.media_urls or []))
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        decision = limiter.acquire(
            account.id, limit, request=request_name, token=token, lease=lease, cost=cost
        )
        if decision.ok:
            break
        if decision.outcome == "busy" and time.monotonic() < deadline:
            # Woken the moment the other publish releases the account (or when its lease ends).
            limiter.wait_released(account.id, min(decision.wait, deadline - time.monotonic(), 1.0))
            continue
        reason = {"busy": "another post of this account is being published", "wait": "rate limit"}.get(
            decision.outcome, "the platform asked to slow down"
        )
        logger.info("post %s waits %.1f s: %s", post.id, decision.wait, reason)
        # Waiting is not an attempt: the post keeps its retries for real failures.
        raise Defer(_jitter(max(decision.wait, 1.0)), f"waiting: {reason}")
    publisher: Publisher | None = None
    try:
        claimed = _claim(runtime, post, token, lease, resuming=resuming)
        if claimed is None:
            current = _load(runtime, post.id).post
            return _result(current, note=f"another run got there first ({current.status})")
        post = claimed
        publisher = runtime.publisher_for(account)
        request = _request(runtime, post, account)
        logger.info("publishing post %s to %s (attempt %d)", post.id, account.platform, post.attempts)
        try:
            published = publisher.publish(request)
        except PublishError as exc:
            return _after_failure(runtime, post, account, token, exc, resuming=resuming)
        done = _finish(
            runtime,
            post.id,
            token,
            status="published",
            platform_post_id=published.platform_post_id,
            platform_url=published.url,
            published_at=utcnow(),
            last_error=None,
        )
        if not done:
            # Our lease ran out and another attempt took over; with an idempotent platform
            # both requests carried the same key, so the platform made one post.
            logger.warning("post %s: published, but another attempt had taken over", post.id)
            return _result(_load(runtime, post.id).post)
        logger.info("published post %s (%s)", post.id, published.url or published.platform_post_id)
        post.status, post.platform_post_id, post.platform_url = (
            "published",
            published.platform_post_id,
            published.url,
        )
        return _result(post)
    finally:
        _release(limiter, account.id, token)
        if publisher is not None:
            publisher.close()


#: Seconds a finished attempt keeps trying to give its account's in-flight lock back while
#: Redis is away (a restart, a failover).
RELEASE_PATIENCE = 30.0


def _release(limiter: AccountLimiter, account_id: str, token: str) -> None:
    """Give the account's in-flight lock back, riding out a short Redis outage.

    A lock left behind blocks the account's other posts until its lease ends (a minute or
    more), so the attempt keeps trying for a while; failing that, the lease frees it. Either
    way the attempt's own outcome stands: it is already in the database.
    """
    import redis

    delay, deadline = 0.5, time.monotonic() + RELEASE_PATIENCE
    while True:
        try:
            limiter.release(account_id, token)
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError) as exc:
            if time.monotonic() + delay > deadline:
                logger.warning(
                    "account %s: in-flight lock not released (%s); it frees itself when its lease ends",
                    account_id,
                    exc,
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _claim(
    runtime: PostsRuntime, post: ScheduledPost, token: str, lease: float, *, resuming: bool
) -> ScheduledPost | None:
    """Make this run the post's attempt, committed before anything is sent; None if it lost."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": "publishing",
        "attempt_id": token,
        "lease_until": now + timedelta(seconds=lease),
        "attempts": ScheduledPost.attempts + 1,
    }
    if resuming:
        # Keep first_sent_at: the key's lifetime runs from the first request that carried it.
        where: list[ColumnElement[bool]] = [
            ScheduledPost.status == "publishing",
            or_(ScheduledPost.attempt_id.is_(None), ScheduledPost.lease_until < now),
        ]
        if post.first_sent_at is None:
            values["first_sent_at"] = now
    else:
        where = [ScheduledPost.status == "scheduled"]
        values["first_sent_at"] = now
    where.append(ScheduledPost.revision == post.revision)
    if not update_post(runtime.database, post.id, where, values):
        return None
    # What the UPDATE wrote, applied to our detached copy (saves reading the row again).
    post.status, post.attempt_id, post.lease_until = "publishing", token, values["lease_until"]
    post.attempts += 1
    post.first_sent_at = values.get("first_sent_at", post.first_sent_at)
    return post


def _request(runtime: PostsRuntime, post: ScheduledPost, account: Account) -> PublishRequest:
    credentials = (
        runtime.credentials.open(account.credentials, account_id=account.id) if account.credentials else {}
    )
    return PublishRequest(
        post_id=post.id,
        revision=post.revision,
        content=post.content,
        media_urls=list(post.media_urls or []),
        scheduled_for=post.scheduled_for,
        idempotency_key=idempotency_key(post.id, post.revision),
        account_id=account.id,
        handle=account.handle,
        url=account.url,
        options=dict(account.options or {}),
        credentials=credentials,
    )


def _after_failure(
    runtime: PostsRuntime,
    post: ScheduledPost,
    account: Account,
    token: str,
    exc: PublishError,
    *,
    resuming: bool = False,
) -> dict[str, Any]:
    """Record what a failed send means and tell the worker whether to retry."""
    settings = runtime.settings
    message = exc.message[:2000]
    logger.warning("post %s: attempt %d failed: %s", post.id, post.attempts, message)
    if resuming and (isinstance(exc, NotSent) or exc.preparing):
        # This attempt repeats one whose outcome is unknown. That this one never reached the
        # platform (or failed on the media before the post) says nothing about the earlier
        # one: the post stays unknown - repeated while the key is remembered, else unconfirmed.
        if isinstance(exc, RateLimited) and exc.retry_after:
            runtime.limiter.block(account.id, exc.retry_after)
        exc = OutcomeUnknown(
            f"{message} (an earlier attempt may have published it)", retry_after=exc.retry_after
        )
        message = exc.message[:2000]
    if isinstance(exc, NotSent):
        if isinstance(exc, RateLimited):
            if exc.retry_after:
                runtime.limiter.block(account.id, exc.retry_after)
            # Being told to wait is not a failed attempt.
            attempts: Any = ScheduledPost.attempts - 1
            exhausted = False
        else:
            attempts = ScheduledPost.attempts
            exhausted = post.attempts >= settings.posts_max_attempts
        if exhausted:
            _finish(runtime, post.id, token, status="failed", last_error=f"gave up: {message}")
            raise PermanentError(f"post {post.id} failed after {post.attempts} attempts: {message}")
        # Nothing reached the platform: the post is editable and cancelable again.
        _finish(
            runtime,
            post.id,
            token,
            status="scheduled",
            first_sent_at=None,
            attempts=attempts,
            last_error=message,
        )
        raise RetryableError(message, delay=exc.retry_after or _backoff(post.attempts))
    if isinstance(exc, OutcomeUnknown):
        if resumable(post, account, runtime, utcnow()):
            # Stay in publishing (not editable): the repeat must carry the same content and key.
            _finish(runtime, post.id, token, status="publishing", last_error=message)
            raise RetryableError(message, delay=exc.retry_after or _backoff(post.attempts))
        _finish(runtime, post.id, token, status="unconfirmed", last_error=f"outcome unknown: {message}")
        raise PermanentError(
            f"post {post.id}: the platform may or may not have published it ({message}); "
            "marked unconfirmed, not retried"
        )
    _finish(runtime, post.id, token, status="failed", last_error=message)
    raise PermanentError(f"post {post.id} was refused: {message}")


def _give_up_unknown(runtime: PostsRuntime, post: ScheduledPost, why: str) -> dict[str, Any]:
    if not mark_unconfirmed(runtime, post, why):
        current = _load(runtime, post.id).post
        return _result(current, note=f"another run got there first ({current.status})")
    raise PermanentError(f"post {post.id}: {why}; whether it was published is unknown (unconfirmed)")


def mark_unconfirmed(runtime: PostsRuntime, post: ScheduledPost, why: str) -> bool:
    """Move a post whose attempt is over (lease expired) from ``publishing`` to ``unconfirmed``."""
    now = utcnow()
    done = update_post(
        runtime.database,
        post.id,
        [
            ScheduledPost.status == "publishing",
            or_(ScheduledPost.attempt_id.is_(None), ScheduledPost.lease_until < now),
        ],
        {"status": "unconfirmed", "attempt_id": None, "lease_until": None, "last_error": why},
    )
    if done:
        logger.warning("post %s is unconfirmed: %s", post.id, why)
    return done


def _finish(runtime: PostsRuntime, post_id: str, token: str, **values: Any) -> bool:
    """End attempt ``token``: write ``values`` if it still holds the post."""
    values.update(attempt_id=None, lease_until=None)
    return update_post(runtime.database, post_id, [ScheduledPost.attempt_id == token], values)


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_BASE * 2.0 ** max(attempt - 1, 0), BACKOFF_CAP))


def _jitter(seconds: float) -> float:
    """``seconds`` spread by up to +25 % so posts that waited together do not return together."""
    return seconds * (1 + random.uniform(0, 0.25))  # noqa: S311 - spreading load, not security


def _result(post: ScheduledPost, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "post_id": post.id,
        "status": post.status,
        "attempts": post.attempts,
        "platform_post_id": post.platform_post_id,
        "url": post.platform_url,
    }
    if note:
        out["note"] = note
    return out


def current_posts(runtime: PostsRuntime, post_ids: list[str]) -> list[ScheduledPost]:
    """The posts with ``post_ids`` as stored now (detached)."""
    with runtime.database.session() as session:
        posts = list(session.scalars(select(ScheduledPost).where(ScheduledPost.id.in_(post_ids))))
        session.expunge_all()
    return posts
