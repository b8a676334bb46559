"""The publishing state machine's steps on the database: read a post, claim it, finish an
attempt, record what a failed send means. Each is short and blocking (a read, or a
compare-and-set ``UPDATE``, plus a Redis call for a 429); :mod:`~atomq.features.posts.publishing`
runs them off the event loop, in the order that keeps a post published at most once. Also the
rules they share: how long an attempt may hold a post (its lease) and when repeating it is safe.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_

from atomq.core.errors import PermanentError, RetryableError
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.features.posts.models import Account, ScheduledPost
from atomq.features.posts.publishers import (
    NotSent,
    OutcomeUnknown,
    PublishError,
    RateLimited,
    idempotency_of,
    requests_per_post,
)
from atomq.features.posts.publishers.mastodon import MEDIA_PROCESSING_WAIT
from atomq.features.posts.ratelimit import REDIS_AWAY, Acquire, Decision, limit_for
from atomq.features.posts.records import PreparedUpdate, load_post, load_posts, update_post
from atomq.features.posts.runtime import PostsRuntime

logger = logging.getLogger("atomq.features.posts")

#: An attempt's lease covers the publisher's connect and read timeouts plus a margin (a
#: quarter of the timeout, at least this many seconds): past it the attempt is certainly
#: over, and may be declared dead.
LEASE_MARGIN = 2.0

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


def load(runtime: PostsRuntime, post_id: str) -> Snapshot:
    """The post and its account as stored now (detached), or PermanentError when it is gone."""
    found = load_post(runtime.database, post_id)
    if found is None:
        raise PermanentError(f"no scheduled post {post_id}")
    return Snapshot(*found)


@dataclass
class Turn:
    """How :func:`take_turn` went: the limiter's ``decision``, and when it allowed the send,
    the post as claimed for this attempt (None: another run claimed it first)."""

    decision: Decision
    claimed: ScheduledPost | None = None


def take_turn(
    runtime: PostsRuntime,
    post: ScheduledPost,
    account: Account,
    token: str,
    *,
    resuming: bool,
) -> Turn:
    """Take the account's turn with the limiter, then claim the post for attempt ``token``.

    One step on one thread, in the order that keeps a post published once: nothing is claimed
    unless the account's in-flight lock and rate limit allow a send now. When the claim loses,
    the lock is still held: the caller gives it back, as after any attempt.
    """
    decision, lease = _acquire(runtime, post, account, token)
    if not decision.ok:
        return Turn(decision)
    return Turn(decision, claim(runtime, post, token, lease, resuming=resuming))


def _acquire(
    runtime: PostsRuntime, post: ScheduledPost, account: Account, token: str
) -> tuple[Decision, float]:
    """The limiter's decision on sending ``post`` now, as attempt ``token``, and its lease."""
    asked = _asking(runtime, post, account, token)
    return runtime.limiter.ask(asked), asked.lease


def _asking(runtime: PostsRuntime, post: ScheduledPost, account: Account, token: str) -> Acquire:
    """What the limiter is asked before ``post`` is sent as attempt ``token``."""
    return Acquire(
        account.id,
        limit_for(account.platform, dict(account.options or {}), runtime.settings),
        request=f"{post.id}:{post.revision}:{post.attempts + 1}",
        token=token,
        lease=lease_seconds(runtime, len(post.media_urls or [])),
        cost=requests_per_post(account.platform, len(post.media_urls or [])),
    )


@dataclass
class Start:
    """What :func:`start` found: the post and its account and, when the post was plainly
    ``scheduled`` for this job, the turn taken for it (else None: the caller decides)."""

    snapshot: Snapshot
    turn: Turn | None


def start(runtime: PostsRuntime, post_id: str, user_id: str, revision: int | None, token: str) -> Start:
    """The common start of a run in one step: read the post and, when it is ``scheduled``,
    this job's revision and ``user_id``'s, take the account's turn and claim it (:func:`take_turn`).

    Every other case (another revision, a final or in-flight post, a foreign user) comes back
    untouched for the caller's rules. Saving the steps between (a thread hand-off each) is CPU
    that a burst of posts due at one instant spends on publishing instead.
    """
    snapshot = load(runtime, post_id)
    post = snapshot.post
    if not _plainly_due(post, user_id, revision):
        return Start(snapshot, None)
    return Start(snapshot, take_turn(runtime, post, snapshot.account, token, resuming=False))


def _plainly_due(post: ScheduledPost, user_id: str, revision: int | None) -> bool:
    """Whether a run for ``user_id`` and ``revision`` finds ``post`` simply waiting for it."""
    return post.status == "scheduled" and post.user_id == user_id and revision in (None, post.revision)


@dataclass(frozen=True)
class StartRequest:
    """One run's :func:`start`, to be taken with others by :func:`start_many`."""

    post_id: str
    user_id: str
    revision: int | None
    token: str


def start_many(runtime: PostsRuntime, requests: list[StartRequest]) -> list[Start | Exception]:
    """:func:`start` for runs that arrived together, in one step: one read for all their posts,
    then the limiter, then every claim in one transaction. Returns each run's :class:`Start`,
    or the exception its own :func:`start` would have raised.

    A burst's starts are most of its database work, and each cost a read and a write
    transaction of its own: together they share them. A run whose post another run of the batch
    also starts (a duplicate job) goes after the batch on its own, so it finds the post claimed
    as it would have. Should the shared transaction fail, each claim is made again on its own,
    so one post's failure stays its own.
    """
    found = load_posts(runtime.database, list({r.post_id for r in requests}))
    results: list[Start | Exception | None] = [None] * len(requests)
    seen: set[str] = set()
    alone: list[int] = []
    due: list[tuple[int, Snapshot, Acquire]] = []
    for index, request in enumerate(requests):
        if request.post_id in seen:
            alone.append(index)
            continue
        seen.add(request.post_id)
        pair = found.get(request.post_id)
        if pair is None:
            results[index] = PermanentError(f"no scheduled post {request.post_id}")
            continue
        snapshot = Snapshot(*pair)
        if not _plainly_due(snapshot.post, request.user_id, request.revision):
            results[index] = Start(snapshot, None)
            continue
        try:  # an account's options the limiter cannot read fail its own run, not the batch
            due.append((index, snapshot, _asking(runtime, snapshot.post, snapshot.account, request.token)))
        except Exception as exc:
            results[index] = exc
    # Every turn asked of the limiter in one round trip, then every claim in one transaction.
    try:
        decisions = runtime.limiter.acquire_many([asked for _, _, asked in due])
    except Exception as exc:  # Redis away: no run of the batch got its turn
        decisions = [exc] * len(due)
    claims: list[tuple[int, ScheduledPost, float]] = []
    for (index, snapshot, asked), decision in zip(due, decisions, strict=True):
        if isinstance(decision, Exception):
            results[index] = decision
            continue
        results[index] = Start(snapshot, Turn(decision))
        if decision.ok:
            claims.append((index, snapshot.post, asked.lease))
    _claim_together(runtime, requests, claims, results)
    for index in alone:
        request = requests[index]
        try:
            results[index] = start(runtime, request.post_id, request.user_id, request.revision, request.token)
        except Exception as exc:
            results[index] = exc
    started = [result for result in results if result is not None]
    assert len(started) == len(requests), "every run got its start or its error"
    return started


def _claim_together(
    runtime: PostsRuntime,
    requests: list[StartRequest],
    claims: list[tuple[int, ScheduledPost, float]],
    results: list[Start | Exception | None],
) -> None:
    """Claim the posts whose turn was taken, in one transaction (each alone, should it fail)."""
    if not claims:
        return
    now = utcnow()
    changes = [(post.id, _claim_params(post, requests[i].token, lease, now)) for i, post, lease in claims]
    for (i, post, lease), won in zip(claims, _CLAIM_SCHEDULED.many(runtime.database, changes), strict=True):
        start_ = results[i]
        if isinstance(won, Exception):
            results[i] = won
        elif won and isinstance(start_, Start) and start_.turn is not None:
            start_.turn.claimed = _claimed(post, requests[i].token, now + timedelta(seconds=lease), now)


@dataclass(frozen=True)
class EndRequest:
    """A publish for :func:`end_many` to record: attempt ``token`` sent ``post_id``."""

    account_id: str
    post_id: str
    token: str
    platform_post_id: str | None
    platform_url: str | None
    published_at: datetime


def end_many(runtime: PostsRuntime, requests: list[EndRequest]) -> list[tuple[bool, bool] | Exception]:
    """Record the publishes of attempts that ended together (as :func:`finish` would), in one
    transaction (each alone, should it fail), then give each account's in-flight lock back.

    Returns (recorded, released) for each, or the exception recording it raised (its lock is
    then not given back); a lock not given back (Redis away) is the caller's to retry.
    """
    changes = [
        (
            r.post_id,
            {
                "token": r.token,
                "platform_post_id": r.platform_post_id,
                "platform_url": r.platform_url,
                "published_at": r.published_at,
            },
        )
        for r in requests
    ]
    recorded = _FINISH_PUBLISHED.many(runtime.database, changes)
    # The locks of the publishes recorded, given back in one round trip.
    freeing = [
        (r.account_id, r.token)
        for r, done in zip(requests, recorded, strict=True)
        if not isinstance(done, Exception)
    ]
    try:
        released = runtime.limiter.release_many(freeing)
    except REDIS_AWAY as exc:  # each run gives its lock back itself, riding out the outage
        released = [exc] * len(freeing)
    freed = iter(released)
    results: list[tuple[bool, bool] | Exception] = []
    for done in recorded:
        if isinstance(done, Exception):
            results.append(done)
        else:
            results.append((done, next(freed) is None))
    return results


def prepare(runtime: PostsRuntime, rows: int) -> None:
    """Compile the statements :func:`start_many` and :func:`end_many` use for up to ``rows``
    posts at once (see ``runtime.warm_up``)."""
    with runtime.database.engine.connect() as connection:
        for change in (_CLAIM_SCHEDULED, _FINISH_PUBLISHED):
            change.prepare(connection, rows)


#: The two moves every publish makes, built once (see PreparedUpdate): a scheduled post
#: claimed for an attempt, and the attempt's publish recorded.
_CLAIM_SCHEDULED = PreparedUpdate(
    [ScheduledPost.status == "scheduled", ScheduledPost.revision == bindparam("p_revision")],
    {
        "status": "publishing",
        "attempt_id": bindparam("p_token"),
        "lease_until": bindparam("p_lease_until"),
        "attempts": ScheduledPost.attempts + 1,
        "first_sent_at": bindparam("p_first_sent_at"),
    },
)
_FINISH_PUBLISHED = PreparedUpdate(
    [ScheduledPost.attempt_id == bindparam("p_token")],
    {
        "status": "published",
        "platform_post_id": bindparam("p_platform_post_id"),
        "platform_url": bindparam("p_platform_url"),
        "published_at": bindparam("p_published_at"),
        "last_error": None,
        "attempt_id": None,
        "lease_until": None,
    },
)


def resumable(post: ScheduledPost, account: Account, runtime: PostsRuntime, now: datetime) -> bool:
    """Whether repeating the call for a post in ``publishing`` cannot publish it twice."""
    idempotent, window = idempotency_of(account.platform, dict(account.options or {}))
    if not idempotent or post.attempts >= runtime.settings.posts_max_attempts:
        return False
    if post.first_sent_at is None:
        return True
    usable = window * (1 - WINDOW_SAFETY) - lease_seconds(runtime, len(post.media_urls or []))
    return (now - post.first_sent_at).total_seconds() < usable


def in_flight_decision(
    runtime: PostsRuntime, post: ScheduledPost, account: Account, now: datetime
) -> float | str:
    """For a post found in ``publishing``: seconds to wait while another attempt holds it,
    ``"resume"`` when repeating is safe, else ``"unconfirmed"``."""
    if post.attempt_id is not None and post.lease_until is not None and post.lease_until > now:
        return (post.lease_until - now).total_seconds()
    return "resume" if resumable(post, account, runtime, now) else "unconfirmed"


def claim(
    runtime: PostsRuntime, post: ScheduledPost, token: str, lease: float, *, resuming: bool
) -> ScheduledPost | None:
    """Make this run the post's attempt, committed before anything is sent; None if it lost."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease)
    # A new attempt starts the idempotency key's lifetime; a resumed one keeps it, since it
    # runs from the first request that carried the key.
    first_sent_at = post.first_sent_at if resuming and post.first_sent_at is not None else now
    if resuming:
        values: dict[str, Any] = {
            "status": "publishing",
            "attempt_id": token,
            "lease_until": lease_until,
            "attempts": ScheduledPost.attempts + 1,
        }
        if post.first_sent_at is None:
            values["first_sent_at"] = first_sent_at
        won = update_post(
            runtime.database,
            post.id,
            [
                ScheduledPost.status == "publishing",
                or_(ScheduledPost.attempt_id.is_(None), ScheduledPost.lease_until < now),
                ScheduledPost.revision == post.revision,
            ],
            values,
        )
    else:
        won = _CLAIM_SCHEDULED(runtime.database, post.id, **_claim_params(post, token, lease, now))
    if not won:
        return None
    return _claimed(post, token, lease_until, first_sent_at)


def _claim_params(post: ScheduledPost, token: str, lease: float, now: datetime) -> dict[str, Any]:
    """What :data:`_CLAIM_SCHEDULED` takes to make ``token`` the attempt of a scheduled post."""
    return {
        "revision": post.revision,
        "token": token,
        "lease_until": now + timedelta(seconds=lease),
        "first_sent_at": now,
    }


def _claimed(
    post: ScheduledPost, token: str, lease_until: datetime, first_sent_at: datetime
) -> ScheduledPost:
    """``post`` as the claim's UPDATE wrote it, applied to our detached copy (saves reading
    the row again)."""
    post.status, post.attempt_id, post.lease_until = "publishing", token, lease_until
    post.attempts += 1
    post.first_sent_at = first_sent_at
    return post


def after_failure(
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
            finish(runtime, post.id, token, status="failed", last_error=f"gave up: {message}")
            raise PermanentError(f"post {post.id} failed after {post.attempts} attempts: {message}")
        # Nothing reached the platform: the post is editable and cancelable again.
        finish(
            runtime,
            post.id,
            token,
            status="scheduled",
            first_sent_at=None,
            attempts=attempts,
            last_error=message,
        )
        raise RetryableError(message, delay=exc.retry_after or backoff(post.attempts))
    if isinstance(exc, OutcomeUnknown):
        if resumable(post, account, runtime, utcnow()):
            # Stay in publishing (not editable): the repeat must carry the same content and key.
            finish(runtime, post.id, token, status="publishing", last_error=message)
            raise RetryableError(message, delay=exc.retry_after or backoff(post.attempts))
        finish(runtime, post.id, token, status="unconfirmed", last_error=f"outcome unknown: {message}")
        raise PermanentError(
            f"post {post.id}: the platform may or may not have published it ({message}); "
            "marked unconfirmed, not retried"
        )
    finish(runtime, post.id, token, status="failed", last_error=message)
    raise PermanentError(f"post {post.id} was refused: {message}")


def give_up_unknown(runtime: PostsRuntime, post: ScheduledPost, why: str) -> dict[str, Any]:
    """Mark a post whose dead attempt cannot be safely repeated ``unconfirmed`` (PermanentError),
    unless another run settled it first (its state is returned)."""
    if not mark_unconfirmed(runtime, post, why):
        current = load(runtime, post.id).post
        return result(current, note=f"another run got there first ({current.status})")
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


def finish(runtime: PostsRuntime, post_id: str, token: str, **values: Any) -> bool:
    """End attempt ``token``: write ``values`` if it still holds the post."""
    values.update(attempt_id=None, lease_until=None)
    return update_post(runtime.database, post_id, [ScheduledPost.attempt_id == token], values)


def backoff(attempt: int) -> float:
    """Seconds before retrying after failed attempt number ``attempt``."""
    return float(min(BACKOFF_BASE * 2.0 ** max(attempt - 1, 0), BACKOFF_CAP))


def result(post: ScheduledPost, note: str | None = None) -> dict[str, Any]:
    """What the task returns: the post's state, with a ``note`` on why nothing was done."""
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
