"""The task_queue API: every enqueue form, status, cancel, options and refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from rq.job import Job

from atomq import Call, Retry
from atomq.core import keys
from atomq.core.errors import (
    DuplicateJobError,
    InvalidJobOptionError,
    JobNotFoundError,
    JobStateError,
    TaskArgumentsError,
    UnknownTaskError,
)
from atomq.core.settings import load_settings
from atomq.engine.task_queue import TaskQueue
from testkit.support import GUIDE_STATUS_KEYS


def test_enqueue_runs_on_a_worker_and_reports_the_guides_status(tq, burst):
    job = tq.enqueue("add", a=2, b=3)
    queued = tq.get_job_status(job.id)
    assert list(queued) == GUIDE_STATUS_KEYS
    assert queued["status"] == "queued"
    assert queued["started_at"] is None and queued["result"] is None

    burst()

    status = tq.get_job_status(job.id)
    assert list(status) == GUIDE_STATUS_KEYS
    assert status["job_id"] == job.id
    assert status["status"] == "finished"
    assert status["result"] == 5
    assert status["error"] is None
    for field in ("created_at", "enqueued_at", "started_at", "ended_at"):
        parsed = datetime.fromisoformat(status[field])
        assert parsed.utcoffset() == timedelta(0), field
    assert status["created_at"] <= status["enqueued_at"] <= status["started_at"] <= status["ended_at"]


def test_enqueue_uses_the_task_queue_and_json(tq, connection):
    job = tq.enqueue("echo", value={"nested": [1, "two"]})
    assert job.origin == "high_priority"
    assert connection.lrange(keys.queue_key("high_priority"), 0, -1) == [job.id.encode()]
    raw = connection.hget(keys.job_key(job.id), "data")
    import json

    assert json.loads(raw) == ["echo", None, [], {"value": {"nested": [1, "two"]}}]


def test_failed_job_reports_error_summary(tq, burst):
    job = tq.enqueue("fail", message="bad post")
    burst()
    status = tq.get_job_status(job.id)
    assert status["status"] == "failed"
    assert status["error"] == "ValueError: bad post"
    assert status["result"] is None


def test_enqueue_in_schedules_with_sub_second_precision(tq, connection):
    before = datetime.now(UTC)
    job = tq.enqueue_in(timedelta(minutes=30, milliseconds=250), "add", a=1, b=1)
    assert tq.get_job_status(job.id)["status"] == "scheduled"
    score = connection.zscore(keys.scheduled_key("default"), job.id)
    expected = (before + timedelta(minutes=30, milliseconds=250)).timestamp()
    assert abs(score - expected) < 0.5
    assert score != int(score), "due times keep their fraction of a second"
    assert connection.llen(keys.queue_key("default")) == 0


def test_enqueue_at_reads_naive_times_in_the_configured_zone(redis_url, connection, tmp_path):
    settings = load_settings(redis_url=redis_url, task_modules=["tests.jobs"], timezone="Europe/Paris")
    tq = TaskQueue(settings=settings, connection=connection)
    job = tq.enqueue_at(datetime(2031, 7, 1, 14, 30), "add", a=1, b=2)
    score = connection.zscore(keys.scheduled_key("default"), job.id)
    assert score == datetime(2031, 7, 1, 12, 30, tzinfo=UTC).timestamp()  # CEST is UTC+2
    winter = tq.enqueue_at(datetime(2031, 1, 15, 14, 30), "add", a=1, b=2)
    assert (
        connection.zscore(keys.scheduled_key("default"), winter.id)
        == datetime(2031, 1, 15, 13, 30, tzinfo=UTC).timestamp()
    )


def test_enqueue_at_refuses_a_time_skipped_by_dst(redis_url, connection):
    settings = load_settings(redis_url=redis_url, task_modules=["tests.jobs"], timezone="Europe/Paris")
    tq = TaskQueue(settings=settings, connection=connection)
    with pytest.raises(InvalidJobOptionError, match="does not exist"):
        tq.enqueue_at(datetime(2031, 3, 30, 2, 30), "add", a=1, b=2)


def test_enqueue_at_keeps_aware_times(tq, connection):
    when = datetime(2031, 5, 4, 9, 0, 0, 500_000, tzinfo=ZoneInfo("America/New_York"))
    job = tq.enqueue_at(when, "add", a=1, b=2)
    assert connection.zscore(keys.scheduled_key("default"), job.id) == when.timestamp()


def test_guide_example_in_the_past_is_queued_at_once(tq, burst):
    job = tq.enqueue_at(datetime(2026, 2, 6, 14, 30), "add", a=20, b=22)
    assert tq.get_job_status(job.id)["status"] == "queued"
    burst()
    assert tq.get_job_status(job.id)["result"] == 42


def test_scheduled_jobs_run_when_due(tq, burst):
    import time

    due = time.time() + 3
    job = tq.enqueue_at(datetime.fromtimestamp(due, UTC), "add", a=1, b=1)
    burst()  # nothing due yet: the burst scheduler pass leaves it alone
    assert tq.get_job_status(job.id)["status"] == "scheduled"
    time.sleep(max(0, due - time.time()) + 0.05)
    burst()
    assert tq.get_job_status(job.id)["status"] == "finished"


def test_enqueue_many_queues_all_in_one_go(tq, connection, burst):
    jobs = tq.enqueue_many(
        [
            ("add", {"a": 1, "b": 2}),
            {"task": "add", "kwargs": {"a": 3, "b": 4}, "queue": "workflows"},
            Call("echo", kwargs={"value": "x"}, options={"at_front": True}),
        ]
    )
    assert [j.origin for j in jobs] == ["default", "workflows", "high_priority"]
    assert connection.llen(keys.queue_key("default")) == 1
    burst()
    assert [tq.get_job_status(j.id)["result"] for j in jobs] == [3, 7, "x"]


def test_enqueue_many_is_all_or_nothing(tq, connection):
    with pytest.raises(TaskArgumentsError, match="call 1"):
        tq.enqueue_many([("add", {"a": 1, "b": 2}), ("add", {"a": object(), "b": 1})])
    assert connection.llen(keys.queue_key("default")) == 0
    with pytest.raises(UnknownTaskError, match="call 0"):
        tq.enqueue_many([("nope", {})])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda tq: tq.enqueue("no_such_task"), UnknownTaskError, "no task is registered as 'no_such_task'"),
        (lambda tq: tq.enqueue("add", a=datetime.now(), b=1), TaskArgumentsError, "kwargs.a is a datetime"),
        (lambda tq: tq.enqueue("add", a={"x": {1, 2}}, b=1), TaskArgumentsError, r"kwargs.a.x is a set"),
        (lambda tq: tq.enqueue("add", a=float("nan"), b=1), TaskArgumentsError, "JSON cannot store"),
        (lambda tq: tq.enqueue("add", a=1), TaskArgumentsError, "missing a required argument: 'b'"),
        (lambda tq: tq.enqueue("add", a=1, b=2, c=3), TaskArgumentsError, "unexpected keyword argument 'c'"),
        (lambda tq: tq.enqueue("add", a=1, b=2, job_id="bad id!"), InvalidJobOptionError, "invalid job id"),
        (lambda tq: tq.enqueue("add", a=1, b=2, job_id="a:b"), InvalidJobOptionError, "invalid job id"),
        (lambda tq: tq.enqueue("add", a=1, b=2, job_id="x" * 200), InvalidJobOptionError, "invalid job id"),
        (
            lambda tq: tq.enqueue("add", a=1, b=2, queue="no spaces"),
            InvalidJobOptionError,
            "invalid queue name",
        ),
        (
            lambda tq: tq.enqueue("add", a=1, b=2, timeout=-5),
            InvalidJobOptionError,
            "timeout must be a positive",
        ),
        (lambda tq: tq.enqueue("add", a=1, b=2, retry="lots"), InvalidJobOptionError, "retry must be"),
        (lambda tq: tq.enqueue("add", a=1, b=2, meta=[1]), InvalidJobOptionError, "meta must be a dict"),
        (lambda tq: tq.enqueue("add", a=1, b=2, depends_on="missing-job"), JobNotFoundError, "missing-job"),
        (lambda tq: tq.enqueue_in(timedelta(seconds=-1), "add", a=1, b=2), InvalidJobOptionError, "negative"),
        (lambda tq: tq.enqueue_at("tomorrow", "add", a=1, b=2), InvalidJobOptionError, "must be a datetime"),
        (
            lambda tq: tq.enqueue("add", a="x" * 1_100_000, b=1),
            TaskArgumentsError,
            "over the 1000000-byte limit",
        ),
    ],
)
def test_bad_calls_are_refused_with_a_clear_error(tq, connection, call, error, message):
    with pytest.raises(error, match=message):
        call(tq)
    assert connection.keys("rq:job:*") == []


def test_a_task_parameter_named_like_an_option_needs_explicit_kwargs(tq, burst):
    with pytest.raises(TaskArgumentsError, match="pass the task's arguments as kwargs"):
        tq.enqueue("has_timeout_param", url="http://x", timeout=5)
    job = tq.enqueue("has_timeout_param", kwargs={"url": "http://x", "timeout": 5}, timeout=30)
    assert job.timeout == 30
    burst()
    assert tq.get_job_status(job.id)["result"] == {"url": "http://x", "timeout": 5}


def test_job_options_are_stored(tq, connection):
    first = tq.enqueue("add", a=1, b=1)
    job = tq.enqueue(
        "add", a=1, b=2, job_id="my-job_1", timeout=42, meta={"post_id": "post_123"}, at_front=True, retry=2
    )
    assert job.id == "my-job_1"
    assert connection.lindex(keys.queue_key("default"), 0) == b"my-job_1"
    assert connection.lindex(keys.queue_key("default"), 1) == first.id.encode()
    fetched = Job.fetch("my-job_1", connection=connection, serializer="json")
    assert fetched.timeout == 42
    assert fetched.meta == {"post_id": "post_123"}
    assert fetched.retries_left == 2
    assert len(fetched.retry_intervals) == 2


def test_unique_refuses_a_duplicate_id(tq):
    tq.enqueue("add", a=1, b=1, job_id="once", unique=True)
    with pytest.raises(DuplicateJobError, match="once"):
        tq.enqueue("add", a=1, b=1, job_id="once", unique=True)
    tq.enqueue_in(60, "add", a=1, b=1, job_id="once-later", unique=True)
    with pytest.raises(DuplicateJobError):
        tq.enqueue_in(60, "add", a=1, b=1, job_id="once-later", unique=True)
    with pytest.raises(InvalidJobOptionError, match="needs a job_id"):
        tq.enqueue("add", a=1, b=1, unique=True)


def test_unique_scheduled_job_keeps_its_exact_due_time(tq, connection):
    when = datetime(2031, 1, 1, 0, 0, 0, 750_000, tzinfo=UTC)
    tq.enqueue_at(when, "add", a=1, b=1, job_id="exact", unique=True)
    assert connection.zscore(keys.scheduled_key("default"), "exact") == when.timestamp()


def test_depends_on_defers_until_the_parent_finishes(tq, burst):
    parent = tq.enqueue("add", a=1, b=1)
    child = tq.enqueue("add", a=2, b=2, depends_on=parent)
    assert tq.get_job_status(child.id)["status"] == "deferred"
    burst()
    assert tq.get_job_status(parent.id)["status"] == "finished"
    burst()
    assert tq.get_job_status(child.id)["status"] == "finished"


def test_retry_policy_backs_off_exponentially():
    assert Retry(max=4, delay=1, backoff=2, jitter=0).intervals() == [1, 2, 4, 8]
    assert Retry(max=3, delay=10, backoff=10, max_delay=60, jitter=0).intervals() == [10, 60, 60]
    spread = Retry(max=1, delay=100, jitter=0.5).intervals()[0]
    assert 50 <= spread <= 150


def test_cancel_queued_job(tq, connection, burst, tmp_path):
    ledger = tmp_path / "ledger"
    job = tq.enqueue("record", path=str(ledger), key="k")
    status = tq.cancel_job(job.id)
    assert status["status"] == "canceled"
    assert connection.llen(keys.queue_key("default")) == 0
    assert connection.zscore("rq:canceled:default", job.id) is not None
    burst()
    assert not ledger.exists()


def test_cancel_scheduled_job(tq, connection):
    job = tq.enqueue_in(timedelta(hours=1), "add", a=1, b=1)
    assert tq.cancel_job(job.id)["status"] == "canceled"
    assert connection.zcard(keys.scheduled_key("default")) == 0


def test_cancel_deferred_job(tq):
    parent = tq.enqueue_in(3600, "add", a=1, b=1)
    child = tq.enqueue("add", a=1, b=1, depends_on=parent.id)
    assert tq.cancel_job(child.id)["status"] == "canceled"


def test_cancel_finished_or_unknown_job_is_refused(tq, burst):
    job = tq.enqueue("add", a=1, b=1)
    burst()
    with pytest.raises(JobStateError, match="already ended \\(finished\\)"):
        tq.cancel_job(job.id)
    with pytest.raises(JobNotFoundError):
        tq.cancel_job("no-such-job")
    with pytest.raises(JobNotFoundError):
        tq.get_job_status("../x")


def test_module_level_api_reads_the_environment(monkeypatch, redis_url, burst):
    import sys

    module = sys.modules[
        "atomq.engine.task_queue"
    ]  # `atomq.engine.task_queue` the attribute is the object itself

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ATOMQ_TASK_MODULES", "tests.jobs")
    fresh = TaskQueue()
    monkeypatch.setattr(module, "task_queue", fresh)
    job = module.task_queue.enqueue("add", a=40, b=2)
    burst()
    assert module.get_job_status(job.id)["result"] == 42
    second = module.task_queue.enqueue_in(timedelta(minutes=5), "add", a=1, b=1)
    assert module.cancel_job(second.id)["status"] == "canceled"
