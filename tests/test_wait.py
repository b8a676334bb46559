"""task_queue.wait(): the result, the failure as a clear error, or a timeout; woken by Redis
(a blocking read of the job's results stream), not by polling."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from atomq import Retry
from atomq.core.errors import JobFailedError, JobNotFoundError, WaitTimeoutError
from atomq.engine.waiting import WAIT_SLICE
from testkit.support import wait_for

pytestmark = pytest.mark.timeout(90)


def xreads(connection) -> int:
    return connection.info("commandstats").get("cmdstat_xread", {}).get("calls", 0)


def start_worker(procs, tq, *args):
    procs.worker(*args)
    wait_for(lambda: tq.connection.scard("rq:workers"), 20, what="worker registration")


def test_wait_returns_the_result_as_soon_as_the_job_ends(tq, procs, connection):
    start_worker(procs, tq, "--no-scheduler")
    job = tq.enqueue("sleep_for", seconds=1.0)
    before = xreads(connection)
    value = tq.wait(job.id, timeout=30)
    returned = time.time()
    assert value == 1.0
    ended = datetime.fromisoformat(tq.get_job_status(job.id)["ended_at"]).timestamp()
    assert returned - ended < 0.5, "woken when the job ended, not at the next poll"
    # One blocking read (two if the job outlived a slice), not a poll every few milliseconds.
    assert xreads(connection) - before <= 2


def test_a_job_that_already_ended_is_answered_at_once(tq, burst):
    job = tq.enqueue("add", a=20, b=22)
    burst()
    started = time.monotonic()
    assert tq.wait(job.id, timeout=30) == 42
    assert time.monotonic() - started < 1.0


def test_a_failed_job_raises_its_error_naming_the_job(tq, burst):
    job = tq.enqueue("fail", message="bad post")
    burst()
    with pytest.raises(JobFailedError) as caught:
        tq.wait(job.id, timeout=5)
    error = caught.value
    assert (error.job_id, error.status, error.error) == (job.id, "failed", "ValueError: bad post")
    assert str(error) == f"job {job.id} failed: ValueError: bad post"


def test_a_retried_attempt_does_not_end_the_wait(tq, procs, tmp_path):
    start_worker(procs, tq)  # with the scheduler: the retry is scheduled a second ahead
    job = tq.enqueue(
        "count_attempts", path=str(tmp_path / "attempts"), fail_times=1, retry=Retry(max=2, delay=1)
    )
    assert tq.wait(job.id, timeout=60) == 2


def test_a_wait_that_runs_out_raises_a_timeout_and_the_job_carries_on(tq, procs):
    start_worker(procs, tq, "--no-scheduler")
    job = tq.enqueue("sleep_for", seconds=3.0)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        tq.wait(job.id, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.5
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.job_id == job.id and caught.value.status in {"queued", "started"}
    assert job.id in str(caught.value)
    assert tq.wait(job.id, timeout=30) == 3.0


def test_a_job_canceled_while_waited_for_ends_the_wait(tq):
    job = tq.enqueue_in(600, "add", a=1, b=1)
    timer = threading.Timer(0.3, tq.cancel_job, args=(job.id,))
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobFailedError) as caught:
        tq.wait(job.id, timeout=30)
    timer.join()
    assert caught.value.status == "canceled"
    assert str(caught.value) == f"job {job.id} was canceled"
    assert time.monotonic() - started < WAIT_SLICE + 2.0


def test_waiting_for_an_unknown_job_is_not_found(tq):
    for job_id in ("no-such-job", "../etc", ""):
        with pytest.raises(JobNotFoundError):
            tq.wait(job_id, timeout=1)
