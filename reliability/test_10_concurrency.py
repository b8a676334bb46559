"""Scenario 10: many jobs in flight in one worker process (``--concurrency``), and the faults
that hit them all at once.

1. **SIGTERM with jobs in flight.** One worker process runs ``IN_FLIGHT`` async jobs that each
   wait ``JOB_SECONDS``; a SIGTERM lands once all have started. Every one of them finishes,
   once, inside the deploy's grace period; jobs queued after the SIGTERM stay queued.
2. **A job deaf to its time limit beside async jobs.** One worker process runs ``BESIDE``
   async jobs (no retries) and one plain job stuck in C code past its 2 s limit. The worker
   gives up on the deaf job (it fails, with the reason), and its supervisor kills the process to
   get the stuck thread back; the async jobs it was running are handed back *without using an
   attempt* and all finish, each exactly once.

Worker kills with many jobs in flight are scenario 1 (its workers run at the default
concurrency).
"""

from __future__ import annotations

import signal
import time

import pytest

import reliability.tasks_workers  # noqa: F401 - registers the tasks in this process too
from reliability.ledger import Ledger
from reliability.report import report
from reliability.workers_support import leftovers, statuses, worker_env
from testkit.sizes import size
from testkit.support import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

QUEUES = ["high_priority", "social_media", "workflows", "default"]

#: Async jobs in flight in one process at the SIGTERM, and how long each waits.
IN_FLIGHT = 100
JOB_SECONDS = float(size(3, 10))
#: Async jobs beside the deaf one, and how long each waits.
BESIDE = 50
BESIDE_SECONDS = float(size(6, 15))


def test_sigterm_with_100_jobs_in_flight_lets_each_finish_once(procs, tq, connection, env, ledger: Ledger):
    environment = worker_env(env, ledger)
    supervisor = procs.worker("--concurrency", str(IN_FLIGHT), "--name", "busy", env=environment)
    wait_for(lambda: connection.scard("rq:workers") == 1, 60, what="the worker")
    keys = [f"flight-{i}" for i in range(IN_FLIGHT)]
    jobs = tq.enqueue_many(("rel_w_async", {"key": k, "seconds": JOB_SECONDS}) for k in keys)
    wait_for(
        lambda: not ledger.missing(f"start:{k}" for k in keys), 30, interval=0.05, what="all jobs to start"
    )
    term_at = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    after = tq.enqueue("rel_w_ok", key="after-sigterm")
    code = supervisor.wait(JOB_SECONDS + 60)
    stopped_in = time.monotonic() - term_at

    counts = ledger.counts()
    final = statuses(connection, [j.id for j in jobs])
    finished_twice = [k for k in keys if counts[f"done:{k}"] > 1]
    missing = [k for k in keys if counts[f"done:{k}"] == 0]
    figures = report(
        "10_sigterm_in_flight",
        in_flight=IN_FLIGHT,
        job_seconds=JOB_SECONDS,
        supervisor_exit_code=code,
        stopped_after_s=round(stopped_in, 2),
        finished=final.get("finished", 0),
        missing=len(missing),
        finished_twice=len(finished_twice),
        queued_after_sigterm=tq.get_job_status(after.id)["status"],
    )
    assert code == 0
    assert figures["missing"] == 0 and figures["finished_twice"] == 0
    assert final == {"finished": IN_FLIGHT}, final
    assert stopped_in < JOB_SECONDS + 15, stopped_in  # it waited for the jobs, not for a timeout
    assert figures["queued_after_sigterm"] == "queued", "nothing new starts after SIGTERM"
    assert leftovers(connection, QUEUES)["started"] == 0


def test_a_deaf_thread_job_is_given_up_and_the_jobs_beside_it_finish_unharmed(
    procs, tq, connection, env, ledger: Ledger
):
    environment = worker_env(env, ledger)
    procs.worker("--concurrency", str(BESIDE + 10), "--name", "mixed", env=environment)
    wait_for(lambda: connection.scard("rq:workers") == 1, 60, what="the worker")
    keys = [f"beside-{i}" for i in range(BESIDE)]
    beside = tq.enqueue_many(("rel_w_async", {"key": k, "seconds": BESIDE_SECONDS}) for k in keys)
    wait_for(lambda: not ledger.missing(f"start:{k}" for k in keys), 30, interval=0.05, what="the async jobs")
    enqueued_at = time.monotonic()
    deaf = tq.enqueue("rel_w_deaf_thread", key="deaf")
    wait_for(lambda: tq.get_job_status(deaf.id)["status"] == "failed", 30, what="the deaf job to fail")
    failed_after = time.monotonic() - enqueued_at
    wait_for(
        lambda: all(tq.get_job_status(j.id)["status"] == "finished" for j in beside),
        BESIDE_SECONDS * 3 + 60,
        interval=0.2,
        what="the async jobs to finish after the process was killed",
    )
    counts = ledger.counts()
    handed_back = sum(1 for k in keys if counts[f"start:{k}"] > 1)
    figures = report(
        "10_deaf_beside_async",
        beside=BESIDE,
        deaf_failed_after_s=round(failed_after, 2),
        deaf_error=tq.get_job_status(deaf.id)["error"],
        handed_back_and_run_again=handed_back,
        finished=sum(1 for j in beside if tq.get_job_status(j.id)["status"] == "finished"),
        finished_twice=sum(1 for k in keys if counts[f"done:{k}"] > 1),
    )
    assert "did not stop" in figures["deaf_error"]
    assert figures["deaf_failed_after_s"] < 15
    assert figures["handed_back_and_run_again"] == BESIDE, "the kill must have hit the async jobs"
    # They have no retries: finishing at all shows the kill did not cost them an attempt.
    assert figures["finished"] == BESIDE and figures["finished_twice"] == 0
