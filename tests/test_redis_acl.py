"""deploy/redis/users.acl gives workers and the API exactly what they use: a real worker and the
API run everything they do against a redis-server started with that file, and Redis refuses
nothing; what they must not do (FLUSHALL, KEYS, CONFIG, BLMOVE for the API...) is refused."""

from __future__ import annotations

import subprocess

import pytest
import redis

from testkit import acl_scenario
from testkit.acl import ACL_FILE, url
from testkit.support import cli_env, run_cli

pytestmark = pytest.mark.slow


def test_workers_and_api_run_everything_with_least_privilege(acl_redis, tmp_path):
    admin = redis.Redis.from_url(url(acl_redis, "admin"))
    outcome = acl_scenario.run(
        {"worker": url(acl_redis, "worker"), "api": url(acl_redis, "api")}, tmp_path / "s"
    )
    processes = outcome["processes"]
    try:
        refusals = admin.acl_log()
        assert refusals == [], "Redis refused commands; add them to deploy/redis/users.acl:\n" + "\n".join(
            f"{r['username']}: {r['object']} ({r['reason']}, {r['context']})" for r in refusals
        )
        for process in outcome["logs"]:
            log = processes.log(process)
            assert "NOPERM" not in log and "no permissions" not in log, log[-3000:]
    finally:
        processes.stop_all()
    statuses = outcome["statuses"]
    assert statuses["failed"] == "failed" and statuses["retried"] == "finished"
    assert statuses["timed_out"] == "failed" and statuses["stopped"] == "stopped"
    assert statuses["scheduled_ran"] == statuses["scheduled_at"] == statuses["dependent"] == "finished"
    assert statuses["canceled_scheduled"] == statuses["parked_canceled"] == "canceled"
    assert statuses["far_future"] == "scheduled"
    assert outcome["killed"] in ("failed", "finished")  # recovered, not left started
    assert outcome["emptied"] == 1
    assert set(outcome["http"].values()) == {200}
    assert admin.acl_log() == []
    admin.close()


@pytest.mark.parametrize(
    "command",
    [
        ("BLMOVE", "rq:queue:default", "rq:queue:x", "LEFT", "RIGHT", "0.01"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "dir"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("SHUTDOWN",),
        ("ACL", "LIST"),
        ("BLPOP", "rq:queue:default", "0.01"),
        ("GET", "someone-elses-key"),
    ],
    ids=lambda c: c[0] if c[0] != "GET" else "GET-outside-atomq",
)
def test_the_api_user_cannot(acl_redis, command):
    api = redis.Redis.from_url(url(acl_redis, "api"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        api.execute_command(*command)
    api.close()


@pytest.mark.parametrize("command", [("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*")])
def test_the_worker_user_cannot(acl_redis, command):
    worker = redis.Redis.from_url(url(acl_redis, "worker"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.execute_command(*command)
    worker.close()


def test_no_password_no_access_and_backups_use_the_backup_user(acl_redis, tmp_path):
    anonymous = redis.Redis(port=acl_redis.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    backup = redis.Redis.from_url(url(acl_redis, "backup"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        backup.get("rq:queue:default")
    redis.Redis.from_url(url(acl_redis, "admin")).set("atomq:probe", "1")
    env = cli_env(url(acl_redis, "backup"), tmp_path / "var")
    done = run_cli(env, "backup", "--skip-database", "--to", str(tmp_path / "backups"))
    assert done.returncode == 0, done.stderr
    assert ", 1 key(s)" in done.stdout


def test_redis_will_not_start_until_the_passwords_are_set(tmp_path):
    import shutil

    from testkit.support import free_port

    done = subprocess.run(
        [
            shutil.which("redis-server"),
            "--port",
            str(free_port()),
            "--bind",
            "127.0.0.1",
            "--aclfile",
            str(ACL_FILE),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "Aborting Redis startup because of ACL errors" in done.stdout + done.stderr
