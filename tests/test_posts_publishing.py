"""The publishing state machine against real local servers: at most one post, whatever happens.

The job function is called directly here (as the guide's "Job Testing" does); the tests with
real worker processes are in test_posts_worker.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis

from atomq.core.errors import Defer, PermanentError, PostStateError, RetryableError
from atomq.core.timeutil import utcnow
from atomq.features.posts.attempts import lease_seconds
from atomq.features.posts.publishing import idempotency_key, publish_post
from atomq.features.posts.ratelimit import AccountLimiter, Limit
from atomq.features.posts.service import PostChanges
from testkit.fakes.mastodon import rate_limited, server_error, slow
from testkit.fakes.server import Plan
from testkit.posts import schedule


def run(runtime, post):
    return publish_post(runtime, post.id, post.user_id, post.revision)


def test_mastodon_publishes_once_with_token_and_idempotency_key(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon, visibility="unlisted"), "Hello, fediverse")
    result = run(runtime, post)
    assert result["status"] == "published"
    [request] = mastodon.requests
    assert request.headers["authorization"] == "Bearer masto-token"
    assert request.headers["idempotency-key"] == idempotency_key(post.id, 1)
    assert request.json() == {"status": "Hello, fediverse", "visibility": "unlisted"}
    stored = service.get(post.id)
    assert stored.status == "published"
    assert stored.platform_post_id == mastodon.statuses[0]["id"]
    assert stored.platform_url == mastodon.statuses[0]["url"]
    assert stored.published_at is not None
    assert stored.attempts == 1
    # The job runs again (duplicate delivery, retry, a hand-made job): nothing more is sent.
    again = run(runtime, post)
    assert again["status"] == "published"
    assert again["note"] == "already published"
    assert publish_post(runtime, post.id, post.user_id)["status"] == "published"
    assert len(mastodon.requests) == 1
    assert len(mastodon.statuses) == 1


def test_two_runs_at_once_publish_once(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    mastodon.plan(Plan(delay=0.5))  # the first request is slow, so the runs overlap
    results: list[object] = []

    def attempt() -> None:
        try:
            results.append(run(runtime, post)["status"])
        except (RetryableError, Defer) as exc:  # Defer: found the account busy with the other run
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(mastodon.requests) == 1
    assert len(mastodon.statuses) == 1
    assert "published" in results
    assert service.get(post.id).status == "published"


def test_429_waits_for_retry_after_then_publishes_once(runtime, service, accounts, mastodon):
    account = accounts.mastodon(mastodon)
    post = schedule(service, account)
    mastodon.plan(rate_limited(retry_after="2"))
    with pytest.raises(RetryableError) as info:
        run(runtime, post)
    assert info.value.delay is not None and info.value.delay >= 2
    stored = service.get(post.id)
    assert stored.status == "scheduled"  # nothing was published: editable and cancelable again
    assert stored.attempts == 0  # being told to wait is not a failed attempt
    assert "429" in stored.last_error
    # Every worker now holds back for this account until Retry-After has passed: a wait, not an
    # attempt, so the job defers without using a retry.
    with pytest.raises(Defer):
        run(runtime, post)
    assert len(mastodon.requests) == 1
    time.sleep(2.1)
    assert run(runtime, post)["status"] == "published"
    keys = [r.headers["idempotency-key"] for r in mastodon.requests]
    assert keys == [idempotency_key(post.id, 1)] * 2
    assert len(mastodon.statuses) == 1


def test_500_is_retried_with_the_same_key_and_the_post_stays_locked(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    mastodon.plan(server_error())
    with pytest.raises(RetryableError):
        run(runtime, post)
    stored = service.get(post.id)
    # The server may have acted: the repeat must carry the same content and key, so no edits.
    assert stored.status == "publishing"
    with pytest.raises(PostStateError):
        service.update(post.id, PostChanges(content="changed"))
    with pytest.raises(PostStateError):
        service.cancel(post.id)
    assert run(runtime, post)["status"] == "published"
    assert [r.headers["idempotency-key"] for r in mastodon.requests] == [idempotency_key(post.id, 1)] * 2
    assert len(mastodon.statuses) == 1
    assert service.get(post.id).attempts == 2


def test_timeout_after_sending_with_a_key_is_repeated_and_deduplicated(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    mastodon.plan(slow(5))  # creates the status, answers after the 1 s timeout
    with pytest.raises(RetryableError):
        run(runtime, post)
    assert service.get(post.id).status == "publishing"
    assert run(runtime, post)["status"] == "published"
    assert len(mastodon.requests) == 2
    assert len(mastodon.statuses) == 1  # Mastodon answered the repeat with the status it had
    assert service.get(post.id).platform_post_id == mastodon.statuses[0]["id"]


def test_timeout_without_idempotency_is_unconfirmed_and_never_repeated(runtime, service, accounts, webhook):
    post = schedule(service, accounts.webhook(webhook))
    webhook.plan(Plan(delay=5))
    with pytest.raises(PermanentError, match="unconfirmed"):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "unconfirmed"
    assert "outcome unknown" in stored.last_error
    assert run(runtime, post)["status"] == "unconfirmed"
    assert len(webhook.requests) == 1


def test_webhook_is_signed_and_5xx_is_retried_only_for_idempotent_receivers(
    runtime, service, accounts, webhook
):
    plain = schedule(service, accounts.webhook(webhook), "plain", media_urls=["https://img.example/a.png"])
    assert run(runtime, plain)["status"] == "published"
    [delivery] = webhook.accepted
    assert delivery["post_id"] == plain.id
    assert delivery["content"] == "plain"
    assert delivery["media_urls"] == ["https://img.example/a.png"]
    assert webhook.rejected == []
    assert webhook.requests[0].headers["idempotency-key"] == idempotency_key(plain.id, 1)

    webhook.plan(Plan(status=502, act=False))
    risky = schedule(service, accounts.webhook(webhook, handle="hook-2"), "risky")
    with pytest.raises(PermanentError):
        run(runtime, risky)
    assert service.get(risky.id).status == "unconfirmed"

    webhook.plan(Plan(status=503, act=False))
    safe = schedule(service, accounts.webhook(webhook, handle="hook-3", idempotent=True), "safe")
    with pytest.raises(RetryableError):
        run(runtime, safe)
    assert run(runtime, safe)["status"] == "published"
    assert [d["content"] for d in webhook.accepted] == ["plain", "safe"]


def test_refused_post_fails_without_retry(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    mastodon.token = "rotated"  # the stored token no longer works: 401
    with pytest.raises(PermanentError, match="401"):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "failed"
    assert "401" in stored.last_error
    assert "masto-token" not in stored.last_error


def test_connection_refused_is_retried_then_fails_after_max_attempts(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    mastodon.stop()  # nothing listens: nothing can have been sent
    max_attempts = runtime.settings.posts_max_attempts
    for attempt in range(1, max_attempts):
        with pytest.raises(RetryableError):
            run(runtime, post)
        stored = service.get(post.id)
        assert (stored.status, stored.attempts) == ("scheduled", attempt)
    with pytest.raises(PermanentError, match=f"after {max_attempts} attempts"):
        run(runtime, post)
    assert service.get(post.id).status == "failed"


def test_targets_are_checked_again_when_publishing(runtime, service, accounts, webhook):
    post = schedule(service, accounts.webhook(webhook))
    # The allowlist changed since the account was saved (or DNS now points somewhere private).
    runtime.settings = runtime.settings.model_copy(update={"posts_allowed_hosts": ["*"]})
    with pytest.raises(PermanentError, match="does not allow"):
        run(runtime, post)
    assert service.get(post.id).status == "failed"
    assert webhook.requests == []


def test_canceled_or_rescheduled_posts_are_not_published(runtime, service, accounts, mastodon):
    account = accounts.mastodon(mastodon)
    canceled = schedule(service, account, "canceled")
    service.cancel(canceled.id)
    assert run(runtime, canceled)["status"] == "canceled"
    moved = schedule(service, account, "moved")
    service.update(moved.id, PostChanges(scheduled_for=utcnow() + timedelta(hours=2)))
    result = run(runtime, moved)  # the job of revision 1 runs anyway
    assert result["status"] == "scheduled"
    assert "revision 1 was replaced by revision 2" in result["note"]
    assert mastodon.requests == []


def test_a_job_for_another_user_is_refused(runtime, service, accounts, mastodon):
    post = schedule(service, accounts.mastodon(mastodon))
    with pytest.raises(PermanentError, match="belongs to user"):
        publish_post(runtime, post.id, "someone_else", post.revision)
    assert mastodon.requests == []


def test_dead_attempt_is_resumed_only_when_the_key_makes_it_safe(
    runtime, service, accounts, mastodon, webhook
):
    from atomq.features.posts.models import ScheduledPost
    from atomq.features.posts.records import update_post

    def left_mid_publish(post):
        # What a SIGKILLed worker leaves: publishing, an attempt id, a lease that ran out.
        assert update_post(
            runtime.database,
            post.id,
            [],
            {
                "status": "publishing",
                "attempt_id": "att_dead",
                "attempts": 1,
                "first_sent_at": utcnow() - timedelta(seconds=30),
                "lease_until": utcnow() + timedelta(seconds=0.5),
            },
        )

    masto_post = schedule(service, accounts.mastodon(mastodon))
    left_mid_publish(masto_post)
    started = time.monotonic()
    # While the lease runs the attempt may be alive: wait it out, then resend with the same key.
    assert run(runtime, masto_post)["status"] == "published"
    assert time.monotonic() - started >= 0.4
    assert len(mastodon.statuses) == 1

    hook_post = schedule(service, accounts.webhook(webhook))
    left_mid_publish(hook_post)
    time.sleep(0.6)
    with pytest.raises(PermanentError, match="unconfirmed"):
        run(runtime, hook_post)
    assert service.get(hook_post.id).status == "unconfirmed"
    assert webhook.requests == []
    assert ScheduledPost  # the model module is importable in tests for direct checks


def test_lease_covers_the_publishers_timeouts(runtime):
    assert lease_seconds(runtime) > 2 * runtime.settings.posts_publish_timeout


def test_rate_limit_reserves_slots_and_one_publish_in_flight(connection):
    limiter = AccountLimiter(connection)
    limit = Limit(2, 3.0)
    assert limiter.acquire("acct", limit, request="a", token="t1", lease=5).ok
    busy = limiter.acquire("acct", limit, request="b", token="t2", lease=5)
    assert busy.outcome == "busy"  # one publish at a time per account
    limiter.release("acct", "t2")  # someone else's token does not release it
    assert limiter.acquire("acct", limit, request="b", token="t2", lease=5).outcome == "busy"
    limiter.release("acct", "t1")
    assert limiter.acquire("acct", limit, request="b", token="t2", lease=5).ok
    limiter.release("acct", "t2")
    third = limiter.acquire("acct", limit, request="c", token="t3", lease=5)
    assert third.outcome == "wait" and 0 < third.wait <= 3.0  # a reserved slot, not a refusal
    fourth = limiter.acquire("acct", limit, request="d", token="t4", lease=5)
    assert fourth.outcome == "wait" and fourth.wait > 0  # the next free slot after that
    # Coming back early for the reserved slot: still wait; on time: go, without a new slot.
    assert limiter.acquire("acct", limit, request="c", token="t3", lease=5).outcome == "wait"
    time.sleep(third.wait + 0.05)
    assert limiter.acquire("acct", limit, request="c", token="t3", lease=5).ok
    limiter.release("acct", "t3")
    limiter.block("acct", 0.3)
    assert limiter.acquire("acct", limit, request="d", token="t4", lease=5).outcome == "blocked"
    assert limiter.acquire("other", limit, request="x", token="t5", lease=5).ok  # per account


def test_turns_asked_of_the_limiter_together_are_decided_as_one_by_one(connection):
    from atomq.features.posts.ratelimit import Acquire

    limiter = AccountLimiter(connection)
    connection.script_flush()  # scripts Redis no longer knows: loaded, and the calls sent again
    limit = Limit(2, 3.0)
    decisions = limiter.acquire_many(
        [
            Acquire("acct", limit, request="a", token="t1", lease=5),
            Acquire("acct", limit, request="b", token="t2", lease=5),  # behind t1, in the same trip
            Acquire("other", limit, request="x", token="t3", lease=5),
        ]
    )
    assert [d.outcome for d in decisions] == ["ok", "busy", "ok"]
    connection.script_flush()
    # Someone else's token frees nothing; the holders' tokens free their accounts.
    assert limiter.release_many([("acct", "t2"), ("other", "t3")]) == [None, None]
    assert limiter.acquire("acct", limit, request="b", token="t2", lease=5).outcome == "busy"
    assert limiter.acquire("other", limit, request="y", token="t4", lease=5).ok
    assert limiter.release_many([("acct", "t1")]) == [None]
    assert limiter.acquire("acct", limit, request="b", token="t2", lease=5).ok
    # A client holding one connection of its own goes through redis-py's pipeline, alike.
    kwargs = connection.connection_pool.connection_kwargs
    single = redis.Redis(host=kwargs["host"], port=kwargs["port"], single_connection_client=True)
    try:
        connection.script_flush()
        alone = AccountLimiter(single).acquire_many(
            [Acquire("acct", limit, request="c", token="t5", lease=5), Acquire("third", limit, "z", "t6", 5)]
        )
        assert [d.outcome for d in alone] == ["busy", "ok"]
    finally:
        single.close()


def test_runs_started_together_share_a_read_and_a_transaction_yet_end_as_each_would_alone(
    runtime, service, accounts, webhook
):
    # What a burst's starts do in one step: each run gets what its own start would give.
    from atomq.features.posts.attempts import StartRequest, start_many
    from atomq.features.posts.records import load_post, post_events

    first, second, third = (accounts.webhook(webhook, handle=f"hook-{i}") for i in range(3))
    due = [schedule(service, first, "one"), schedule(service, second, "two")]
    same_account = schedule(service, first, "after one")
    foreign = schedule(service, third, "not yours")
    requests = [
        StartRequest(due[0].id, due[0].user_id, None, "att_1"),
        StartRequest(due[1].id, due[1].user_id, due[1].revision, "att_2"),
        StartRequest(due[0].id, due[0].user_id, None, "att_3"),  # a duplicate job of due[0]
        StartRequest(same_account.id, same_account.user_id, None, "att_4"),
        StartRequest(foreign.id, "someone_else", None, "att_5"),
        StartRequest("post_missing", "user_1", None, "att_6"),
    ]
    started = start_many(runtime, requests)

    for begun, token in zip(started[:2], ["att_1", "att_2"], strict=True):
        assert begun.turn.decision.ok and begun.turn.claimed is not None
        assert (begun.turn.claimed.status, begun.turn.claimed.attempt_id) == ("publishing", token)
        stored, _ = load_post(runtime.database, begun.snapshot.post.id)
        assert (stored.status, stored.attempt_id, stored.attempts) == ("publishing", token, 1)
        assert [e.status for e in post_events(runtime.database, stored.id)][-1] == "publishing"
    # The duplicate found the post claimed by the first, as a run after it would.
    assert started[2].turn is None and started[2].snapshot.post.status == "publishing"
    # Its account's publish is in flight: the limiter said busy, nothing was claimed.
    assert started[3].turn.decision.outcome == "busy" and started[3].turn.claimed is None
    assert started[4].turn is None and started[4].snapshot.post.user_id != "someone_else"
    assert isinstance(started[5], PermanentError)


def test_a_claim_that_fails_in_a_batch_fails_alone(runtime, service, accounts, webhook, monkeypatch):
    from atomq.features.posts import attempts, records
    from atomq.features.posts.attempts import StartRequest, start_many
    from atomq.features.posts.records import load_post

    posts = [schedule(service, accounts.webhook(webhook, handle=f"hook-{i}"), f"post {i}") for i in range(3)]
    real_on = attempts._CLAIM_SCHEDULED.on
    real_run = records._Batched.run

    def fails_inside_the_batch(connection, post_id, **params):
        if post_id == posts[1].id:
            raise RuntimeError("disk I/O error")
        return real_on(connection, post_id, **params)

    def batch_fails_with_it(batched, connection, params):
        if posts[1].id in params.values():
            raise RuntimeError("disk I/O error")
        return real_run(batched, connection, params)

    monkeypatch.setattr(attempts._CLAIM_SCHEDULED, "on", fails_inside_the_batch)
    monkeypatch.setattr(records._Batched, "run", batch_fails_with_it)
    started = start_many(
        runtime, [StartRequest(p.id, p.user_id, None, f"att_{i}") for i, p in enumerate(posts)]
    )
    # The shared transaction rolled back; alone, the others' claims went through.
    assert [started[0].turn.claimed.attempt_id, started[2].turn.claimed.attempt_id] == ["att_0", "att_2"]
    assert isinstance(started[1], RuntimeError) and str(started[1]) == "disk I/O error"
    assert [load_post(runtime.database, p.id)[0].status for p in posts] == [
        "publishing",
        "scheduled",
        "publishing",
    ]


@pytest.mark.parametrize("batch_rows", [256, 2])
def test_changes_made_together_match_as_each_would_alone(
    runtime, service, accounts, webhook, monkeypatch, batch_rows
):
    # One statement for a batch of claims (in chunks of batch_rows): each matches or not as
    # its own UPDATE would, and only the ones that matched get their history row.
    from sqlalchemy import select

    from atomq.features.posts import attempts, records
    from atomq.features.posts.models import ScheduledPost
    from atomq.features.posts.records import load_post, post_events

    monkeypatch.setattr(records, "BATCH_ROWS", batch_rows)
    posts = [schedule(service, accounts.webhook(webhook, handle=f"hook-{i}"), f"post {i}") for i in range(4)]
    now = utcnow()
    lease = now + timedelta(seconds=90, microseconds=123)

    def claim(post, token, revision=None):
        revision = post.revision if revision is None else revision
        return post.id, {"revision": revision, "token": token, "lease_until": lease, "first_sent_at": now}

    changes = [
        claim(posts[0], "att_0"),
        claim(posts[1], "att_1", revision=posts[1].revision + 1),  # edited since: no match
        claim(posts[2], "att_2"),
        claim(posts[0], "att_0b"),  # named twice: the first claimed it, this one finds it taken
        claim(posts[3], "att_3"),
        ("post_missing", claim(posts[3], "att_x")[1]),
    ]
    assert attempts._CLAIM_SCHEDULED.many(runtime.database, changes) == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]

    for post, token in [(posts[0], "att_0"), (posts[2], "att_2"), (posts[3], "att_3")]:
        stored, _ = load_post(runtime.database, post.id)
        assert (stored.status, stored.attempt_id, stored.attempts) == ("publishing", token, 1)
        assert (stored.lease_until, stored.first_sent_at) == (lease, now)
        assert stored.updated_at >= now
        events = post_events(runtime.database, post.id)
        assert [(e.status, e.event, e.revision, e.attempts) for e in events][-1] == (
            "publishing",
            "status",
            post.revision,
            1,
        )
        assert [e.status for e in events].count("publishing") == 1
    # Times are stored as every other write stores them: a query bound the usual way finds them.
    query = select(ScheduledPost.id).where(
        ScheduledPost.lease_until == lease, ScheduledPost.first_sent_at == now
    )
    with runtime.database.engine.connect() as connection:
        assert sorted(connection.scalars(query)) == sorted(p.id for p in (posts[0], posts[2], posts[3]))
    untouched, _ = load_post(runtime.database, posts[1].id)
    assert (untouched.status, untouched.attempt_id, untouched.attempts) == ("scheduled", None, 0)
    assert [e.status for e in post_events(runtime.database, posts[1].id)] == ["scheduled"]


def test_publishes_ended_together_are_recorded_and_their_accounts_freed(runtime, service, accounts, webhook):
    from atomq.features.posts.attempts import EndRequest, StartRequest, end_many, start_many
    from atomq.features.posts.ratelimit import AccountLimiter
    from atomq.features.posts.records import load_post

    posts = [schedule(service, accounts.webhook(webhook, handle=f"hook-{i}"), f"post {i}") for i in range(2)]
    start_many(runtime, [StartRequest(p.id, p.user_id, None, f"att_{i}") for i, p in enumerate(posts)])
    now = utcnow()
    ended = end_many(
        runtime,
        [
            EndRequest(posts[0].account_id, posts[0].id, "att_0", "remote-0", "https://x/0", now),
            # An attempt whose lease ran out and was taken over: not recorded, its lock not the holder's.
            EndRequest(posts[1].account_id, posts[1].id, "att_stale", "remote-1", None, now),
        ],
    )
    assert ended == [(True, True), (False, True)]
    first, second = (load_post(runtime.database, p.id)[0] for p in posts)
    assert (first.status, first.platform_post_id, first.attempt_id) == ("published", "remote-0", None)
    assert (second.status, second.attempt_id) == ("publishing", "att_1")
    inflight = [runtime.connection.get(AccountLimiter.keys(p.account_id)[1]) for p in posts]
    assert inflight == [None, b"att_1"]  # the first account is free; the stale token freed nothing
