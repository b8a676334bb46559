"""`atomq up`: everything starts, jobs flow, Ctrl-C leaves nothing running, data survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from atomq.core.settings import load_settings
from atomq.engine.task_queue import TaskQueue
from testkit.support import ROOT, cli_env, free_port, group_pids, wait_for


def _start_up(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atomq", "up", "--workers", "1"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _env_file(var: Path) -> dict[str, str]:
    text = (var / "atomq.env").read_text() if (var / "atomq.env").exists() else ""
    return dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines() if "=" in line)


def _redis_url(var: Path) -> str:
    return wait_for(lambda: _env_file(var).get("REDIS_URL"), 20, what="atomq.env")


@pytest.mark.slow
def test_up_runs_everything_stops_cleanly_and_keeps_jobs(tmp_path):
    var = tmp_path / "var"
    env = cli_env("", var, ATOMQ_API_PORT=str(free_port()))
    env.pop("REDIS_URL")
    log = tmp_path / "up.log"
    up = _start_up(env, tmp_path, log)
    try:
        url = _redis_url(var)
        wait_for(lambda: "atomq is up" in log.read_text(), 30, what="the banner")
        # The banner's advice, `source var/atomq.env`, points commands run afterwards at this Redis.
        outside = {k: v for k, v in env.items() if k not in ("REDIS_URL", "ATOMQ_API_TOKEN")}
        sourced = subprocess.run(
            ["bash", "-c", f"source {var / 'atomq.env'} && {sys.executable} -c "
             "'import os; print(os.environ[\"REDIS_URL\"], os.environ[\"ATOMQ_API_TOKEN\"])'"],
            env=outside, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sourced.returncode == 0, sourced.stderr
        assert sourced.stdout.split() == [url, (var / "api-token").read_text().strip()]
        import httpx

        token = (var / "api-token").read_text().strip()
        assert f"Token     {token}" in log.read_text()
        api = next(
            line.split()[1] for line in log.read_text().splitlines() if line.strip().startswith("API ")
        )
        assert httpx.get(f"{api}/api/v1/tasks/queues").status_code == 401
        queues = httpx.get(f"{api}/api/v1/tasks/queues", headers={"Authorization": f"Bearer {token}"})
        assert queues.status_code == 200
        assert [q["name"] for q in queues.json()["queues"]][:4] == [
            "high_priority",
            "social_media",
            "workflows",
            "default",
        ]
        tq = TaskQueue(settings=load_settings(redis_url=url, task_modules=["tests.jobs"]))
        job = tq.enqueue("add", a=20, b=22)
        wait_for(lambda: tq.get_job_status(job.id)["status"] == "finished", 20, what="the job to run")
        later = tq.enqueue_in(timedelta(days=1), "add", a=1, b=1)
        tq.connection.close()
        pids_before = group_pids(up.pid)
        assert len(pids_before) >= 1
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        output = log.read_text()
        assert "nothing left running" in output
        assert "Traceback" not in output
        # Nothing started by `atomq up` survives it: not Redis, not the workers.
        time.sleep(0.2)
        leftovers = [pid for pid in _all_pids() if _environ_has(pid, str(var))]
        assert leftovers == [], leftovers

        up = _start_up(env, tmp_path, log)
        url = _redis_url_changed(var, url)
        tq = TaskQueue(settings=load_settings(redis_url=url, task_modules=["tests.jobs"]))
        assert tq.get_job_status(later.id)["status"] == "scheduled"
        assert tq.get_job_status(job.id)["result"] == 42
        tq.connection.close()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
    for pid in _all_pids():
        if _environ_has(pid, str(var)):
            os.kill(pid, signal.SIGKILL)


def _redis_url_changed(var: Path, old: str) -> str:
    def fresh() -> str | None:
        url = _env_file(var).get("REDIS_URL")
        return url if url and url != old else None

    return wait_for(fresh, 20, what="a new atomq.env")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]


def _environ_has(pid: int, needle: str) -> bool:
    """Whether a live process mentions ``needle`` in its command line or environment."""
    try:
        if "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            return False
        blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return needle.encode() in blob


def test_up_explains_a_missing_redis_server(tmp_path):
    env = cli_env("", tmp_path / "var", ATOMQ_REDIS_SERVER=str(tmp_path / "no-such-redis-server"))
    env.pop("REDIS_URL")
    result = subprocess.run(
        [sys.executable, "-m", "atomq", "up"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot run redis-server" in result.stderr
    assert "Traceback" not in result.stderr
