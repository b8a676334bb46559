"""Scenario 5: a deploy stops the workers while long jobs run.

``systemctl stop atomq-workers`` sends SIGTERM to the supervisor only (``KillMode=mixed``) and
waits ``TimeoutStopSec`` (the grace period, read from deploy/systemd/atomq-workers.service)
before it SIGKILLs whatever is left. The first test sends that SIGTERM with a long job running
on every worker and jobs queued behind them: every running job finishes inside the grace
period, once; the queued ones stay queued for the next release, which runs them, once.

The second test goes past the grace period: the SIGKILL that follows leaves jobs started by
dead workers; the next release's scheduler finds the dead workers (their heartbeat expired)
and gives the jobs back, and they run again to the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import reliability.tasks_workers  # noqa: F401 - registers the tasks in this process too
from atomq.core import keys
from reliability.ledger import Ledger
from reliability.report import report
from reliability.workers_support import leftovers, statuses, worker_env
from testkit.sizes import FULL, size
from testkit.support import ROOT, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

QUEUES = ["high_priority", "social_media", "workflows", "default"]
UNIT = ROOT / "deploy" / "systemd" / "atomq-workers.service"

#: Long jobs in flight at the SIGTERM (one per worker process) and how long each runs.
IN_FLIGHT = int(size(8, 100))
JOB_SECONDS = float(size(3, 20))
#: Jobs queued behind them, not started when the SIGTERM comes.
BEHIND = 20


def grace_seconds(unit: Path = UNIT) -> float:
    """``TimeoutStopSec`` of the workers' unit: how long a stop waits before SIGKILL."""
    match = re.search(r"^TimeoutStopSec=(\d+)\s*$", unit.read_text(), re.MULTILINE)
    assert match, f"{unit} sets no TimeoutStopSec"
    return float(match.group(1))


def test_sigterm_lets_every_running_job_finish_inside_the_grace_period(
    procs, tq, connection, env, ledger: Ledger
):
    grace = grace_seconds()
    assert grace > JOB_SECONDS
    environment = worker_env(env, ledger)
    # One job per process, as the unit's classic deploy: the jobs queued behind the running ones
    # are not started before the SIGTERM (scenario 10 stops a process with 100 in flight).
    supervisor = procs.worker(
        "--count", str(IN_FLIGHT), "--concurrency", "1", "--name", "release1", env=environment
    )
    wait_for(lambda: connection.scard("rq:workers") == IN_FLIGHT, 60, what=f"{IN_FLIGHT} workers")

    names = [f"long-{i}" for i in range(IN_FLIGHT)]
    long_jobs = tq.enqueue_many(("rel_w_long", {"key": n, "seconds": JOB_SECONDS}) for n in names)
    wait_for(
        lambda: not ledger.missing(f"start:{n}" for n in names),
        max(30.0, JOB_SECONDS / 2),
        interval=0.05,
        what="every long job to start",
    )
    behind_keys = [f"behind-{i}" for i in range(BEHIND)]
    behind = tq.enqueue_many(("rel_w_ok", {"key": k}) for k in behind_keys)

    term_at = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    code = supervisor.wait(grace)
    stopped_in = time.monotonic() - term_at
    assert code == 0
    assert stopped_in < grace
    assert stopped_in < JOB_SECONDS + 15, stopped_in  # it waited for the jobs, not for a timeout

    long_ids = [job.id for job in long_jobs]
    assert statuses(connection, long_ids) == {"finished": IN_FLIGHT}
    counts = ledger.counts()
    assert {counts[f"start:{n}"] for n in names} == {1}, "no long job ran twice"
    assert {counts[f"done:{n}"] for n in names} == {1}, "every long job finished, once"
    # Nothing new started after the SIGTERM; the jobs queued behind wait for the next release.
    behind_ids = [job.id for job in behind]
    assert statuses(connection, behind_ids) == {"queued": BEHIND}
    assert ledger.missing(behind_keys) == behind_keys
    assert leftovers(connection, QUEUES) == {"queued": BEHIND, "started": 0, "scheduled": 0, "claimed": 0}
    assert connection.scard("rq:workers") == 0

    # The next release picks them up.
    release2 = procs.worker("--count", "2", "--name", "release2", env=environment)
    wait_for(lambda: statuses(connection, behind_ids)["finished"] == BEHIND, 30, what="the queued jobs")
    assert ledger.missing(behind_keys) == []
    assert not any(key in ledger.duplicates() for key in behind_keys)
    procs.stop(release2)

    report(
        "5_deploy",
        jobs_in_flight=IN_FLIGHT,
        job_seconds=JOB_SECONDS,
        queued_behind=BEHIND,
        grace_seconds=grace,
        stopped_in_seconds=round(stopped_in, 1),
        finished_in_flight=IN_FLIGHT,
        lost=0,
        ran_twice=0,
        queued_jobs_run_by_next_release=BEHIND,
    )


#: Past the grace: jobs that would run this long, and the grace the "systemd" here allows.
PAST_JOBS = 2
PAST_JOB_SECONDS = 8.0
PAST_GRACE = 2.0


def test_jobs_killed_past_the_grace_period_are_given_back_and_run_again(
    procs, tq, connection, env, ledger: Ledger
):
    environment = worker_env(env, ledger)
    release1 = procs.worker("--count", str(PAST_JOBS), "--name", "old", "--no-scheduler", env=environment)
    wait_for(lambda: connection.scard("rq:workers") == PAST_JOBS, 30, what="the workers")
    names = [f"past-{i}" for i in range(PAST_JOBS)]
    jobs = tq.enqueue_many(("rel_w_long", {"key": n, "seconds": PAST_JOB_SECONDS}) for n in names)
    wait_for(lambda: not ledger.missing(f"start:{n}" for n in names), 30, what="the jobs to start")

    # What systemd does with KillMode=mixed: SIGTERM to the supervisor, then, when the grace
    # period is over, SIGKILL to every process left in the service.
    release1.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        release1.wait(PAST_GRACE)
    os.killpg(release1.pid, signal.SIGKILL)
    release1.wait(10)
    killed_at = time.monotonic()
    ids = [job.id for job in jobs]
    assert statuses(connection, ids) == {"started": PAST_JOBS}

    if not FULL:
        # The dead workers' registrations expire 80 s after their last heartbeat (WORKER_TTL +
        # 60); the CI run expires them now rather than wait. The full run waits them out.
        for i in range(1, PAST_JOBS + 1):
            connection.pexpire(keys.worker_key(f"old-{i}"), 1)
    release2 = procs.worker("--count", "2", "--name", "new", env=environment)
    wait_for(
        lambda: statuses(connection, ids)["finished"] == PAST_JOBS,
        size(60, 240),
        what="the jobs to run again",
    )
    recovered_in = time.monotonic() - killed_at
    counts = ledger.counts()
    assert {counts[f"start:{n}"] for n in names} == {2}, "each job was started again"
    assert {counts[f"done:{n}"] for n in names} == {1}, "and finished once"
    wait_for(lambda: leftovers(connection, QUEUES) == dict.fromkeys(leftovers(connection, QUEUES), 0), 15)
    procs.stop(release2)

    report(
        "5_deploy_past_grace",
        jobs_killed=PAST_JOBS,
        grace_seconds=PAST_GRACE,
        given_back=PAST_JOBS,
        lost=0,
        finished_after_restart=PAST_JOBS,
        heartbeat_expiry_waited=FULL,
        seconds_from_kill_to_finished=round(recovered_in, 1),
    )
