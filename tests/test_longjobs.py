"""Long-running jobs: progress while running, liveness, a clean stop, stop after the grace period."""

from __future__ import annotations

import os
import signal
import time

from atomq.features.longjobs.progress import job_view, report_progress
from atomq.features.longjobs.stopping import stop_job
from testkit.support import GUIDE_STATUS_KEYS, wait_for


def view(tq, job_id):
    return job_view(tq.connection, tq.fetch_job(job_id))


def test_progress_is_visible_while_the_job_runs(tq, procs, cli, tmp_path):
    procs.worker("--no-scheduler")
    job = tq.enqueue("long_steps", steps=20, step_seconds=0.25)
    seen = wait_for(
        lambda: (v := view(tq, job.id))["progress"] and v["progress"]["fraction"] >= 0.2 and v, 20
    )
    assert seen["job"]["status"] == "started"
    assert set(seen["job"]) == set(GUIDE_STATUS_KEYS)
    assert seen["progress"]["message"].startswith("step ")
    assert 0.2 <= seen["progress"]["fraction"] < 1
    assert seen["liveness"]["state"] == "alive"
    assert seen["liveness"]["heartbeat_age"] < 3
    shown = cli("progress", job.id)
    assert shown.returncode == 0, shown.stderr
    assert "step " in shown.stdout and "%" in shown.stdout
    wait_for(lambda: tq.get_job_status(job.id)["status"] == "finished", 30)
    final = view(tq, job.id)
    assert final["progress"]["fraction"] == 1.0
    assert final["liveness"]["state"] == "ended"
    status = cli("status", job.id)
    assert "progress: 100.0%  step 20 of 20" in status.stdout and "liveness: ended" in status.stdout


def test_report_progress_outside_a_worker_does_nothing():
    report_progress(0.5, "called directly, as the guide's job testing does")


def test_a_dead_job_is_reported_stalled_within_seconds(tq, procs, tmp_path):
    procs.worker("--no-scheduler")
    started = tmp_path / "started"
    job = tq.enqueue("long_steps", steps=100, step_seconds=0.2, started_file=str(started))
    horse = int(wait_for(lambda: started.exists() and started.read_text(), 15))
    wait_for(lambda: view(tq, job.id)["liveness"]["state"] == "alive", 10)
    os.kill(horse, signal.SIGSTOP)  # frozen: the process is there but the job makes no progress
    try:
        t0 = time.monotonic()
        wait_for(lambda: view(tq, job.id)["liveness"]["state"] == "stalled", 15)
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(horse, signal.SIGKILL)  # no need to wait for the rest of the job
        os.kill(horse, signal.SIGCONT)


def test_stop_lets_a_cooperative_job_leave_cleanly(tq, procs, tmp_path):
    procs.worker("--no-scheduler")
    job = tq.enqueue("long_steps", steps=200, step_seconds=0.1)
    wait_for(lambda: (view(tq, job.id)["progress"] or {}).get("fraction", 0) > 0, 20)
    t0 = time.monotonic()
    result = stop_job(tq, job.id, grace=30, wait=15)
    assert result["job"]["status"] == "stopped"
    assert time.monotonic() - t0 < 10  # it left at its next check, long before the grace ran out
    assert "stopped on request" in result["job"]["error"]
    assert result["liveness"]["stop_requested_at"]
    after = tq.enqueue("add", a=1, b=1)
    wait_for(lambda: tq.get_job_status(after.id)["status"] == "finished", 10)


def test_stop_kills_a_job_that_ignores_it_after_the_grace_period(tq, procs, cli, tmp_path):
    procs.worker("--no-scheduler")
    job = tq.enqueue("long_steps", steps=200, step_seconds=0.1, cooperative=False)
    wait_for(lambda: tq.get_job_status(job.id)["status"] == "started", 20)
    t0 = time.monotonic()
    shown = cli("stop", job.id, "--grace", "2", "--wait", "20")
    elapsed = time.monotonic() - t0
    assert shown.returncode == 0, shown.stderr
    assert "stopped" in shown.stdout
    assert tq.get_job_status(job.id)["status"] == "stopped"
    assert 1.5 <= elapsed < 15


def test_stop_of_a_queued_job_cancels_it_and_bad_input_is_refused(tq, cli):
    job = tq.enqueue("add", a=1, b=2)
    assert stop_job(tq, job.id)["job"]["status"] == "canceled"
    bad = cli("stop", job.id)
    assert bad.returncode == 6 and "already ended" in bad.stderr
    missing = cli("stop", "nope")
    assert missing.returncode == 5
    grace = cli("stop", job.id, "--grace", "-1")
    assert grace.returncode == 2


def test_progress_and_stop_through_the_api(api, tq):
    job = tq.enqueue("add", a=1, b=2)
    read, write = api.auth("read"), api.auth("write")
    shown = api.get(f"/api/v1/tasks/jobs/{job.id}/progress", headers=read)
    assert shown.status_code == 200
    body = shown.json()
    assert body["job"]["status"] == "queued" and body["progress"] is None
    assert body["liveness"]["state"] == "waiting"
    assert api.post(f"/api/v1/tasks/jobs/{job.id}/stop", headers=read).status_code == 403
    bad = api.post(f"/api/v1/tasks/jobs/{job.id}/stop", json={"grace": -1}, headers=write)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "grace"
    stopped = api.post(f"/api/v1/tasks/jobs/{job.id}/stop", json={"grace": 5}, headers=write)
    assert stopped.status_code == 200 and stopped.json()["job"]["status"] == "canceled"
    again = api.post(f"/api/v1/tasks/jobs/{job.id}/stop", headers=write)
    assert again.status_code == 409
    assert api.get("/api/v1/tasks/jobs/nope/progress", headers=read).status_code == 404
