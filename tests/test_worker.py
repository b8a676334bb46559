"""Workers as real processes: running, stopping, timing out, crashing, retrying, surviving."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from atomq import Retry
from atomq.core import keys
from atomq.ops.monitor import failure_detail
from testkit.support import Processes, RedisServer, children_of, cli_env, wait_for, worker_pids


@pytest.fixture(params=["fast", "rq"])
def wclass(request: pytest.FixtureRequest) -> str:
    """Run the test against both worker classes: atomq's fast worker and RQ's forking one."""
    return request.param


def first_pid(path: Path) -> int:
    """The pid a job wrote as the first line of ``path`` (waits for it)."""
    return int(wait_for(lambda: path.exists() and path.read_text().split(), 15, what=f"{path}")[0])


def status_of(tq, job_id):
    return tq.get_job_status(job_id)["status"]


def test_idle_worker_picks_up_a_new_job_at_once(tq, procs, wclass):
    procs.worker("--worker-class", wclass, "--no-scheduler")
    wait_for(lambda: tq.connection.scard("rq:workers"), 15, what="worker registration")
    time.sleep(0.3)  # let it go idle and block on its wake-up list
    started = time.monotonic()
    job = tq.enqueue("add", a=1, b=2)
    wait_for(lambda: status_of(tq, job.id) == "finished", 5)
    assert time.monotonic() - started < 1.0


def test_queues_are_served_in_priority_order(wclass, tq, burst, tmp_path):
    ledger = tmp_path / "ledger"
    tq.enqueue("record", path=str(ledger), key="default-1")
    tq.enqueue("record", path=str(ledger), key="high-1", queue="high_priority")
    tq.enqueue("record", path=str(ledger), key="default-2")
    tq.enqueue("record", path=str(ledger), key="high-2", queue="high_priority")
    burst("--worker-class", wclass, "high_priority", "default")
    assert ledger.read_text().split() == ["high-1", "high-2", "default-1", "default-2"]


def test_cancel_stops_a_running_job(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    started, done = tmp_path / "started", tmp_path / "done"
    job = tq.enqueue("sleep_for", seconds=30, started_file=str(started), done_file=str(done))
    horse = first_pid(started)
    status = tq.cancel_job(job.id, wait=10)
    assert status["status"] == "stopped"
    assert status["error"]
    assert not done.exists()
    if wclass == "rq":  # its work-horse is gone; the fast worker ran the job in its own process
        wait_for(
            lambda: not Path(f"/proc/{horse}").exists() or "Z" in Path(f"/proc/{horse}/stat").read_text(), 5
        )
    after = tq.enqueue("add", a=1, b=1)
    wait_for(lambda: status_of(tq, after.id) == "finished", 10, what="the worker to carry on")


def test_a_job_over_its_timeout_is_killed_and_failed(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    done = tmp_path / "done"
    job = tq.enqueue("sleep_for", seconds=20, done_file=str(done), timeout=1)
    wait_for(lambda: status_of(tq, job.id) == "failed", 15, what="timeout")
    assert "JobTimeoutException" in tq.get_job_status(job.id)["error"]
    assert not done.exists()


def test_a_sigkilled_job_process_is_retried(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    attempts = tmp_path / "attempts"
    job = tq.enqueue("slow_first_attempt", path=str(attempts), retry=Retry(max=1, delay=0, jitter=0))
    horse = first_pid(attempts)
    os.kill(horse, signal.SIGKILL)
    wait_for(lambda: status_of(tq, job.id) == "finished", 15, what="the retry")
    assert tq.get_job_status(job.id)["result"] == 2


def test_a_sigkilled_job_process_without_retries_fails(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    attempts = tmp_path / "attempts"
    job = tq.enqueue("slow_first_attempt", path=str(attempts))
    os.kill(first_pid(attempts), signal.SIGKILL)
    wait_for(lambda: status_of(tq, job.id) == "failed", 15)
    error = tq.get_job_status(job.id)["error"]
    assert (
        "terminated unexpectedly" in error
        or "died while running this job (worker process killed by SIGKILL)" in error
    )


def test_sigterm_lets_the_running_job_finish(tq, procs, wclass, tmp_path):
    worker = procs.worker("--worker-class", wclass)
    started, done = tmp_path / "started", tmp_path / "done"
    job = tq.enqueue("sleep_for", seconds=2, started_file=str(started), done_file=str(done))
    wait_for(started.exists, 15, what="job start")
    worker.send_signal(signal.SIGTERM)
    # The supervisor relays the signal: enqueue once the worker has it, not merely the supervisor.
    wait_for(
        lambda: re.search(r"warm shut ?down requested", procs.log(worker), re.IGNORECASE) is not None,
        10,
        what="the worker to get the signal",
    )
    queued_behind = tq.enqueue("add", a=1, b=1)
    assert worker.wait(20) == 0
    assert done.exists()
    assert status_of(tq, job.id) == "finished"
    assert status_of(tq, queued_behind.id) == "queued", "nothing new starts after SIGTERM"
    assert tq.connection.scard("rq:workers") == 0


def test_ctrl_c_to_the_whole_process_group_still_lets_the_running_job_finish(tq, procs, wclass, tmp_path):
    # Ctrl-C in a terminal signals every process of the group: the worker gets SIGINT itself and
    # again, relayed by its supervisor, as SIGTERM. That is one request (warm), not two (cold).
    worker = procs.worker("--worker-class", wclass)
    started, done = tmp_path / "started", tmp_path / "done"
    job = tq.enqueue("sleep_for", seconds=2, started_file=str(started), done_file=str(done))
    wait_for(started.exists, 15, what="job start")
    os.killpg(worker.pid, signal.SIGINT)
    assert worker.wait(20) == 0
    assert done.exists(), "the running job was stopped: a group-wide Ctrl-C counted twice"
    assert status_of(tq, job.id) == "finished"


def test_the_scheduler_leaves_on_the_first_signal_and_lets_its_clean_up_finish_on_the_second():
    # Ctrl-C reaches the scheduler itself, then as its supervisor's SIGTERM: the second signal
    # must not break off the clean-up the first one's exit runs through.
    from atomq.engine.supervisor import _stops_once

    class Scheduler:
        stops = 0

        def stop(self) -> None:
            self.stops += 1

    scheduler = Scheduler()
    stop = _stops_once(scheduler)  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as leaving:
        stop(signal.SIGINT, None)
    assert leaving.value.code == 0
    stop(signal.SIGTERM, None)  # during the clean-up: no second SystemExit
    assert scheduler.stops == 2


def test_supervisor_restarts_a_killed_worker_and_recovers_its_job(tq, procs, wclass, tmp_path):
    supervisor = procs.worker("--worker-class", wclass, "--count", "2", "--name", "w")
    wait_for(lambda: tq.connection.scard("rq:workers") == 2, 15, what="two workers")
    attempts = tmp_path / "attempts"
    job = tq.enqueue("slow_first_attempt", path=str(attempts), retry=1)
    horse = first_pid(attempts)
    worker_pid = (
        horse
        if wclass == "fast"
        else int(Path(f"/proc/{horse}/stat").read_text().rsplit(")", 1)[1].split()[1])
    )
    assert worker_pid in children_of(supervisor.pid)
    killed_at = time.monotonic()
    os.kill(worker_pid, signal.SIGKILL)
    wait_for(lambda: status_of(tq, job.id) == "finished", 10, what="recovery of the job")
    assert time.monotonic() - killed_at < 5
    assert tq.get_job_status(job.id)["result"] == 2
    assert not Path(f"/proc/{horse}").exists() or "Z" in Path(f"/proc/{horse}/stat").read_text()
    wait_for(lambda: len(children_of(supervisor.pid)) == 3, 10, what="the replacement worker")
    wait_for(lambda: tq.connection.scard("rq:workers") == 2, 10)
    assert worker_pid not in children_of(supervisor.pid)


def test_supervisor_backs_off_only_for_a_worker_that_dies_before_it_runs_a_job(tq, procs):
    supervisor = procs.worker("--count", "1", "--name", "b", "--no-scheduler")

    def live_worker() -> int:
        pids = wait_for(lambda: worker_pids(tq.connection, supervisor.pid), 15, what="a registered worker")
        return pids[0]

    def restarts() -> list[str]:
        return re.findall(r"restarting worker b\S* in (.*)", procs.log(supervisor))

    def kill(n: int, *, after_a_job: bool) -> None:
        """SIGKILL the live worker (once it ran a job, or before it ran any), then wait for
        restart ``n`` to be logged and the dead worker to leave the registry."""
        pid = live_worker()
        if after_a_job:
            job = tq.enqueue("add", a=n, b=n)
            wait_for(lambda: status_of(tq, job.id) == "finished", 10, what=f"a job on worker {n}")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(restarts()) == n, 10, what=f"restart {n}")
        wait_for(
            lambda: pid not in worker_pids(tq.connection, supervisor.pid),
            10,
            what="the dead worker's unregistration",
        )

    # Killed twice at work: back after the first delay both times.
    kill(1, after_a_job=True)
    kill(2, after_a_job=True)
    assert restarts() == ["0.5 s", "0.5 s"]
    # Killed before it ran a job, twice running: the delay doubles, and the log says why.
    kill(3, after_a_job=False)
    kill(4, after_a_job=False)
    assert restarts()[2:] == [
        "1.0 s (died 2 times in a row before running a job)",
        "2.0 s (died 3 times in a row before running a job)",
    ]
    # A job run resets it: killed at work again, it is back after the first delay.
    kill(5, after_a_job=True)
    assert restarts()[4] == "0.5 s"


def test_failed_attempts_are_retried_with_backoff(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    attempts = tmp_path / "attempts"
    job = tq.enqueue(
        "count_attempts", path=str(attempts), fail_times=2, retry=Retry(max=2, delay=1, backoff=1, jitter=0)
    )
    wait_for(lambda: status_of(tq, job.id) == "finished", 20, what="retries")
    stamps = [float(x) for x in attempts.read_text().split()]
    assert len(stamps) == 3
    assert all(b - a >= 0.9 for a, b in zip(stamps, stamps[1:]))
    assert len(job.results()) == 3  # two failed attempts and the success are all on record


def test_retryable_error_sets_the_next_delay_and_permanent_error_skips_retries(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    attempts = tmp_path / "attempts"
    job = tq.enqueue(
        "count_attempts", path=str(attempts), fail_times=1, retry_after=2, retry=Retry(max=3, delay=0)
    )
    wait_for(lambda: status_of(tq, job.id) == "scheduled", 20)
    assert tq.get_job_status(job.id)["error"] == "atomq.core.errors.RetryableError: attempt 1 failed"
    wait_for(lambda: status_of(tq, job.id) == "finished", 20)
    first, second = (float(x) for x in attempts.read_text().split())
    assert second - first >= 1.9
    hopeless = tq.enqueue("fail_permanently")
    wait_for(lambda: status_of(tq, hopeless.id) == "failed", 20)
    assert hopeless.get_status() == "failed" and hopeless.retries_left == 3
    assert len(hopeless.results()) == 1


def _handwritten_job(connection, job_id: str, data: bytes) -> None:
    connection.hset(
        keys.job_key(job_id),
        mapping={
            "data": zlib.compress(data),
            "status": "queued",
            "origin": "default",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "description": "evil",
        },
    )
    connection.sadd(keys.QUEUES_SET, keys.queue_key("default"))
    connection.rpush(keys.queue_key("default"), job_id)


def test_a_handwritten_job_naming_an_unregistered_function_never_runs(
    wclass, tq, connection, burst, tmp_path
):
    marker = tmp_path / "pwned"
    _handwritten_job(connection, "evil1", json.dumps(["os.system", None, [f"touch {marker}"], {}]).encode())
    _handwritten_job(
        connection, "evil2", json.dumps(["tests.jobs.record", None, [str(marker), "x"], {}]).encode()
    )
    burst("--worker-class", wclass)
    assert not marker.exists()
    for job_id, name in (("evil1", "os.system"), ("evil2", "tests.jobs.record")):
        status = tq.get_job_status(job_id)
        assert status["status"] == "failed"
        assert f"no task is registered as '{name}'" in status["error"]


class _Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_pickle_payload_is_never_unpickled(wclass, tq, connection, burst, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(("tests.jobs.add", None, (_Exploit(marker),), {}))
    _handwritten_job(connection, "evil3", payload)
    connection.hset(keys.job_key("evil3"), "meta", pickle.dumps(_Exploit(marker)))
    tq.get_job_status("evil3")
    failure_detail(connection, "evil3")
    burst("--worker-class", wclass)
    assert not marker.exists()
    assert tq.get_job_status("evil3")["status"] == "failed"


def test_callbacks_named_in_redis_are_ignored(wclass, tq, connection, burst, tmp_path):
    marker = tmp_path / "pwned"
    job = tq.enqueue("add", a=1, b=1)
    connection.hset(keys.job_key(job.id), "success_callback_name", "os.system")
    burst("--worker-class", wclass)
    assert status_of(tq, job.id) == "finished"
    assert not marker.exists()


def test_stock_rq_info_reads_an_atomq_redis(tq, procs, wclass, redis_url):
    procs.worker("--worker-class", wclass, "--name", "compat")
    for _ in range(3):
        tq.enqueue("add", a=1, b=1)
    tq.enqueue("fail")
    wait_for(
        lambda: (
            tq.connection.zcard("rq:failed:default") == 1 and tq.connection.zcard("rq:finished:default") == 3
        ),
        15,
    )
    rq = Path(sys.executable).with_name("rq")
    result = subprocess.run(
        [str(rq), "info", "--url", redis_url], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout
    assert "3 finished, 1 failed" in result.stdout
    assert "compat" in result.stdout
    assert "1 workers" in result.stdout


@pytest.mark.slow
def test_worker_waits_out_a_redis_outage_and_resumes(wclass, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    env = cli_env(server.url, tmp_path / "var")
    procs = Processes(env, tmp_path / "logs")
    try:
        worker = procs.worker("--worker-class", wclass, "--no-scheduler")
        client = server.client()
        wait_for(lambda: client.scard("rq:workers") == 1, 15, what="worker registration")
        port = server.port
        server.stop()
        time.sleep(3)
        assert worker.poll() is None, "the worker must not exit while Redis is away"
        server = RedisServer(tmp_path / "redis", port=port).start()
        client = server.client()
        wait_for(lambda: client.scard("rq:workers") == 1, 20, what="the worker to re-register")
        from atomq.core.settings import load_settings
        from atomq.engine.task_queue import TaskQueue

        tq = TaskQueue(
            settings=load_settings(redis_url=server.url, task_modules=["tests.jobs"]), connection=client
        )
        job = tq.enqueue("add", a=2, b=2)
        wait_for(lambda: status_of(tq, job.id) == "finished", 10)
        log = Processes.log(worker)
        assert "unreachable" in log and "is back" in log
    finally:
        procs.stop_all()
        server.stop()


def test_deploy_start_workers_script_runs_the_guides_worker(tq, env, tmp_path):
    log_file = tmp_path / "logs" / "rq-worker.log"
    script_env = dict(
        env,
        QUEUES="social_media default",
        WORKER_NAME="atom-worker",
        LOG_FILE=str(log_file),
        ATOMQ=str(Path(sys.executable).with_name("atomq")),
    )
    from testkit.support import ROOT

    process = subprocess.Popen(
        ["bash", str(ROOT / "deploy" / "start_workers.sh")], env=script_env, start_new_session=True
    )
    try:
        job = tq.enqueue("record", path=str(tmp_path / "ledger"), key="post_123", queue="social_media")
        wait_for(lambda: status_of(tq, job.id) == "finished", 20, what="the job")
        (worker,) = [w for w in tq.connection.smembers("rq:workers")]
        assert worker == b"rq:worker:atom-worker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        text = log_file.read_text()
        assert "post_123" in text and job.id in text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_defer_runs_the_job_later_without_using_a_retry(tq, procs, wclass, tmp_path):
    procs.worker("--worker-class", wclass)
    runs = tmp_path / "runs"
    job = tq.enqueue("defer_twice", path=str(runs))
    wait_for(lambda: status_of(tq, job.id) == "finished", 30, what="the deferred job")
    stamps = [float(x) for x in runs.read_text().split()]
    assert len(stamps) == 3
    assert all(b - a >= 0.45 for a, b in zip(stamps, stamps[1:]))
    assert tq.fetch_job(job.id).retries_left == 1, "deferring is not an attempt"
    assert tq.get_job_status(job.id)["result"] == 3
    assert len(job.results()) == 1  # only the successful run is on record
    from atomq.engine.stats import COUNTS_KEY

    assert int(tq.connection.hget(COUNTS_KEY, "default|defer_twice|deferred")) == 2


def test_a_worker_imports_the_heavy_modules_of_the_tasks_it_serves_before_its_first_job(tq, procs):
    # A burst of posts due at one instant must not wait for the first to import publishing's
    # libraries; a worker that does not serve social_media does not pay for them.
    publishing = "atomq.features.posts.publishing"
    procs.worker("default", "social_media", "--no-scheduler")
    job = tq.enqueue("imported", modules=[publishing])
    wait_for(lambda: status_of(tq, job.id) == "finished", 30, what="the job")
    assert tq.get_job_status(job.id)["result"] == {publishing: True}
    procs.stop_all()
    procs.worker("default", "--no-scheduler")
    job = tq.enqueue("imported", modules=[publishing])
    wait_for(lambda: status_of(tq, job.id) == "finished", 30, what="the job")
    assert tq.get_job_status(job.id)["result"] == {publishing: False}


def test_a_worker_warms_up_the_tasks_it_serves_before_its_first_job(tq, procs):
    # Once per process, on the event loop its async jobs share, with the worker's Redis; a
    # worker that does not serve the task's queue never calls it.
    procs.worker("warm_ups", "--no-scheduler", "--count", "1")
    jobs = [tq.enqueue("warmed", queue="warm_ups") for _ in range(3)]
    wait_for(lambda: all(status_of(tq, job.id) == "finished" for job in jobs), 30, what="the jobs")
    for job in jobs:
        assert tq.get_job_status(job.id)["result"] == {
            "calls": 1,
            "same_loop": True,
            "redis": True,
            "before_job": True,
        }


def test_a_warm_up_that_fails_is_logged_and_the_worker_runs_jobs_anyway(tq, procs):
    worker = procs.worker("cold_starts", "--no-scheduler", "--count", "1")
    job = tq.enqueue("cold", queue="cold_starts")
    wait_for(lambda: status_of(tq, job.id) == "finished", 30, what="the job")
    assert tq.get_job_status(job.id)["result"] == "ran anyway"
    log = procs.log(worker)
    assert "task cold: warm-up tests.jobs:warm_up_that_fails failed (RuntimeError('no warm-up today'))" in log
    assert "Traceback" not in log


def test_a_warm_up_must_name_a_module_and_a_function():
    from atomq.core.errors import ConfigurationError
    from atomq.engine.tasks import TaskRegistry, task

    with pytest.raises(ConfigurationError, match="warm_up must be 'module:function'"):
        task("badly_warmed", warm_up="tests.jobs.warm_up_that_fails", registry=TaskRegistry())(lambda: None)
