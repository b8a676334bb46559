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

Publishing is async (:func:`publish_post_async`), so one worker can wait on many platforms at
once; the database and Redis steps run off the event loop (:mod:`~atomq.features.posts.offloop`)
and are exactly the steps above, in the same order. A run never waits inside its job for its
account: when another post of the account is being published it steps back with
:class:`~atomq.core.errors.Defer` (no attempt used), leaving its worker slot to other accounts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from atomq.core.errors import Defer, PermanentError
from atomq.core.logging import log_context
from atomq.core.timeutil import utcnow
from atomq.db.base import new_id
from atomq.features.posts import attempts
from atomq.features.posts.attempts import attempt_seconds, idempotency_key, result
from atomq.features.posts.models import FINAL_STATUSES, Account, ScheduledPost
from atomq.features.posts.offloop import redis_off_loop
from atomq.features.posts.publishers import PublishError, PublishRequest
from atomq.features.posts.ratelimit import REDIS_AWAY, AccountLimiter
from atomq.features.posts.runtime import PostsRuntime

# attempt_seconds and idempotency_key lived here before the database steps had a module.
__all__ = [
    "BUSY_DEFER",
    "BUSY_WAIT",
    "attempt_seconds",
    "idempotency_key",
    "publish_post",
    "publish_post_async",
]

logger = logging.getLogger("atomq.features.posts")

#: Seconds a run waits for a duplicate run of the *same post* to finish before it steps back
#: (rare: a duplicate job; the post's own attempt is usually over within a publish).
BUSY_WAIT = 5.0

#: Longest deferral of a run whose account is busy publishing another post (plus up to 25 %
#: jitter). Publishes take about a platform round trip, so the account is soon free; waiting
#: for it inside the job would hold a worker slot that another account's post could use.
BUSY_DEFER = 1.0


def publish_post(
    runtime: PostsRuntime, post_id: str, user_id: str, revision: int | None = None
) -> dict[str, Any]:
    """:func:`publish_post_async` on an event loop of its own, for sync callers (scripts, tests);
    not from inside a running loop."""
    return asyncio.run(publish_post_async(runtime, post_id, user_id, revision))


async def publish_post_async(
    runtime: PostsRuntime, post_id: str, user_id: str, revision: int | None = None
) -> dict[str, Any]:
    """Publish ``post_id`` once, whatever happened before; return what became of it.

    ``revision`` (set by the jobs atomq creates) makes a job for an edited or rescheduled post
    a no-op. Raises ``RetryableError`` to be run again later, ``Defer`` to come back without
    using an attempt (a rate limit, a busy account), ``PermanentError`` when the post failed
    or its outcome is unknown (so the job shows as failed and alerts).
    """
    with log_context(post_id=post_id):
        token = new_id("att")
        # Together with the starts of other posts due at the same moment (one read, one
        # transaction for their claims): a burst's database work is mostly these.
        begun = await runtime.together(
            attempts.start_many, attempts.StartRequest(post_id, user_id, revision, token)
        )
        post, account = begun.snapshot.post, begun.snapshot.account
        if begun.turn is not None:  # the common case: scheduled, and its turn already taken
            return await _attempt(runtime, post, account, token, begun.turn, resuming=False)
        if post.user_id != user_id:
            raise PermanentError(f"post {post_id} belongs to user {post.user_id!r}, not {user_id!r}")
        if revision is not None and revision != post.revision:
            return result(post, note=f"revision {revision} was replaced by revision {post.revision}")
        if post.status in FINAL_STATUSES:
            return result(post, note=f"already {post.status}")
        resuming = False
        if post.status == "publishing":
            decision = attempts.in_flight_decision(runtime, post, account, utcnow())
            if isinstance(decision, float):
                # Another run is publishing it right now (a duplicate job): see how it ends.
                post = await _await_other_attempt(runtime, post)
                if post.status != "publishing":
                    return result(post, note=f"another run got there first ({post.status})")
                decision = attempts.in_flight_decision(runtime, post, account, utcnow())
                if isinstance(decision, float):
                    raise Defer(_jitter(decision), "another attempt is publishing this post")
            if decision == "unconfirmed":
                why = "the attempt that was publishing it stopped answering"
                return await runtime.step(attempts.give_up_unknown, post, why)
            resuming = True
        turn = await runtime.step(attempts.take_turn, post, account, token, resuming=resuming)
        return await _attempt(runtime, post, account, token, turn, resuming=resuming)


async def _await_other_attempt(runtime: PostsRuntime, post: ScheduledPost) -> ScheduledPost:
    """Re-read the post until the attempt holding it ends or :data:`BUSY_WAIT` passes."""
    deadline = time.monotonic() + BUSY_WAIT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        post = (await runtime.step(attempts.load, post.id)).post
        if post.status != "publishing" or post.attempt_id is None:
            break
        if post.lease_until is not None and post.lease_until <= utcnow():
            break  # the other attempt's lease ran out: it is over, one way or another
    return post


async def _attempt(
    runtime: PostsRuntime,
    post: ScheduledPost,
    account: Account,
    token: str,
    turn: attempts.Turn,
    *,
    resuming: bool,
) -> dict[str, Any]:
    """Send the post whose turn was taken (or step back when the limiter said wait)."""
    decision = turn.decision
    if not decision.ok:
        if decision.outcome == "busy":
            # Come back when the other publish has most likely ended, never later than its lease.
            delay = min(decision.wait, BUSY_DEFER)
            reason = "another post of this account is being published"
        else:
            delay = max(decision.wait, 1.0)
            reason = "rate limit" if decision.outcome == "wait" else "the platform asked to slow down"
        logger.info("post %s waits %.1f s: %s", post.id, delay, reason)
        # Waiting is not an attempt: the post keeps its retries for real failures.
        raise Defer(_jitter(delay), f"waiting: {reason}")
    released = False
    try:
        if turn.claimed is None:
            current = (await runtime.step(attempts.load, post.id)).post
            return result(current, note=f"another run got there first ({current.status})")
        post = turn.claimed
        publisher = await runtime.publisher_for(account)
        request = _request(runtime, post, account)
        # DEBUG: the claim is in the post's history already, and "published" or the failure
        # follows at INFO/WARNING; a third line per post cost a burst 2 % of its CPU.
        logger.debug("publishing post %s to %s (attempt %d)", post.id, account.platform, post.attempts)
        try:
            published = await publisher.publish(request)
        except PublishError as exc:
            return await runtime.step(attempts.after_failure, post, account, token, exc, resuming=resuming)
        done, released = await runtime.together(
            attempts.end_many,
            attempts.EndRequest(
                account.id,
                post.id,
                token,
                platform_post_id=published.platform_post_id,
                platform_url=published.url,
                published_at=utcnow(),
            ),
        )
        if not done:
            # Our lease ran out and another attempt took over; with an idempotent platform
            # both requests carried the same key, so the platform made one post.
            logger.warning("post %s: published, but another attempt had taken over", post.id)
            return result((await runtime.step(attempts.load, post.id)).post)
        logger.info("published post %s (%s)", post.id, published.url or published.platform_post_id)
        post.status, post.platform_post_id, post.platform_url = (
            "published",
            published.platform_post_id,
            published.url,
        )
        return result(post)
    finally:
        if not released:
            await _release(runtime.limiter, account.id, token)


#: Seconds a finished attempt keeps trying to give its account's in-flight lock back while
#: Redis is away (a restart, a failover).
RELEASE_PATIENCE = 30.0


async def _release(limiter: AccountLimiter, account_id: str, token: str) -> None:
    """Give the account's in-flight lock back, riding out a short Redis outage.

    A lock left behind blocks the account's other posts until its lease ends (a minute or
    more), so the attempt keeps trying for a while; failing that, the lease frees it. Either
    way the attempt's own outcome stands: it is already in the database.
    """
    delay, deadline = 0.5, time.monotonic() + RELEASE_PATIENCE
    while True:
        try:
            await redis_off_loop(limiter.release, account_id, token)
            return
        except REDIS_AWAY as exc:
            if time.monotonic() + delay > deadline:
                logger.warning(
                    "account %s: in-flight lock not released (%s); it frees itself when its lease ends",
                    account_id,
                    exc,
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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


def _jitter(seconds: float) -> float:
    """``seconds`` spread by up to +25 % so posts that waited together do not return together."""
    return seconds * (1 + random.uniform(0, 0.25))  # noqa: S311 - spreading load, not security
