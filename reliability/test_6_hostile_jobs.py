"""Scenario 6: jobs that misbehave are contained while the other jobs keep flowing.

The hostile jobs run with ``isolation="fork"`` (a process of their own, see
reliability/tasks_workers.py), under ``ATOMQ_JOB_MEMORY_LIMIT_MB``:

* ``rel_w_deaf`` ignores and blocks every signal it can and sleeps inside C: it is killed at
  its 2 s time limit, each of its 3 attempts;
* ``rel_w_spinner`` waits for a subprocess spinning in a busy loop: the kill at the time limit
  takes the subprocess too;
* ``rel_w_segfault`` dereferences NULL; ``rel_w_hog`` allocates until refused;
* ``rel_w_deaf_inline`` is the deaf job without isolation, in the worker's own process: the
  supervisor kills that worker past the limit (plus its 5 s grace) and restarts it.

Each lands in ``failed`` after its retries, with the reason; meanwhile a stream of ordinary
jobs is enqueued and every one of them finishes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import reliability.tasks_workers  # noqa: F401 - registers the tasks in this process too
from atomq.engine.executor import HARD_KILL_GRACE
from reliability.ledger import Ledger
from reliability.report import report
from reliability.workers_support import (
    alive_pids,
    attempt_seconds,
    kill_if_alive,
    leftovers,
    read_pids,
    record_times,
    statuses,
    worker_env,
)
from testkit.sizes import size
from testkit.support import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

QUEUES = ["high_priority", "social_media", "workflows", "default"]
#: The hostile tasks' time limit (their @task timeout) and attempts (1 + PROMPT_RETRY.max).
LIMIT = 2.0
ATTEMPTS = 3
#: Ordinary jobs enqueued per second while the hostile ones run.
STREAM_RATE = int(size(20, 100))
#: Address-space cap of a job's process: a forked job starts with the worker's ~250 MB mapped.
MEMORY_LIMIT_MB = 768


def test_hostile_jobs_fail_after_their_retries_while_other_jobs_flow(
    procs, tq, connection, env, ledger: Ledger, tmp_path
):
    # One job per process, so a crash is blamed on the job that caused it alone (jobs running
    # beside a crashing one are scenario 10's).
    supervisor = procs.worker(
        "--count",
        "4",
        "--concurrency",
        "1",
        "--name",
        "hostile",
        env=worker_env(env, ledger, ATOMQ_JOB_MEMORY_LIMIT_MB=str(MEMORY_LIMIT_MB)),
    )
    wait_for(lambda: connection.scard("rq:workers") == 4, 30, what="four workers")
    spinner_pids = tmp_path / "spinner-pids"
    try:
        started = time.monotonic()
        hostile = {
            "deaf": tq.enqueue("rel_w_deaf", key="deaf"),
            "spinner": tq.enqueue("rel_w_spinner", key="spinner", pid_file=str(spinner_pids)),
            "segfault": tq.enqueue("rel_w_segfault", key="segfault"),
            "hog": tq.enqueue("rel_w_hog", key="hog"),
            "deaf_inline": tq.enqueue("rel_w_deaf_inline", key="deaf_inline"),
        }
        stream: list[tuple[str, Any]] = []

        def hostile_done() -> bool:
            return all(tq.get_job_status(job.id)["status"] == "failed" for job in hostile.values())

        # The stream flows for as long as hostile jobs are still being tried.
        while not hostile_done():
            assert time.monotonic() - started < 90, {
                name: tq.get_job_status(job.id)["status"] for name, job in hostile.items()
            }
            key = f"ok-{len(stream)}"
            stream.append((key, tq.enqueue("rel_w_ok", key=key)))
            time.sleep(1 / STREAM_RATE)
        hostile_seconds = time.monotonic() - started
        stream_ids = [job.id for _, job in stream]
        wait_for(lambda: statuses(connection, stream_ids)["finished"] == len(stream), 30, what="the stream")
        assert ledger.missing([key for key, _ in stream]) == []

        # The ordinary jobs did not wait for the hostile ones: each ended soon after it was queued.
        latencies = sorted(
            (job.ended_at - job.enqueued_at).total_seconds()
            for job in (tq.fetch_job(job_id) for job_id in stream_ids)
        )
        assert latencies[-1] < 10.0, latencies[-10:]

        errors = {name: tq.get_job_status(job.id)["error"] or "" for name, job in hostile.items()}
        attempts = {name: len(record_times(ledger, name)) for name in hostile}
        assert attempts == {
            "deaf": ATTEMPTS,
            "spinner": ATTEMPTS,
            "segfault": ATTEMPTS,
            "hog": ATTEMPTS,
            "deaf_inline": 1,  # no retries: a job that stalls its worker is not run again
        }, attempts
        assert "timeout" in errors["deaf"] and "timeout" in errors["spinner"], errors
        assert "SIGSEGV" in errors["segfault"], errors["segfault"]
        assert "MemoryError" in errors["hog"], errors["hog"]
        assert "did not stop" in errors["deaf_inline"], errors["deaf_inline"]

        # Killed at the limit: each attempt of the isolated jobs ran for LIMIT seconds, not for
        # the limit plus the supervisor's grace.
        runs = {name: attempt_seconds(tq.fetch_job(hostile[name].id)) for name in ("deaf", "spinner")}
        for name, seconds in runs.items():
            assert len(seconds) == ATTEMPTS, (name, seconds)
            assert all(LIMIT - 0.05 <= run < LIMIT + HARD_KILL_GRACE / 2 for run in seconds), (name, seconds)

        # The spinning subprocesses went with their jobs.
        pids = read_pids(spinner_pids)
        assert len(pids) == ATTEMPTS
        assert wait_for(lambda: not alive_pids(pids), 5, what="the spinners to be gone")

        # Only the worker running the un-isolated deaf job died; the supervisor replaced it.
        log = procs.log(supervisor)
        deaths = log.count("died (killed by SIGKILL)")
        assert deaths == 1, deaths
        assert supervisor.poll() is None
        wait_for(lambda: connection.scard("rq:workers") == 4, 15, what="the replacement worker")
        wait_for(lambda: leftovers(connection, QUEUES) == dict.fromkeys(leftovers(connection, QUEUES), 0), 15)
    finally:
        leaked = kill_if_alive(read_pids(spinner_pids))
    assert leaked == []

    report(
        "6_hostile_jobs",
        hostile_jobs=len(hostile),
        attempts=attempts,
        failed_with={name: _first_line(error) for name, error in errors.items()},
        attempt_seconds={name: [round(run, 2) for run in seconds] for name, seconds in runs.items()},
        time_limit_s=LIMIT,
        memory_limit_mb=MEMORY_LIMIT_MB,
        worker_processes_killed=deaths,
        hostile_phase_s=round(hostile_seconds, 1),
        stream_jobs=len(stream),
        stream_finished=len(stream),
        stream_latency_p50_s=round(latencies[len(latencies) // 2], 3),
        stream_latency_max_s=round(latencies[-1], 3),
    )


def _first_line(error: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def test_the_memory_limit_holds_in_rq_work_horses_too(procs, tq, connection, env, ledger: Ledger):
    """``--worker-class rq`` forks a work-horse per job; the limit applies there as well."""
    procs.worker(
        "--worker-class",
        "rq",
        "--name",
        "horses",
        env=worker_env(env, ledger, ATOMQ_JOB_MEMORY_LIMIT_MB=str(MEMORY_LIMIT_MB)),
    )
    hog = tq.enqueue("rel_w_hog", key="hog")
    after = tq.enqueue("rel_w_ok", key="after")
    wait_for(lambda: tq.get_job_status(hog.id)["status"] == "failed", 60, what="the hog to fail")
    assert "MemoryError" in (tq.get_job_status(hog.id)["error"] or "")
    assert len(record_times(ledger, "hog")) == ATTEMPTS
    wait_for(lambda: tq.get_job_status(after.id)["status"] == "finished", 30, what="the next job")
