"""atomq.aio: the task queue's methods as coroutines over redis.asyncio, sharing the sync
API's checks and job layout; concurrent enqueues share round trips; nothing blocks the loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from atomq import aio
from atomq.core import keys
from atomq.core.errors import (
    AtomqError,
    DuplicateJobError,
    InvalidJobOptionError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    RedisUnavailableError,
    WaitTimeoutError,
)
from atomq.core.settings import load_settings
from atomq.engine.aio_queue import AsyncTaskQueue
from atomq.features.batches.progress import batch_progress
from testkit.support import free_port, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def atq(settings) -> AsyncTaskQueue:
    return AsyncTaskQueue(settings=settings)


def run(atq: AsyncTaskQueue, coroutine):
    """Run ``coroutine`` in a fresh event loop, closing the queue's client for that loop."""

    async def main():
        try:
            return await coroutine
        finally:
            await atq.aclose()

    return asyncio.run(main())


def fields(connection, job_id):
    return set(connection.hgetall(keys.job_key(job_id)))


def evalshas(connection) -> int:
    return connection.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_the_module_offers_the_task_queue_and_its_methods():
    for name in (
        "enqueue",
        "enqueue_in",
        "enqueue_at",
        "enqueue_many",
        "enqueue_batch",
        "get_job_status",
        "cancel_job",
        "wait",
    ):
        assert asyncio.iscoroutinefunction(getattr(aio.task_queue, name)), name
    assert isinstance(aio.task_queue, AsyncTaskQueue)


def test_async_enqueues_write_what_the_sync_ones_write(atq, tq, connection):
    due = datetime.now(UTC) + timedelta(minutes=10)

    async def main():
        now = await atq.enqueue("add", a=1, b=2, job_id="async-now")
        later = await atq.enqueue_in(timedelta(minutes=5), "add", a=1, b=2)
        at = await atq.enqueue_at(due, "echo", value=[1, 2])
        return now, later, at, await atq.get_job_status(now.id)

    now, later, at, status = run(atq, main())
    sync_now = tq.enqueue("add", a=1, b=2, job_id="sync-now")
    sync_later = tq.enqueue_in(timedelta(minutes=5), "add", a=1, b=2)
    assert fields(connection, now.id) == fields(connection, sync_now.id)
    assert fields(connection, later.id) == fields(connection, sync_later.id)
    assert (now.id, now.task, now.queue, now.status) == ("async-now", "add", "default", "queued")
    assert (later.status, at.status, at.queue) == ("scheduled", "scheduled", "high_priority")
    assert at.due_at == due
    assert connection.zscore(keys.scheduled_key("high_priority"), at.id) == pytest.approx(due.timestamp())
    assert status == tq.get_job_status(now.id)
    assert status["status"] == "queued" and status["job_id"] == "async-now"


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda q: q.enqueue("nope"), "unknown_task"),
        (lambda q: q.enqueue("add", a=1), "invalid_arguments"),
        (lambda q: q.enqueue("add", a=1, b=2, queue="bad queue"), "invalid_option"),
        (lambda q: q.enqueue("add", a=1, b=2, job_id="batch_x-1"), "invalid_option"),
        (lambda q: q.enqueue_in(-5, "add", a=1, b=2), "invalid_option"),
        (lambda q: q.enqueue("add", a=1, b=2, replace=True), "invalid_option"),
    ],
)
def test_bad_calls_are_refused_with_the_sync_apis_errors(atq, tq, connection, call, kind):
    with pytest.raises(AtomqError) as async_error:
        run(atq, call(atq))
    with pytest.raises(AtomqError) as sync_error:
        call(tq)
    assert async_error.value.code == sync_error.value.code == kind
    assert (async_error.value.message, async_error.value.field) == (
        sync_error.value.message,
        sync_error.value.field,
    )
    assert connection.dbsize() == 0


def test_concurrent_enqueues_share_round_trips_and_fail_alone(atq, connection):
    run(atq, atq.enqueue("add", a=0, b=0, job_id="taken"))
    before = evalshas(connection)

    async def main():
        calls = [atq.enqueue("add", a=i, b=i) for i in range(100)]
        calls.insert(50, atq.enqueue("add", a=1, b=1, job_id="taken"))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(atq, main())
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], DuplicateJobError)
    jobs = [r for r in results if not isinstance(r, BaseException)]
    assert len({job.id for job in jobs}) == 100
    assert connection.llen(keys.queue_key("default")) == 101
    assert evalshas(connection) - before < 20, "100 concurrent enqueues took nearly as many round trips"


def test_enqueue_many_and_batches_then_workers_run_them(atq, tq, connection, burst):
    async def main():
        many = await atq.enqueue_many([("add", {"a": i, "b": 1}) for i in range(5)])
        batch = await atq.enqueue_batch("add", [{"a": i, "b": 2} for i in range(7)], chunk_size=3)
        return many, batch

    many, batch = run(atq, main())
    assert [job.status for job in many] == ["queued"] * 5
    burst()
    assert [tq.get_job_status(job.id)["result"] for job in many] == [1, 2, 3, 4, 5]
    progress = batch_progress(connection, batch.id)
    assert (progress.total, progress.finished) == (7, 7)
    with pytest.raises(DuplicateJobError):
        run(atq, atq.enqueue_batch("add", [{"a": 1, "b": 1}], batch_id=batch.id))


def test_wait_and_cancel_with_a_real_worker(atq, tq, procs, connection):
    procs.worker("--no-scheduler")
    wait_for(lambda: connection.scard("rq:workers"), 20, what="worker registration")

    async def main():
        added = await atq.enqueue("add", a=2, b=3)
        failing = await atq.enqueue("fail", message="no luck")
        value = await atq.wait(added.id, timeout=30)
        with pytest.raises(JobFailedError) as failed:
            await atq.wait(failing.id, timeout=30)
        later = await atq.enqueue_in(600, "add", a=1, b=1)
        canceled = await atq.cancel_job(later.id)
        with pytest.raises(JobStateError):
            await atq.cancel_job(later.id)
        slow = await atq.enqueue("sleep_for", seconds=30)
        await wait_until_started(atq, slow.id)
        stopped = await atq.cancel_job(slow.id, wait=10)
        with pytest.raises(WaitTimeoutError):
            await atq.wait((await atq.enqueue("sleep_for", seconds=5)).id, timeout=0.2)
        with pytest.raises(JobNotFoundError):
            await atq.get_job_status("missing-job")
        return value, failed.value, canceled, stopped

    value, failed, canceled, stopped = run(atq, main())
    assert value == 5
    assert failed.status == "failed" and failed.error == "ValueError: no luck"
    assert canceled["status"] == "canceled"
    assert stopped["status"] == "stopped"


async def wait_until_started(atq, job_id):
    for _ in range(400):
        if (await atq.get_job_status(job_id))["status"] == "started":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never started")


def test_waiting_never_blocks_the_event_loop(atq, procs, connection):
    procs.worker("--no-scheduler")
    wait_for(lambda: connection.scard("rq:workers"), 20, what="worker registration")
    ticks = []

    async def ticker(stop):
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        job = await atq.enqueue("sleep_for", seconds=3.0)
        value = await atq.wait(job.id, timeout=30)
        stop.set()
        await task
        return value

    assert run(atq, main()) == 3.0
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    # A wait that blocked the loop would leave one gap as long as the job (3 s); a loaded
    # machine only stretches the 20 ms ticks a little.
    assert len(ticks) > 10
    assert max(gaps) < 1.5, "the loop stalled while waiting"


def test_each_event_loop_gets_its_own_client(atq, connection):
    first = run(atq, atq.enqueue("add", a=1, b=1))
    second = run(atq, atq.enqueue("add", a=2, b=2))  # a new loop: the first one's client is unusable
    assert connection.llen(keys.queue_key("default")) == 2
    assert first.id != second.id


def test_redis_away_is_reported_as_unavailable(tmp_path):
    settings = load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", task_modules=["tests.jobs"])
    atq = AsyncTaskQueue(settings=settings)
    with pytest.raises(RedisUnavailableError) as caught:
        run(atq, atq.enqueue("add", a=1, b=1))
    assert "127.0.0.1" in str(caught.value)
    with pytest.raises(RedisUnavailableError):
        run(atq, atq.get_job_status("some-job"))
    with pytest.raises(InvalidJobOptionError):
        run(atq, atq.enqueue("add", a=1, b=1, timeout=-1))


def test_a_call_redis_cannot_take_fails_alone_among_concurrent_ones(atq, connection):
    async def main():
        calls = [atq.enqueue("add", a=i, b=i) for i in range(20)]
        calls.insert(7, atq.enqueue("add", a=1, b=1, description="bad \ud800 text"))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(atq, main())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and results.index(failed[0]) == 7
    assert connection.llen(keys.queue_key("default")) == 20
