"""``/metrics``: values after a known set of jobs run by real workers, access, extra collectors."""

from __future__ import annotations

import time

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from atomq.core import keys
from atomq.engine import plugins
from atomq.engine.periodic import PeriodicRunner
from atomq.engine.plugins import Context, Periodic
from atomq.ops import metrics
from testkit.api import api_client, auth


@pytest.fixture
def client(settings, connection, tmp_path):
    with api_client(settings, connection, tmp_path, metrics_cache_seconds=0) as c:
        yield c


def scrape(client, headers=None):
    response = client.get("/metrics", headers=auth("read") if headers is None else headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def test_metrics_after_a_known_set_of_jobs(client, tq, burst, connection, tmp_path):
    for i in range(3):
        tq.enqueue("add", a=i, b=1)
    tq.enqueue("fail", message="expected")
    tq.enqueue("echo", value="hi")  # high_priority
    tq.enqueue("count_attempts", path=str(tmp_path / "attempts"), fail_times=1, retry=1)
    tq.enqueue_in(0.3, "add", a=9, b=9)
    burst()
    time.sleep(1.6)  # the retry is due after ~1 s, the scheduled job after 0.3 s
    burst()
    s = scrape(client)

    assert value(s, "atomq_jobs_finished_total", queue="default", task="add") == 4
    assert value(s, "atomq_jobs_finished_total", queue="high_priority", task="echo") == 1
    assert value(s, "atomq_jobs_finished_total", queue="default", task="count_attempts") == 1
    assert value(s, "atomq_jobs_retried_total", queue="default", task="count_attempts") == 1
    assert value(s, "atomq_jobs_failed_total", queue="default", task="fail") == 1
    # Registered tasks are reported from 0 on their own queue, so rate() sees the first failure.
    assert value(s, "atomq_jobs_failed_total", queue="default", task="add") == 0
    assert value(s, "atomq_jobs_stopped_total", queue="default", task="add") == 0
    assert value(s, "atomq_jobs_failed_total", queue="social_media", task="publish_post") == 0
    assert value(s, "atomq_jobs_failed_total", queue="social_media", task="add") is None

    assert value(s, "atomq_job_duration_seconds_count", queue="default", task="add") == 4
    assert value(s, "atomq_job_duration_seconds_count", queue="default", task="count_attempts") == 2
    assert value(s, "atomq_job_duration_seconds_count", queue="default", task="fail") == 1
    assert 0 < value(s, "atomq_job_duration_seconds_sum", queue="default", task="add") < 20
    assert value(s, "atomq_job_duration_seconds_bucket", queue="default", task="add", le="+Inf") == 4

    # Lateness, per queue: the job scheduled 0.3 s ahead and the count_attempts retry
    # (never early, so above zero).
    assert value(s, "atomq_job_schedule_lateness_seconds_count", queue="default") == 2
    assert 0 < value(s, "atomq_job_schedule_lateness_seconds_sum", queue="default") < 60
    assert value(s, "atomq_job_schedule_lateness_seconds_bucket", queue="default", le="+Inf") == 2
    assert value(s, "atomq_job_schedule_lateness_seconds_bucket", queue="default", le="0.01") == 0
    assert value(s, "atomq_job_schedule_lateness_seconds_count", queue="high_priority") is None

    assert value(s, "atomq_queue_jobs", queue="default", status="finished") == 5
    assert value(s, "atomq_queue_jobs", queue="default", status="failed") == 1
    assert value(s, "atomq_queue_jobs", queue="default", status="queued") == 0
    assert value(s, "atomq_queue_oldest_job_age_seconds", queue="default") == 0

    # Registries forget (results expire, queues get emptied); the counters must not.
    connection.delete("rq:finished:default", "rq:failed:default")
    for key in connection.keys("rq:job:*"):
        connection.delete(key)
    again = scrape(client)
    assert value(again, "atomq_queue_jobs", queue="default", status="finished") == 0
    assert value(again, "atomq_jobs_finished_total", queue="default", task="add") == 4
    assert value(again, "atomq_jobs_failed_total", queue="default", task="fail") == 1


def test_queue_worker_and_leader_gauges(client, tq, connection):
    tq.enqueue("add", a=1, b=1)
    tq.enqueue("add", a=1, b=1)
    tq.enqueue_in(0.05, "add", a=1, b=1)
    tq.enqueue_in(3600, "add", a=1, b=1)
    time.sleep(0.3)
    s = scrape(client)
    assert value(s, "atomq_queue_jobs", queue="default", status="queued") == 2
    assert value(s, "atomq_queue_jobs", queue="default", status="scheduled") == 2
    assert value(s, "atomq_queue_scheduled_due_jobs", queue="default") == 1
    assert value(s, "atomq_queue_scheduled_due_jobs", queue="social_media") == 0
    assert value(s, "atomq_queue_oldest_job_age_seconds", queue="default") >= 0.2
    assert value(s, "atomq_queue_workers", queue="default") == 0
    assert value(s, "atomq_workers", state="idle") == 0 and value(s, "atomq_workers", state="busy") == 0
    assert value(s, "atomq_leader_present", role="scheduler") == 0
    assert value(s, "atomq_leader_present", role="reconciler") == 0
    assert value(s, "atomq_schedulers") == 0
    assert value(s, "atomq_build_info", version=_version()) == 1
    connection.set(keys.SCHEDULER_LEADER, "sched-1", px=10_000)
    connection.hset(keys.SCHEDULERS, "sched-1", "host 1 now")
    s = scrape(client)
    assert value(s, "atomq_leader_present", role="scheduler") == 1
    assert value(s, "atomq_schedulers") == 1


def _version():
    from importlib.metadata import version

    return version("atomq")


def test_periodic_runs_are_reported(client, settings, connection):
    def good(ctx):
        return None

    def bad(ctx):
        raise RuntimeError("reconciler broke")

    runner = PeriodicRunner(
        Context(settings, connection),
        lambda: True,
        jobs=[Periodic("posts.reconcile", good, 60), Periodic("flows.resume", bad, 60)],
    )
    before = time.time()
    runner.run_due()
    s = scrape(client)
    assert value(s, "atomq_periodic_last_success_timestamp_seconds", name="posts.reconcile") >= before - 1
    assert value(s, "atomq_periodic_failures_total", name="flows.resume") == 1
    assert value(s, "atomq_periodic_last_success_timestamp_seconds", name="flows.resume") is None


def test_extra_collectors_plug_in_and_fail_alone(client, monkeypatch):
    def widgets(ctx):
        gauge = GaugeMetricFamily("atomq_widgets", "Widgets by state.", labels=["state"])
        gauge.add_metric(["scheduled"], 7)
        yield gauge

    def broken(ctx):
        raise RuntimeError("database down")

    monkeypatch.setitem(plugins.registry.collectors, "widgets", widgets)
    monkeypatch.setitem(plugins.registry.collectors, "broken", broken)
    s = scrape(client)
    assert value(s, "atomq_widgets", state="scheduled") == 7
    assert value(s, "atomq_collector_up", collector="widgets") == 1
    assert value(s, "atomq_collector_up", collector="broken") == 0
    assert value(s, "atomq_queue_jobs", queue="default", status="queued") == 0


def test_a_failing_collector_logs_once_not_on_every_scrape(caplog, monkeypatch):
    calls = []

    def broken(ctx):
        calls.append(1)
        raise RuntimeError("no such table: scheduled_posts")

    monkeypatch.setitem(plugins.registry.collectors, "broken", broken)
    monkeypatch.setattr(metrics, "_failing_since", {})
    with caplog.at_level("INFO", logger="atomq.metrics"):
        for _ in range(5):
            metrics.extra_metrics(None)
    assert len(calls) == 5
    about_broken = [r for r in caplog.records if "collector broken" in r.getMessage()]
    assert len(about_broken) == 1
    assert about_broken[0].exc_info is not None


def test_a_rendering_is_reused_for_the_cache_period(settings, connection, tmp_path, tq):
    with api_client(settings, connection, tmp_path, metrics_cache_seconds=0.5) as cached:
        first = scrape(cached)
        tq.enqueue("add", a=1, b=1)
        assert scrape(cached) == first
        time.sleep(0.6)
        assert value(scrape(cached), "atomq_queue_jobs", queue="default", status="queued") == 1


def test_queue_overview_matches_the_cli_counts(tq, connection, burst):
    from atomq.ops import monitor
    from atomq.ops.overview import queue_overview

    tq.enqueue("fail")
    tq.enqueue("add", a=1, b=1, queue="custom")
    burst("default")
    tq.enqueue("add", a=1, b=1)
    tq.enqueue_in(600, "add", a=1, b=1)
    configured = ["high_priority", "default"]
    overview = queue_overview(connection, configured)
    names = monitor.known_queues(connection, configured)
    assert [q.name for q in overview.queues] == names == ["high_priority", "default", "custom"]
    for ours, theirs in zip(overview.queues, monitor.queue_stats(connection, names), strict=True):
        assert ours.oldest_queued_age == pytest.approx(theirs.oldest_queued_age, abs=1)
        ours.oldest_queued_age = theirs.oldest_queued_age = None
        assert ours == theirs
    assert overview.scheduled_due == {"high_priority": 0, "default": 0, "custom": 0}


def test_metrics_are_503_while_redis_is_unreachable(settings, tmp_path):
    import redis

    from testkit.support import free_port

    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with api_client(settings, unreachable, tmp_path) as client:
        response = client.get("/metrics", headers=auth("read"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "redis_unavailable"
        assert response.headers["retry-after"] == "5"


def test_metrics_need_a_read_token_unless_made_public(client, settings, connection, tmp_path):
    assert client.get("/metrics").status_code == 401
    with api_client(settings, connection, tmp_path, metrics_public=True) as public:
        assert public.get("/metrics").status_code == 200
        assert public.get("/api/v1/tasks/queues").status_code == 401, "only /metrics becomes public"


def test_no_job_ids_in_labels(client, tq, burst):
    job = tq.enqueue("add", a=1, b=1)
    burst()
    text = client.get("/metrics", headers=auth("read")).text
    assert job.id not in text
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("atomq_"), family.name
        for sample in family.samples:
            assert not {"job_id", "id", "worker"} & set(sample.labels), sample


def test_a_job_killed_for_its_timeout_counts_as_failed_with_its_duration(client, tq, burst):
    tq.enqueue("sleep_for", seconds=30, timeout=1)
    burst()
    s = scrape(client)
    assert value(s, "atomq_jobs_failed_total", queue="default", task="sleep_for") == 1
    assert value(s, "atomq_jobs_finished_total", queue="default", task="sleep_for") == 0
    assert value(s, "atomq_job_duration_seconds_bucket", queue="default", task="sleep_for", le="0.5") == 0
    assert value(s, "atomq_job_duration_seconds_bucket", queue="default", task="sleep_for", le="5") == 1
