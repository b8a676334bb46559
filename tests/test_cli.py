"""Every CLI command through a real subprocess: output, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from atomq.cli import exits
from atomq.core import keys
from testkit.support import GUIDE_STATUS_KEYS, RedisServer, cli_env, free_port, run_cli, wait_for


def test_enqueue_status_and_worker_round_trip(cli, burst):
    result = cli("enqueue", "add", "a=2", "b=40")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    queued = json.loads(cli("status", job_id, "--json").stdout)
    assert queued["status"] == "queued"
    burst()
    done = cli("status", job_id)
    assert done.returncode == 0
    assert "status: finished" in done.stdout
    assert "result: 42" in done.stdout
    as_json = json.loads(cli("status", job_id, "--json").stdout)
    assert list(as_json) == GUIDE_STATUS_KEYS


def test_enqueue_parses_json_values_and_options(cli, tq, connection):
    result = cli(
        "enqueue", "echo", 'value={"n": [1, 2]}', "--queue", "default", "--job-id", "cli-1", "--at-front"
    )
    assert result.returncode == 0, result.stderr
    job = tq.fetch_job("cli-1")
    assert job.kwargs == {"value": {"n": [1, 2]}}
    assert job.origin == "default"
    later = cli("enqueue", "add", "a=1", "b=1", "--in", "30m", "--json")
    scheduled = json.loads(later.stdout)
    assert scheduled["status"] == "scheduled"
    due = connection.zscore(keys.scheduled_key("default"), scheduled["job_id"])
    assert abs(due - (time.time() + 1800)) < 30
    at = cli("enqueue", "add", "a=1", "b=1", "--at", "2031-01-01T09:00:00+01:00", "--json")
    at_id = json.loads(at.stdout)["job_id"]
    assert (
        connection.zscore(keys.scheduled_key("default"), at_id)
        == datetime(2031, 1, 1, 8, tzinfo=UTC).timestamp()
    )


def test_enqueue_wait_reports_the_outcome(cli, procs):
    procs.worker()
    ok = cli("enqueue", "add", "a=1", "b=2", "--wait", "20")
    assert ok.returncode == 0, ok.stderr
    assert "result: 3" in ok.stdout
    bad = cli("enqueue", "fail", "message=nope", "--wait", "20")
    assert bad.returncode == exits.FAILURE
    assert "ValueError: nope" in bad.stdout


def test_bad_input_gets_one_line_and_a_named_exit_code(cli, env):
    cases = [
        (("enqueue", "no_such_task"), exits.NOT_FOUND, "no task is registered as 'no_such_task'"),
        (("enqueue", "add", "a=1"), exits.USAGE, "missing a required argument: 'b'"),
        (("enqueue", "add", "oops"), exits.USAGE, "expected key=value"),
        (("enqueue", "add", "a=1", "b=2", "--job-id", "a b"), exits.USAGE, "invalid job id"),
        (("enqueue", "add", "a=1", "b=2", "--in", "soon"), exits.USAGE, "cannot read 'soon' as a duration"),
        (("enqueue", "add", "a=1", "b=2", "--at", "tomorrow"), exits.USAGE, "ISO-8601"),
        (
            ("enqueue", "add", "a=1", "b=2", "--in", "1m", "--at", "2031-01-01T00:00:00"),
            exits.USAGE,
            "not both",
        ),
        (("status", "nope"), exits.NOT_FOUND, "no job with id 'nope'"),
        (("status", "../etc/passwd"), exits.NOT_FOUND, "not a valid job id"),
        (("cancel", "nope"), exits.NOT_FOUND, "no job with id"),
        (("failed", "--job-id", "nope"), exits.NOT_FOUND, "no job with id"),
        (("requeue",), exits.USAGE, "say what to requeue"),
        (("requeue", "--job-id", "nope"), exits.NOT_FOUND, "no job with id"),
        (("info", "--queue", "bad name"), exits.USAGE, "invalid queue name"),
        (("empty", "--queue", "bad name", "--yes"), exits.USAGE, "invalid queue name"),
        (("worker", "bad name", "--burst"), exits.USAGE, "invalid queue name"),
    ]
    for args, code, message in cases:
        result = cli(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert len(result.stderr.strip().splitlines()) <= 3, (args, result.stderr)


def test_the_atomq_command_finds_task_modules_in_the_current_directory(redis_url, tmp_path):
    # What a user does: tasks in their project, `atomq` run from there, no PYTHONPATH.
    project = tmp_path / "project"
    project.mkdir()
    (project / "welcome.py").write_text(
        "from atomq import task\n\n\n"
        "@task('send_welcome_email')\n"
        "def send_welcome_email(user_id: str) -> dict:\n"
        "    return {'sent_to': user_id}\n"
    )
    env = cli_env(redis_url, tmp_path / "var", ATOMQ_TASK_MODULES="welcome")
    env.pop("PYTHONPATH")
    atomq = str(Path(sys.executable).with_name("atomq"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [atomq, *args], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )

    queued = run("enqueue", "send_welcome_email", "user_id=user_456")
    assert queued.returncode == 0, queued.stderr
    assert run("worker", "--burst").returncode == 0
    status = json.loads(run("status", queued.stdout.strip(), "--json").stdout)
    assert status["status"] == "finished" and status["result"] == {"sent_to": "user_456"}


@pytest.mark.slow
def test_a_unix_socket_url_works_end_to_end(tmp_path):
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", extra=["--unixsocket", str(socket_path)]).start()
    try:
        env = cli_env(f"unix://{socket_path}?db=2", tmp_path / "var")
        queued = run_cli(env, "enqueue", "add", "a=2", "b=3")
        assert queued.returncode == 0, queued.stderr
        job_id = queued.stdout.strip()
        assert run_cli(env, "worker", "--burst").returncode == 0
        status = json.loads(run_cli(env, "status", job_id, "--json").stdout)
        assert status["status"] == "finished" and status["result"] == 5
        direct = redis.Redis(unix_socket_path=str(socket_path), db=2)
        assert direct.exists(f"rq:job:{job_id}")  # db 2, as the URL asked
        direct.close()
    finally:
        server.stop()
    gone = run_cli(cli_env(f"unix://{socket_path}", tmp_path / "var"), "info")
    assert gone.returncode == exits.UNAVAILABLE
    assert (
        gone.stderr.strip()
        == f"error: cannot connect to Redis at unix://{socket_path} db 0: No such file or directory"
    )


def test_unreachable_or_malformed_redis_is_one_clear_line(tmp_path):
    port = free_port()
    env = cli_env(f"redis://:s3cret@127.0.0.1:{port}/3", tmp_path)
    for command in (
        ("info",),
        ("workers",),
        ("status", "x"),
        ("enqueue", "add", "a=1", "b=2"),
        ("worker", "--burst"),
    ):
        result = run_cli(env, *command)
        assert result.returncode == exits.UNAVAILABLE, (command, result.stderr)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1, (command, line)
        assert f"127.0.0.1:{port} db 3" in line
        assert "s3cret" not in line
    env = cli_env("http://example.com", tmp_path)
    result = run_cli(env, "info")
    assert result.returncode == exits.CONFIG
    assert "REDIS_URL must start with redis://, rediss:// or unix://" in result.stderr
    env = cli_env(
        "", tmp_path, REDIS_HOST="127.0.0.1", REDIS_PORT=str(port), REDIS_DB="2", REDIS_PASSWORD="pw"
    )
    env.pop("REDIS_URL")
    result = run_cli(env, "info")
    assert result.returncode == exits.UNAVAILABLE
    assert f"127.0.0.1:{port} db 2" in result.stderr and "pw" not in result.stderr.replace("db 2", "")
    env = cli_env("redis://localhost:6379/0", tmp_path, ATOMQ_TIMEZONE="Mars/Olympus")
    result = run_cli(env, "info")
    assert result.returncode == exits.CONFIG
    assert "unknown IANA timezone 'Mars/Olympus'" in result.stderr


def test_info_shows_counts_per_queue(cli, tq, burst):
    tq.enqueue("add", a=1, b=1)
    tq.enqueue("fail")
    burst()
    tq.enqueue("add", a=1, b=1)
    tq.enqueue_in(timedelta(hours=1), "add", a=1, b=1)
    result = cli("info")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("default"))
    assert row.split()[:7] == ["default", "│", "1", "│", "0", "│", "1"]
    data = json.loads(cli("info", "--json", "--queue", "default").stdout)
    (default,) = data["queues"]
    assert {k: default[k] for k in ("queued", "started", "finished", "failed", "scheduled")} == {
        "queued": 1,
        "started": 0,
        "finished": 1,
        "failed": 1,
        "scheduled": 1,
    }
    assert default["oldest_queued_age"] >= 0


def test_workers_lists_running_workers(cli, procs, tq):
    procs.worker("--name", "listed", "high_priority", "default")
    wait_for(lambda: tq.connection.scard("rq:workers"), 15)
    result = cli("workers")
    assert "listed" in result.stdout and "high_priority,default" in result.stdout
    (worker,) = json.loads(cli("workers", "--json").stdout)
    assert worker["name"] == "listed" and worker["queues"] == ["high_priority", "default"]
    assert worker["state"] in ("idle", "started")


def test_scheduler_lists_due_times_and_runs_standalone(cli, tq):
    job = tq.enqueue_in(timedelta(hours=2), "add", a=1, b=1)
    soon = tq.enqueue_at(datetime.now(UTC) + timedelta(seconds=1), "add", a=1, b=2)
    listing = cli("scheduler")
    assert listing.returncode == 0
    assert job.id in listing.stdout and soon.id in listing.stdout
    assert "none - scheduled jobs will not run" in listing.stdout
    data = json.loads(cli("scheduler", "--json").stdout)
    assert [j["job_id"] for j in data["jobs"]] == [soon.id, job.id]
    time.sleep(1.2)
    assert cli("scheduler", "run", "--burst").returncode == 0
    assert tq.get_job_status(soon.id)["status"] == "queued"
    assert tq.get_job_status(job.id)["status"] == "scheduled"


def test_failed_lists_and_shows_the_traceback(cli, tq, burst):
    job = tq.enqueue("fail", message="the reason")
    burst()
    listing = cli("failed")
    assert job.id in listing.stdout and "ValueError: the reason" in listing.stdout
    detail = cli("failed", "--job-id", job.id)
    assert detail.returncode == 0
    assert "Traceback (most recent call last)" in detail.stdout
    assert "raise ValueError(message)" in detail.stdout
    assert json.loads(cli("failed", "--json").stdout)[0]["job_id"] == job.id


def test_requeue_by_queue_and_by_id(cli, tq, burst, connection):
    first = tq.enqueue("fail")
    second = tq.enqueue("fail", queue="workflows")
    burst()
    by_id = cli("requeue", "--job-id", first.id)
    assert by_id.returncode == 0 and "requeued 1 job(s)" in by_id.stdout
    assert tq.get_job_status(first.id)["status"] == "queued"
    assert connection.lrange(keys.queue_key("default"), 0, -1) == [first.id.encode()]
    by_queue = cli("requeue", "--queue", "workflows")
    assert "requeued 1 job(s)" in by_queue.stdout
    assert tq.get_job_status(second.id)["status"] == "queued"
    again = cli("requeue", "--job-id", first.id)
    assert again.returncode == exits.CONFLICT and "not failed" in again.stderr
    burst()
    assert cli("requeue", "--all").stdout.strip() == "requeued 2 job(s)"


def test_empty_asks_before_deleting(cli, tq, connection):
    for _ in range(3):
        tq.enqueue("add", a=1, b=1, queue="social_media")
    declined = cli("empty", "--queue", "social_media", input="n\n")
    assert declined.returncode == exits.FAILURE
    assert "social_media (3 job(s))" in declined.stdout
    assert connection.llen(keys.queue_key("social_media")) == 3
    accepted = cli("empty", "--queue", "social_media", input="y\n")
    assert accepted.returncode == 0 and "3 job(s) deleted" in accepted.stdout
    assert connection.llen(keys.queue_key("social_media")) == 0
    assert connection.keys("rq:job:*") == []
    tq.enqueue("add", a=1, b=1, queue="social_media")
    assert cli("empty", "--queue", "social_media", "--yes").returncode == 0


def test_cancel_queued_and_finished(cli, tq, burst):
    job = tq.enqueue("add", a=1, b=1)
    result = cli("cancel", job.id)
    assert result.returncode == 0 and f"job {job.id} canceled" in result.stdout
    done = tq.enqueue("add", a=1, b=1)
    burst()
    refused = cli("cancel", done.id)
    assert refused.returncode == exits.CONFLICT
    assert "already ended (finished)" in refused.stderr


def test_tasks_lists_registered_tasks(cli):
    data = json.loads(cli("tasks", "--json").stdout)
    names = {t["name"]: t for t in data}
    assert names["ping"]["queue"] == "default"
    assert names["echo"]["queue"] == "high_priority"


def test_doctor_fails_without_workers_and_passes_with_them(cli, procs):
    lonely = cli("doctor", "--timeout", "1")
    assert lonely.returncode == exits.FAILURE
    assert "no worker is running" in lonely.stdout
    assert "persistence" in lonely.stdout and "keeps nothing on disk" in lonely.stdout
    procs.worker()
    wait_for(lambda: "1 worker(s)" in cli("doctor", "--json", "--timeout", "1").stdout, 20)
    healthy = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(healthy.stdout)}
    assert checks["ping"]["status"] == "ok", checks["ping"]
    assert checks["workers"]["status"] == "ok"
    assert checks["scheduler"]["status"] == "ok"
    assert checks["persistence"]["status"] == "warn"
    assert healthy.returncode == 0


def test_doctor_warns_about_an_evicting_redis(cli, connection):
    connection.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = cli("doctor", "--json", "--timeout", "0.5")
        checks = {c["name"]: c for c in json.loads(result.stdout)}
        assert checks["eviction"]["status"] == "fail"
        assert "allkeys-lru" in checks["eviction"]["detail"]
    finally:
        connection.config_set("maxmemory-policy", "noeviction")


def test_every_option_has_an_environment_variable(cli, env, tmp_path):
    import subprocess
    import sys

    env = dict(env, ATOMQ_ENQUEUE_QUEUE="workflows")
    result = subprocess.run(
        [sys.executable, "-m", "atomq", "enqueue", "add", "a=1", "b=1", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert json.loads(result.stdout)["status"] == "queued"
    from atomq.core.settings import load_settings
    from atomq.engine.task_queue import TaskQueue

    tq = TaskQueue(settings=load_settings(redis_url=env["REDIS_URL"], task_modules=["tests.jobs"]))
    assert tq.fetch_job(json.loads(result.stdout)["job_id"]).origin == "workflows"
