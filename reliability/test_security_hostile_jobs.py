"""Jobs written by hand into Redis by someone who can reach it but not deploy code: one naming
an unregistered function (``os.system``), others carrying pickles in every field RQ would
unpickle (payload, meta, exception, result, result stream). Each pickle, if ever loaded, runs
``touch <marker>``, so "never unpickled" is a file that must not appear.

Every reader goes over them: the API (every endpoint that reads or acts on jobs, text and JSON),
the CLI (every command that shows jobs), the dashboard (pages, fragments, buttons), then both
worker classes. Nothing runs, nothing is unpickled, no reader fails with a 5xx or a traceback,
and the queued ones end failed with a reason that names the refusal.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis

from atomq.core import keys
from reliability.report import report
from testkit.fixtures import TOKENS

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Jobs live in Redis only: one database kind is enough here."""
    return f"sqlite:///{tmp_path / 'atomq.db'}"


QUEUED_FN = "evil-fn"  # names os.system in JSON: never imported or called
QUEUED_PICKLE = "evil-pickle"  # a pickled payload on the queue
FAILED = "evil-failed"  # pickles in every field, in the failed registry
SCHEDULED = "evil-scheduled"  # pickles, scheduled far ahead
FINISHED = "evil-finished"  # pickles as its result
ALL = (QUEUED_FN, QUEUED_PICKLE, FAILED, SCHEDULED, FINISHED)


class _Exploit:
    """Unpickling this runs ``touch path``: the trace the test looks for."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _plant(connection: redis.Redis, marker: Path) -> None:
    """Write the hostile jobs the way an attacker with Redis access would."""
    bomb = pickle.dumps(_Exploit(marker))
    pickled_call = pickle.dumps(("tests.jobs.add", None, (_Exploit(marker),), {}))
    now = time.time()
    common = {
        "origin": "default",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "enqueued_at": "2026-01-01T00:00:00.000000Z",
        "description": "evil",
        "meta": bomb,
        "timeout": "10",
    }

    def job(job_id: str, data: bytes, status: str, **extra: Any) -> None:
        connection.hset(
            keys.job_key(job_id), mapping={**common, "data": zlib.compress(data), "status": status}
        )
        if extra:
            connection.hset(keys.job_key(job_id), mapping=extra)

    connection.sadd(keys.QUEUES_SET, keys.queue_key("default"))
    job(QUEUED_FN, json.dumps(["os.system", None, [f"touch {marker}"], {}]).encode(), "queued")
    job(QUEUED_PICKLE, pickled_call, "queued")
    connection.rpush(keys.queue_key("default"), QUEUED_FN, QUEUED_PICKLE)
    failure = {"exc_info": zlib.compress(bomb), "ended_at": "2026-01-01T00:00:01.000000Z"}
    job(FAILED, pickled_call, "failed", **failure)
    connection.zadd("rq:failed:default", {FAILED: now + 3600})
    job(SCHEDULED, pickled_call, "scheduled")
    connection.zadd(keys.scheduled_key("default"), {SCHEDULED: now + 86400})
    job(FINISHED, pickled_call, "finished", result=bomb, ended_at="2026-01-01T00:00:01.000000Z")
    connection.zadd("rq:finished:default", {FINISHED: now + 3600})
    for job_id, kind in ((FINISHED, "1"), (FAILED, "2")):
        connection.xadd(
            f"rq:results:{job_id}",
            {
                "type": kind,
                "created_at": "2026-01-01T00:00:01.000000Z",
                "return_value": base64.b64encode(bomb),
                "exc_string": "x",
            },
        )


def _api_reads(api: Any) -> dict[str, int]:
    """Every API endpoint that reads or acts on jobs, with a read and an admin token."""
    codes: dict[str, int] = {}

    def call(method: str, path: str, scope: str, **kwargs: Any) -> None:
        headers = {"Authorization": f"Bearer {TOKENS[scope]}"}
        response = api.request(method, path, headers=headers, **kwargs)
        codes[f"{method} {path} ({scope})"] = response.status_code
        assert response.status_code < 500, (method, path, response.text)
        assert "Traceback" not in response.text

    for scope in ("read", "admin"):
        for path in ("queues", "failed", "scheduled", "workers", "workflows/runs"):
            call("GET", f"/api/v1/tasks/{path}", scope)
        call("GET", "/metrics", scope)
        for job_id in ALL:
            call("GET", f"/api/v1/tasks/jobs/{job_id}", scope)
            call("GET", f"/api/v1/tasks/jobs/{job_id}/progress", scope)
    # Acting on them: a requeue or stop must not load them either.
    call("POST", f"/api/v1/tasks/jobs/{FAILED}/requeue", "write")
    call("POST", "/api/v1/tasks/failed/requeue", "write", json={"queue": "default"})
    call("POST", f"/api/v1/tasks/jobs/{FINISHED}/stop", "write")
    call("DELETE", f"/api/v1/tasks/jobs/{SCHEDULED}", "write")
    return codes


def _dashboard(api: Any) -> dict[str, int]:
    """Log in and open every page and fragment that shows these jobs; press its buttons."""
    codes: dict[str, int] = {}
    page = api.get("/dashboard/login?next=/dashboard")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    home = api.post("/dashboard/login", data={"token": TOKENS["admin"], "nonce": nonce, "next": "/dashboard"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
    paths = ["/dashboard", "/dashboard/partials/overview", "/dashboard/failed", "/dashboard/partials/failed"]
    for job_id in ALL:
        paths += [f"/dashboard/jobs/{job_id}", f"/dashboard/partials/jobs/{job_id}"]
    for path in paths:
        response = api.get(path)
        codes[path] = response.status_code
        assert response.status_code in (200, 404, 409), (path, response.status_code, response.text[:500])
    for path, data in (
        (f"/dashboard/jobs/{FAILED}/requeue", {"csrf": csrf, "next": "/dashboard"}),
        ("/dashboard/failed/requeue", {"csrf": csrf, "queue": "default"}),
    ):
        response = api.post(path, data=data, follow_redirects=False)
        codes["POST " + path] = response.status_code
        assert response.status_code < 500, (path, response.text[:500])
    return codes


def _in_process(env: dict[str, str]) -> Any:
    """Run a CLI command inside this process (a fresh interpreter per command would make the
    38 runs take a minute); an unpickle here would touch the marker all the same."""
    from click.testing import CliRunner

    from atomq.cli import cli as group

    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(group, list(args), env=env, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return type(
            "Done", (), {"returncode": result.exit_code, "stderr": result.stderr, "stdout": result.stdout}
        )

    return run


def _cli_reads(cli: Any, env: dict[str, str]) -> dict[str, int]:
    """Every CLI command that shows jobs, as tables and as JSON (in-process, plus one real
    process to show the two agree)."""
    codes: dict[str, int] = {}
    real = cli("status", QUEUED_PICKLE, "--json")
    assert real.returncode == 0 and json.loads(real.stdout)["status"] == "queued", real.stderr
    cli = _in_process(env)
    commands: list[tuple[str, ...]] = [("info",), ("failed",), ("scheduler",), ("workers",)]
    for job_id in ALL:
        commands += [("status", job_id), ("progress", job_id), ("failed", "--job-id", job_id)]
    for command in commands:
        for fmt in ((), ("--json",)):
            done = cli(*command, *fmt)
            codes[" ".join(command + fmt)] = done.returncode
            assert "Traceback" not in done.stderr, (command, done.stderr)
            # A refusal is fine: one "error:" line and atomq's exit code for it (1 failure,
            # 5 not found, 6 conflict: "stored in a form atomq cannot read"); a crash is not.
            if done.returncode != 0:
                assert done.returncode in (1, 5, 6), (command, done.returncode, done.stderr)
                assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    done = cli("requeue", "--all")
    codes["requeue --all"] = done.returncode
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    return codes


def test_hostile_jobs_are_never_run_or_unpickled_by_any_reader_or_worker(
    api, cli, env, connection, burst, tq, tmp_path
):
    # The trace works: unpickling one of these payloads does leave the file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control)))  # noqa: S301 - the point of the control
    assert control.exists()
    marker = tmp_path / "pwned"
    _plant(connection, marker)
    api_codes = _api_reads(api)
    assert not marker.exists(), "the API unpickled something"
    shown = api.get(
        f"/api/v1/tasks/jobs/{QUEUED_PICKLE}", headers={"Authorization": f"Bearer {TOKENS['admin']}"}
    )
    assert (
        shown.status_code == 200 and shown.json()["task"] == "<unreadable>" and shown.json()["kwargs"] is None
    )
    dashboard_codes = _dashboard(api)
    assert not marker.exists(), "the dashboard unpickled something"
    cli_codes = _cli_reads(cli, env)
    assert not marker.exists(), "the CLI unpickled something"
    # The requeues above put the failed one back on the queue; the workers now meet all of it.
    for wclass in ("fast", "rq"):
        for job_id in (QUEUED_FN, QUEUED_PICKLE):
            connection.hset(keys.job_key(job_id), "status", "queued")
            connection.lrem(keys.queue_key("default"), 0, job_id)
            connection.rpush(keys.queue_key("default"), job_id)
        burst("--worker-class", wclass, "--no-scheduler")
        assert not marker.exists(), f"the {wclass} worker ran or unpickled something"
        fn = tq.get_job_status(QUEUED_FN)
        assert fn["status"] == "failed", (wclass, fn)
        assert "no task is registered as 'os.system'" in fn["error"], (wclass, fn["error"])
        payload = tq.get_job_status(QUEUED_PICKLE)
        assert payload["status"] == "failed", (wclass, payload)
        assert "its payload is not JSON (atomq never unpickles job data)" in payload["error"], (
            wclass,
            payload["error"],
        )
    assert connection.llen(keys.queue_key("default")) == 0
    report(
        "security_hostile_jobs",
        api_calls=len(api_codes),
        dashboard_calls=len(dashboard_codes),
        cli_commands=len(cli_codes),
        workers=["fast", "rq"],
        executed=0,
        unpickled=0,
    )
