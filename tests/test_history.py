"""Per-minute history (issue 15): written with the job ends, one command per pipeline, read back."""

from __future__ import annotations

import time

import pytest

from atomq.engine import history, stats
from atomq.engine.periodic import PeriodicRunner
from atomq.engine.plugins import Context


def read(connection, queues, range_name="1h"):
    return history.read(connection, queues, range_name=range_name)


@pytest.mark.timeout(60)
def test_job_ends_by_real_workers_land_in_this_minutes_history(wclass_any, tq, burst, connection, tmp_path):
    for i in range(3):
        tq.enqueue("add", a=i, b=1)
    tq.enqueue("fail", message="expected")
    tq.enqueue("count_attempts", path=str(tmp_path / "attempts"), fail_times=1, retry=1)
    tq.enqueue("echo", value="hi")  # high_priority
    burst("--worker-class", wclass_any)
    minute = int(time.time() // 60)
    raw = {}
    for m in (minute - 1, minute):  # the burst may straddle a minute boundary
        for k, v in connection.hgetall(history.minute_key("default", m)).items():
            raw[k.decode()] = raw.get(k.decode(), 0) + float(v)
    assert raw["f"] == 3 and raw["x"] == 1 and raw["r"] == 1
    assert sum(v for k, v in raw.items() if k.startswith("d") and k != "ds") == 5  # every timed run
    ttl = connection.ttl(history.minute_key("default", minute))
    assert history.DEFAULT_RETENTION_SECONDS - 60 < ttl <= history.DEFAULT_RETENTION_SECONDS

    points = read(connection, ["default", "high_priority"])
    assert len(points.t) == 60 and points.step == 60
    assert sum(points.series["finished"]) == 4  # 3 adds + the echo
    assert sum(points.series["failed"]) == 1 and sum(points.series["retried"]) == 1
    assert max(v for v in points.series["duration_avg"] if v is not None) > 0
    only_high = read(connection, ["high_priority"])
    assert sum(only_high.series["finished"]) == 1


@pytest.fixture(params=["fast", "rq"])
def wclass_any(request):
    return request.param


@pytest.mark.timeout(20)
def test_a_batch_of_job_ends_costs_one_command_whatever_its_size(connection):
    tally = stats.Tally()
    for i in range(500):
        tally.add(queue=("a", "b", "c")[i % 3], task="t", outcome="finished", duration=0.001 * i, late=0.01)
    with connection.pipeline() as pipe:
        before = stats.Tally()
        for i in range(500):
            before.add(queue=("a", "b", "c")[i % 3], task="t", outcome="finished", duration=0.001 * i)
        before.minute = history.HistoryTally()  # nothing for the history
        before.write(pipe)
        without = len(pipe.command_stack)
    with connection.pipeline() as pipe:
        tally.write(pipe)
        with_late = len(pipe.command_stack)
        pipe.execute()
    # The lateness histogram adds its own (pre-existing) commands; the history adds exactly one.
    lateness_commands = 3 + 3  # one bucket and one sum per (queue, task)
    assert with_late == without + lateness_commands + 1
    points = read(connection, ["a", "b", "c"])
    assert sum(points.series["finished"]) == 500


@pytest.mark.timeout(30)
def test_depth_is_sampled_by_the_leader_with_the_configured_retention(tq, settings, connection):
    for _ in range(7):
        tq.enqueue("add", a=1, b=1)
    tq.enqueue("echo", value=1)
    custom = settings.model_copy(update={"history_retention_seconds": 7200})
    runner = PeriodicRunner(Context(settings=custom, connection=connection), is_leader=lambda: True)
    assert "history.sample" in [p.name for p in runner.jobs]
    runner.run_due()
    minute = int(time.time() // 60)
    assert connection.hget(history.minute_key("default", minute), "q") == b"7"
    assert 7000 < connection.ttl(history.minute_key("default", minute)) <= 7200
    points = read(connection, ["default", "high_priority"])
    assert points.series["queued"][-1] == 8 and points.series["queued"][0] is None
    # Workers now use the configured retention too.
    stats.record_job_end(connection, queue="default", task="add", outcome="finished", duration=0.1)
    assert 7000 < connection.ttl(history.minute_key("default", int(time.time() // 60))) <= 7200


@pytest.mark.timeout(10)
def test_quantile_interpolates_inside_the_bucket():
    bounds = (0.1, 1.0, 10.0)  # any bounds: the function is the same for the history's own
    assert history.quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(0.55)
    assert history.quantile(0.95, [0, 0, 0, 4], bounds) == 10.0  # +Inf bucket: the last bound
    assert history.quantile(0.95, [0, 0, 0, 0], bounds) is None


@pytest.mark.timeout(20)
def test_longer_ranges_sum_minutes_into_points(connection):
    now = time.time()
    for minutes_ago in (0, 5, 200):
        tally = history.HistoryTally()
        for _ in range(30):
            tally.add(
                queue="q1",
                outcome="finished",
                duration=None,
                late=None,
            )
        tally.write(connection, now=now - minutes_ago * 60)
    hour = read(connection, ["q1"], "1h")
    assert sum(hour.series["finished"]) == 60  # per minute, 1-minute points: 30 + 30
    six = read(connection, ["q1"], "6h")
    assert six.step == 300 and len(six.t) == 72
    assert sum(six.series["finished"]) * 5 == 90  # per-minute rates over 5-minute points
    day = read(connection, ["q1"], "24h")
    assert day.step == 900 and len(day.t) == 96


@pytest.mark.timeout(30)
def test_the_stats_endpoint_returns_the_series_and_checks_its_input(settings, connection, tq, tmp_path):
    from testkit.api import api_client, auth

    tq.enqueue("add", a=1, b=2)  # makes "default" a known queue
    stats.record_job_end(connection, queue="default", task="add", outcome="finished", duration=0.2)
    stats.record_job_end(connection, queue="default", task="add", outcome="failed", duration=0.4)
    with api_client(settings, connection, tmp_path) as client:
        body = client.get("/api/v1/tasks/stats?range=1h", headers=auth("read")).json()
        assert body["range"] == "1h" and body["step"] == 60 and len(body["t"]) == 60
        assert set(body["series"]) == set(history.SERIES)
        assert sum(body["series"]["finished"]) == 1 and sum(body["series"]["failed"]) == 1
        assert body["series"]["duration_avg"][-1] == pytest.approx(0.3)
        one = client.get("/api/v1/tasks/stats?range=6h&queue=default", headers=auth("read")).json()
        assert one["queues"] == ["default"] and one["step"] == 300
        bad = client.get("/api/v1/tasks/stats?range=2d", headers=auth("read"))
        assert bad.status_code == 422 and "range" in bad.text
        missing = client.get("/api/v1/tasks/stats?queue=nope", headers=auth("read"))
        assert missing.status_code == 404 and "queue" in missing.text
        assert client.get("/api/v1/tasks/stats").status_code == 401
