"""The scheduler: atomic moves, several schedulers at once, leadership, periodic work, reaping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from atomq.core import keys
from atomq.engine import plugins
from atomq.engine.periodic import PeriodicRunner, registered
from atomq.engine.plugins import Context, periodic
from atomq.engine.recovery import recover_worker
from atomq.engine.scheduler import Scheduler, leader
from testkit.support import wait_for


def test_tick_moves_only_due_jobs_and_reports_the_next(tq, connection):
    due = tq.enqueue_at(datetime.now(UTC) - timedelta(seconds=0), "add", a=1, b=1)
    assert tq.get_job_status(due.id)["status"] == "queued"  # past: queued at once
    soon = tq.enqueue_in(0.2, "add", a=1, b=1)
    later = tq.enqueue_in(3600, "add", a=1, b=1)
    scheduler = Scheduler(connection)
    first = scheduler.tick()
    assert first.moved == 0
    assert abs(first.next_due - (time.time() + 0.2)) < 0.2
    time.sleep(0.25)
    second = scheduler.tick()
    assert second.moved == 1
    assert tq.get_job_status(soon.id)["status"] == "queued"
    assert tq.get_job_status(later.id)["status"] == "scheduled"
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [due.id.encode(), soon.id.encode()]


def test_three_schedulers_enqueue_every_job_exactly_once(tq, connection, settings):
    start = time.time() + 0.5
    jobs = [
        tq.enqueue_at(
            datetime.fromtimestamp(start + i * 0.005, UTC),
            "add",
            a=i,
            b=0,
            queue=("default", "workflows")[i % 2],
        )
        for i in range(300)
    ]
    schedulers = [
        Scheduler(connection.__class__.from_url(settings.redis_url), name=f"s{i}") for i in range(3)
    ]

    def hammer(scheduler: Scheduler) -> None:
        deadline = time.time() + 3
        while time.time() < deadline:
            scheduler.tick()  # all three move at once, whatever the lease says

    threads = [threading.Thread(target=hammer, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = connection.lrange(keys.queue_key("default"), 0, -1) + connection.lrange(
        keys.queue_key("workflows"), 0, -1
    )
    assert len(queued) == len(set(queued)) == 300
    assert {job.id.encode() for job in jobs} == set(queued)


def test_no_job_is_moved_before_it_is_due(tq, connection):
    when = datetime.now(UTC) + timedelta(milliseconds=300)
    job = tq.enqueue_at(when, "add", a=1, b=1)
    scheduler = Scheduler(connection)
    while True:
        result = scheduler.tick()
        if result.moved:
            break
    assert datetime.now(UTC) >= when
    assert tq.get_job_status(job.id)["status"] == "queued"


def test_one_leader_at_a_time_and_standby_takes_over(connection):
    first, second = Scheduler(connection, name="first"), Scheduler(connection, name="second")
    threads = [threading.Thread(target=s.run) for s in (first, second)]
    threads[0].start()
    wait_for(lambda: leader(connection) == "first", 5)
    threads[1].start()
    time.sleep(0.3)
    assert first.is_leader and not second.is_leader
    first.stop()
    threads[0].join(10)
    wait_for(lambda: leader(connection) == "second", 10, what="the standby to take over")
    second.stop()
    threads[1].join(10)
    assert leader(connection) is None


def test_periodic_functions_run_only_on_the_leader(settings, connection):
    calls: list[str] = []

    @periodic("test.record", interval=0.1)
    def record(ctx: Context) -> None:
        calls.append(ctx.settings.redis_url or "")

    try:
        assert "test.record" in [p.name for p in registered()]
        leading = {"value": False}
        runner = PeriodicRunner(Context(settings, connection), lambda: leading["value"])
        runner.start()
        time.sleep(0.3)
        assert calls == []
        leading["value"] = True
        wait_for(lambda: len(calls) >= 2, 5)
        runner.stop()
        assert calls[0] == settings.redis_url
    finally:
        plugins.registry.periodic.pop("test.record", None)


def test_reaper_recovers_jobs_of_a_vanished_worker(tq, connection):
    job = tq.enqueue("add", a=1, b=1)
    # A worker claimed the job and vanished: its claimed list remains, its hash is gone.
    connection.lmove(keys.queue_key("default"), keys.claimed_key("ghost"), "LEFT", "RIGHT")
    connection.sadd(keys.WORKERS_SET, "ghost")
    Scheduler(connection).reap()
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [job.id.encode()]
    assert not connection.sismember(keys.WORKERS_SET, "ghost")
    assert recover_worker(connection, "ghost", "again").anything is False


def test_a_burst_falling_due_wakes_as_many_idle_workers_as_it_has_jobs(tq, connection):
    # A token wakes one idle worker (BLPOP): 400 posts due at 9:00 must wake every worker at
    # once, not one while the others sleep out their poll. Tokens are capped (16 kept).
    due = datetime.now(UTC) + timedelta(seconds=0.2)
    for i in range(3):
        tq.enqueue_at(due, "add", a=i, b=1)
    for i in range(30):
        tq.enqueue_at(due, "echo", value=i)  # echo's queue is high_priority
    time.sleep(0.25)
    assert Scheduler(connection).tick().moved == 33
    assert connection.llen(keys.wake_key("default")) == 3
    assert connection.llen(keys.wake_key("high_priority")) == 16


def test_enqueue_many_and_batches_wake_as_many_idle_workers_as_they_queue(tq, connection):
    tq.enqueue_many([("add", {"a": i, "b": 1}) for i in range(5)])
    assert connection.llen(keys.wake_key("default")) == 5
    tq.enqueue_batch("add", [{"a": i, "b": 1} for i in range(40)])
    assert connection.llen(keys.wake_key("default")) == 16
