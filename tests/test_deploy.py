"""The deploy kit: systemd units, environment files, logrotate, redis.conf, Prometheus, Grafana.

Where the real tool is on the machine it does the checking (systemd-analyze, promtool,
logrotate, redis-server); the units' commands are run for real with the example environment.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from testkit.support import ROOT, Processes, free_port, run_cli, wait_for

DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service")) + sorted((DEPLOY / "systemd").glob("*.timer"))
ATOMQ = str(Path(sys.executable).with_name("atomq"))

#: The metric names the rules and the dashboard rely on: the contract with atomq's /metrics.
METRICS = {
    "atomq_queue_jobs",
    "atomq_queue_oldest_job_age_seconds",
    "atomq_workers",
    "atomq_jobs_finished_total",
    "atomq_jobs_failed_total",
    "atomq_leader_present",
    "atomq_queue_workers",
    "atomq_queue_paused_since_timestamp_seconds",
    "up",
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def unit_values(name: str, key: str) -> list[str]:
    """Every value of a repeatable key (configparser keeps only the last)."""
    text = (DEPLOY / "systemd" / name).read_text()
    return re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)


def env_file(name: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "env" / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    for path in UNITS:
        text = path.read_text().replace("/opt/atomq/venv/bin/atomq", ATOMQ)
        (tmp_path / path.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / p.name) for p in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "atomq" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_services_restart_always_and_workers_outlast_the_longest_job():
    from atomq.core.settings import DEFAULT_JOB_TIMEOUT
    from atomq.engine.tasks import load_task_modules, registry

    for name in ("atomq-api.service", "atomq-workers.service", "atomq-scheduler.service"):
        service = unit(name)["Service"]
        assert service["Restart"] == "always", name
        assert service["KillMode"] == "mixed", name  # SIGTERM to the main process only
        assert "/etc/atomq/atomq.env" in unit_values(name, "EnvironmentFile")
    stop = int(unit("atomq-workers.service")["Service"]["TimeoutStopSec"])
    load_task_modules([])
    longest = max(
        [DEFAULT_JOB_TIMEOUT, int(env_file("atomq.env")["ATOMQ_DEFAULT_TIMEOUT"])]
        # atomq's own tasks: the suite's test tasks (some deliberately long) are not deployed.
        + [spec.timeout for spec in registry if spec.timeout and spec.func.__module__.startswith("atomq.")]
    )
    assert stop > longest
    timer = unit("atomq-backup.timer")["Timer"]
    assert timer["Persistent"] == "true" and timer["OnCalendar"]


def _service_env(name: str, tmp_path: Path, redis_url: str) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment, as systemd would build them, pointed at test resources."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMQ_", "REDIS_", "DATABASE_"))}
    for path in unit_values(name, "EnvironmentFile"):
        env.update(env_file(Path(path.lstrip("-")).name))
    for assignment in unit_values(name, "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = value
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{tmp_path / 'atomq.db'}",
        ATOMQ_TASK_MODULES="tests.jobs",
        ATOMQ_DATA_DIR=str(tmp_path / "lib"),
        ATOMQ_BACKUP_DIR=str(tmp_path / "backups"),
        ATOMQ_API_PORT=str(free_port()),
        PYTHONPATH=str(ROOT),
    )
    for key, value in list(env.items()):
        if value.startswith("/var/log/atomq/"):
            env[key] = str(tmp_path / "log" / Path(value).name)
    command = unit(name)["Service"]["ExecStart"].split()
    assert command[0] == "/opt/atomq/venv/bin/atomq"
    return [sys.executable, "-m", "atomq", *command[1:]], env


@pytest.mark.slow
def test_the_units_commands_run_with_the_example_environment(redis_url, tmp_path, tq):
    processes = Processes({}, tmp_path / "out")
    started = {}
    try:
        run_cli(_service_env("atomq-api.service", tmp_path, redis_url)[1], "db", "upgrade")
        for name in ("atomq-workers.service", "atomq-scheduler.service", "atomq-api.service"):
            command, env = _service_env(name, tmp_path, redis_url)
            process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
            processes.started.append(process)
            started[name] = (process, env)
        count = int(env_file("atomq.env")["ATOMQ_WORKER_COUNT"])
        from atomq.ops import monitor

        wait_for(lambda: len(monitor.list_workers(tq.connection)) == count, 60, what=f"{count} workers")
        wait_for(lambda: monitor.scheduler_status(tq.connection)["leader"], 30, what="the scheduler")
        api_env = started["atomq-api.service"][1]
        health = f"http://127.0.0.1:{api_env['ATOMQ_API_PORT']}/health"

        def api_up() -> bool:
            try:
                with urllib.request.urlopen(health, timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(api_up, 30, what="the API")
        job = tq.enqueue_in(0.5, "add", a=2, b=3)  # the scheduler moves it, a worker runs it
        wait_for(lambda: tq.get_job_status(job.id)["status"] == "finished", 30, what="the job")
        failing = tq.enqueue("fail", message="logged with its id")
        wait_for(lambda: tq.get_job_status(failing.id)["status"] == "failed", 30, what="the failing job")
        for log in ("worker.log", "scheduler.log", "api.log"):
            assert (tmp_path / "log" / log).stat().st_size > 0, log
        worker_log = tmp_path / "log" / "worker.log"
        wait_for(lambda: failing.id in worker_log.read_text(), 10, what="the failure in worker.log")
        for name, (process, _) in started.items():
            process.send_signal(signal.SIGTERM)
            # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts that as clean.
            assert process.wait(30) in (0, -signal.SIGTERM), name
        backup_cmd, backup_env = _service_env("atomq-backup.service", tmp_path, redis_url)
        tq.connection.config_set("repl-diskless-sync-delay", 0)
        done = subprocess.run(
            backup_cmd, env=backup_env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert len(list((tmp_path / "backups").glob("atomq-backup-*"))) == 1
    finally:
        processes.stop_all()


@pytest.mark.skipif(not shutil.which("logrotate"), reason="logrotate is not installed")
def test_logrotate_rotates_while_workers_keep_writing(env, procs, tq, tmp_path):
    logs = tmp_path / "log"
    config = (DEPLOY / "logrotate" / "atomq").read_text()
    config = config.replace("/var/log/atomq/", f"{logs}/").replace("atomq atomq", "root root")
    (tmp_path / "logrotate.conf").write_text(config)
    procs.worker("--log-file", str(logs / "worker.log"), "--no-scheduler")
    # Failures are logged at ERROR with the job's id, whatever the worker class.
    first = tq.enqueue("fail", message="before rotation")
    wait_for(
        lambda: logs.joinpath("worker.log").exists() and first.id in logs.joinpath("worker.log").read_text()
    )
    done = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "state"), str(tmp_path / "logrotate.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert first.id in (logs / "worker.log.1").read_text()
    # atomq looks for a rotated file at most once a second; lines written meanwhile land in
    # worker.log.1, which delaycompress leaves uncompressed until the next rotation.
    time.sleep(1.1)
    second = tq.enqueue("fail", message="after rotation")
    wait_for(
        lambda: logs.joinpath("worker.log").exists() and second.id in logs.joinpath("worker.log").read_text()
    )
    assert second.id not in (logs / "worker.log.1").read_text()  # no reload was needed


def test_redis_conf_keeps_jobs_safe(tmp_path):
    """The shipped redis.conf starts, with AOF every second, noeviction and the ACL users."""
    from testkit.acl import PASSWORDS, acl_with_passwords

    port = free_port()
    process = subprocess.Popen(
        [
            shutil.which("redis-server"), str(DEPLOY / "redis" / "redis.conf"),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--logfile", str(tmp_path / "redis.log"), "--pidfile", str(tmp_path / "redis.pid"),
            "--aclfile", str(acl_with_passwords(tmp_path)), "--supervised", "no",
        ],
        start_new_session=True,
    )  # fmt: skip
    admin_url = f"redis://admin:{PASSWORDS['admin']}@127.0.0.1:{port}/0"
    try:
        admin = redis.Redis.from_url(admin_url)

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                return bool(admin.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 15, what="redis-server with deploy/redis/redis.conf")
        config = admin.config_get("*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction" and int(config["maxmemory"]) > 0
        assert config["protected-mode"] == "yes"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        from atomq.cli.common import Runtime
        from atomq.ops.doctor import run_checks

        checks = {c.name: c for c in run_checks(Runtime(admin_url).settings, ping_timeout=0.5)}
        assert checks["persistence"].status == "ok", checks["persistence"].detail
        assert checks["eviction"].status == "ok", checks["eviction"].detail
        admin.close()
    finally:
        process.terminate()
        process.wait(30)


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed (Debian package prometheus)")
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    rules = DEPLOY / "prometheus" / "atomq-alerts.yml"
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "atomq-alerts.test.yml"],
        cwd=rules.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = set(re.findall(r"^\s*- alert: (\w+)$", rules.read_text(), flags=re.MULTILINE))
    assert {
        "AtomqJobFailureRateHigh",
        "AtomqQueueBacklog",
        "AtomqOldestJobWaiting",
        "AtomqQueueNotServed",
        "AtomqNoWorkers",
        "AtomqNoScheduler",
    } <= names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "atomq-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


@pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed (Debian package prometheus)")
def test_grafana_queries_are_valid_promql(tmp_path):
    lines = ["groups:", "  - name: grafana", "    rules:"]
    for index, query in enumerate(_dashboard_queries()):
        if query.startswith("label_values("):
            continue
        promql = query.replace("$__rate_interval", "5m").replace('"$queue"', '".*"')
        lines += [f"      - record: grafana:panel{index}", f"        expr: {json.dumps(promql)}"]
    (tmp_path / "grafana.yml").write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "grafana.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_and_dashboard_use_only_the_agreed_metrics():
    rules = "\n".join(
        re.findall(r"^\s*expr: (.*)$", (DEPLOY / "prometheus" / "atomq-alerts.yml").read_text(), re.M)
    )
    rules += (DEPLOY / "prometheus" / "atomq-alerts.yml").read_text().split("groups:")[1]
    used = set(re.findall(r"\batomq_[a-z_]+\b", rules + "\n".join(_dashboard_queries())))
    assert used - METRICS == set(), f"metrics not in the contract: {sorted(used - METRICS)}"
    assert METRICS - {"up"} <= used
