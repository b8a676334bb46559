"""Publishing as async code: one pooled client per event loop, many posts in flight on one loop,
and a busy account answered with Defer instead of a wait inside the job.

Against the real fake receiver (a local HTTP server that records each request's client
address, so keep-alive reuse is visible), real Redis and the test database.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from atomq.core.errors import Defer
from atomq.features.posts.publishing import BUSY_DEFER, publish_post, publish_post_async
from atomq.features.posts.ratelimit import Limit
from testkit.fakes.server import Plan
from testkit.posts import schedule
from testkit.support import wait_for


def run(runtime, post):
    return publish_post(runtime, post.id, post.user_id, post.revision)


def test_one_client_per_loop_reused_by_every_post_and_closed_with_its_loop(
    runtime, service, accounts, webhook
):
    account = accounts.webhook(webhook)
    posts = [schedule(service, account, f"post {i}") for i in range(4)]

    async def publish_all():
        client = await runtime.http()
        results = [await publish_post_async(runtime, p.id, p.user_id, p.revision) for p in posts]
        assert await runtime.http() is client  # the same client for the loop's whole life
        return client, results

    first, results = asyncio.run(publish_all())
    assert [r["status"] for r in results] == ["published"] * 4
    assert len(webhook.requests) == 4
    # One connection, kept alive from one post to the next (the server saw one client port).
    assert len({r.peer for r in webhook.requests}) == 1, [r.peer for r in webhook.requests]
    assert first.is_closed  # closed as its loop shut down
    assert len(runtime.clients) == 0

    async def client_of_this_loop():
        return await runtime.http()

    second = asyncio.run(client_of_this_loop())
    assert second is not first  # a new loop, a new client (connections belong to their loop)
    assert second.is_closed


def test_posts_of_many_accounts_publish_at_once_on_one_loop(runtime, service, accounts, webhook):
    posts = [schedule(service, accounts.webhook(webhook, handle=f"hook-{i}"), f"post {i}") for i in range(10)]
    webhook.plan(*[Plan(delay=0.5) for _ in posts])  # each answer takes half a second

    async def publish_all():
        return await asyncio.gather(
            *(publish_post_async(runtime, p.id, p.user_id, p.revision) for p in posts)
        )

    started = time.monotonic()
    results = asyncio.run(publish_all())
    elapsed = time.monotonic() - started
    assert [r["status"] for r in results] == ["published"] * 10
    assert sorted(d["content"] for d in webhook.accepted) == sorted(f"post {i}" for i in range(10))
    # One after another they would take 5 s; together, about one answer's time.
    assert elapsed < 3.0, elapsed


def test_a_busy_account_defers_at_once_without_using_an_attempt(runtime, service, accounts, webhook):
    account = accounts.webhook(webhook)
    post = schedule(service, account, "waits its turn")
    # Another post of the account is being published (its worker holds the in-flight lock).
    assert runtime.limiter.acquire(account.id, Limit(0, 0), request="other", token="other", lease=30).ok
    started = time.monotonic()
    with pytest.raises(Defer, match="another post of this account") as info:
        run(runtime, post)
    assert time.monotonic() - started < 2.0  # no wait inside the job (it used to wait up to 5 s)
    assert 0 < info.value.delay <= BUSY_DEFER * 1.25
    stored = service.get(post.id)
    assert (stored.status, stored.attempts) == ("scheduled", 0)
    assert webhook.requests == []
    # A lock about to end is waited out for no longer than it has left.
    runtime.limiter.release(account.id, "other")
    assert runtime.limiter.acquire(account.id, Limit(0, 0), request="other", token="other", lease=0.2).ok
    with pytest.raises(Defer) as info:
        run(runtime, post)
    assert info.value.delay <= 0.2 * 1.25
    runtime.limiter.release(account.id, "other")
    assert run(runtime, post)["status"] == "published"
    assert service.get(post.id).attempts == 1
    assert len(webhook.accepted) == 1


@pytest.mark.slow
def test_a_worker_defers_a_busy_accounts_post_and_publishes_it_once_free(
    service, accounts, webhook, procs, posts_env, posts_tq, runtime
):
    account = accounts.webhook(webhook)
    assert runtime.limiter.acquire(account.id, Limit(0, 0), request="other", token="other", lease=120).ok
    post = schedule(service, account, "after the other", publish_now=True, at=None)
    worker = procs.worker(env=posts_env)
    # The job ran, found the account busy and went back to the schedule: no failure, no attempt.
    wait_for(
        lambda: (
            "deferred" in procs.log(worker) and posts_tq.get_job_status(post.job_id)["status"] == "scheduled"
        ),
        60,  # a loaded machine may take a while to start the worker
        what="the job to be deferred",
    )
    assert service.get(post.id).attempts == 0
    assert webhook.requests == []
    runtime.limiter.release(account.id, "other")
    wait_for(lambda: service.get(post.id).status == "published", 60, what="the post to be published")
    assert len(webhook.accepted) == 1
    assert service.get(post.id).attempts == 1


def test_the_task_runs_directly_and_shares_the_loops_clients(
    service, accounts, webhook, posts_env, monkeypatch
):
    # The guide's "test the job function directly", and what a worker running every async job
    # on one loop does: several posts in flight, one runtime and the loop's clients for all of
    # them (one per account's shard).
    import zlib

    from atomq.features.posts.publishers.clients import SHARDS
    from atomq.features.posts.runtime import from_environment
    from atomq.features.posts.tasks import process_scheduled_post

    for name, value in posts_env.items():
        monkeypatch.setenv(name, value)
    posts = [schedule(service, accounts.webhook(webhook, handle=f"hook-{i}"), f"post {i}") for i in range(3)]

    async def worker_loop():
        results = await asyncio.gather(
            *(process_scheduled_post(post_id=p.id, user_id=p.user_id) for p in posts)
        )
        return results, len(from_environment().clients)

    runtime = from_environment()
    try:
        results, clients = asyncio.run(worker_loop())
        assert [r["status"] for r in results] == ["published"] * 3
        assert clients == len({zlib.crc32(p.account_id.encode()) % SHARDS for p in posts})
        assert len(webhook.accepted) == 3
        assert len(runtime.clients) == 0  # closed with the loop
    finally:  # the process keeps its runtime; this test's database and Redis go away
        runtime.database.dispose()
        runtime.connection.close()


def test_each_key_keeps_its_client_and_a_loop_has_at_most_shards_clients():
    import httpx

    from atomq.features.posts.publishers.clients import SHARDS, LoopClients

    clients = LoopClients(httpx.AsyncClient)

    async def use() -> tuple[bool, int]:
        same = await clients.get("account-1") is await clients.get("account-1")
        for i in range(100):
            await clients.get(f"account-{i}")
        return same, len(clients)

    same, made = asyncio.run(use())
    assert same
    assert 1 < made <= SHARDS  # a hundred accounts spread over the shards, never more
    assert len(clients) == 0  # all closed with their loop


def test_a_loop_closed_without_shutting_down_has_its_client_forgotten():
    import httpx

    from atomq.features.posts.publishers.clients import LoopClients

    clients = LoopClients(httpx.AsyncClient)
    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(clients.get())
        assert loop.run_until_complete(clients.get()) is first
        assert len(clients) == 1
    finally:
        loop.close()  # no shutdown_asyncgens: nothing closed the client on its loop
    assert len(clients) == 0  # forgotten, not handed to the next loop
    second = asyncio.run(clients.get())
    assert second is not first and second.is_closed


def test_a_workers_warm_up_builds_the_runtime_its_posts_then_use(
    service, accounts, webhook, posts_env, connection, monkeypatch
):
    # What a worker serving social_media calls before its first job: the runtime for its
    # connection, every client of its loop, a pooled database connection per database thread.
    from atomq.features.posts import attempts
    from atomq.features.posts.offloop import threads
    from atomq.features.posts.publishers.clients import SHARDS
    from atomq.features.posts.publishing import publish_post_async
    from atomq.features.posts.runtime import from_environment, warm_up

    for name, value in posts_env.items():
        monkeypatch.setenv(name, value)
    post = schedule(service, accounts.webhook(webhook), "due at 9:00")

    async def worker_loop():
        await warm_up(connection)
        runtime = from_environment(connection)
        warmed = (len(runtime.clients), runtime.database.engine.pool.checkedin())
        # ...and the batched claims and records compiled, for every size a step may take.
        compiled = {
            name: sorted(size for dialect, size in change._sized if dialect == runtime.database.dialect)
            for name, change in (("claim", attempts._CLAIM_SCHEDULED), ("record", attempts._FINISH_PUBLISHED))
        }
        result = await publish_post_async(runtime, post.id, post.user_id)
        return runtime, warmed, compiled, result, len(runtime.clients)

    runtime, warmed, compiled, result, clients = asyncio.run(worker_loop())
    try:
        assert warmed == (SHARDS, threads(runtime.step_pool))
        assert compiled == {"claim": [2, 4, 8, 16, 32, 64], "record": [2, 4, 8, 16, 32, 64]}
        assert threads(runtime.step_pool) == (1 if runtime.database.dialect == "sqlite" else 2)
        assert result["status"] == "published"
        assert clients == SHARDS  # the post used a client the warm-up made
        assert from_environment(connection) is runtime
    finally:  # the process keeps its runtime; this test's database goes away
        runtime.database.dispose()


def test_calls_made_while_the_pool_is_busy_run_together_and_each_gets_its_own_answer():
    import threading

    from atomq.features.posts.offloop import Batches

    batches_seen: list[list[int]] = []
    first_running, let_go = threading.Event(), threading.Event()

    def run_many(items: list[int]) -> list[int | Exception]:
        batches_seen.append(list(items))
        if len(batches_seen) == 1:
            first_running.set()
            let_go.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    # One thread: one batch at a time, of at most 3 (the caller gone does not count).
    batches = Batches(run_many, "sqlite", limit=3)

    async def main():
        first = asyncio.ensure_future(batches(0))
        await asyncio.get_running_loop().run_in_executor(None, first_running.wait, 10)
        later = [asyncio.ensure_future(batches(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five wait for the next batch
        later[1].cancel()  # a caller gone (a time limit) before its batch: its item is left out
        await asyncio.sleep(0)
        let_go.set()
        return await asyncio.gather(first, *later, return_exceptions=True)

    results = asyncio.run(main())
    assert batches_seen == [[0], [1, 3, 4], [5]]
    assert results[0] == 0
    assert [str(r) for r in results[1:]] == ["odd 1", "", "odd 3", "40", "odd 5"]
    assert isinstance(results[2], asyncio.CancelledError)
