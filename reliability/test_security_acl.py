"""deploy/redis/users.acl, the rest of atomq: tests/test_redis_acl.py runs the job basics (the
fast worker, supervisor, scheduler and a few API calls) under the ``worker`` and ``api`` users;
this scenario adds everything else that touches Redis, each under its deploy user, and then
requires Redis's ACL LOG to be empty:

* ``worker`` user: fast workers with the scheduler, post reconcilers and a recurring job, plus
  an RQ-class worker; they publish posts to a webhook, run workflows and batches, stop jobs;
* ``api`` user: ``atomq serve`` over real HTTP, every endpoint family (jobs, stop, progress,
  requeue, cancel, queues, workers, scheduled, failed, metrics, accounts, scheduled posts
  with create/edit/cancel, batches with cancel, workflows with runs/retry/cancel), and the
  dashboard (login, overview with its workflow/batch/post sections, failed, job pages,
  requeue, logout).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import redis

from atomq.api.auth import entry_for
from reliability.report import report
from testkit.acl import url
from testkit.fakes.webhook import FakeWebhookReceiver
from testkit.posts import CREDENTIALS_KEY
from testkit.support import Processes, cli_env, free_port, run_cli, wait_for

pytestmark = pytest.mark.slow

TOKEN = "atq_acl_security_admin_token"


class Http:
    """JSON calls to the real API process, and a cookie jar for the dashboard."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.codes: dict[str, int] = {}
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def call(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if form is not None:
            data, headers = urllib.parse.urlencode(form).encode(), {}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        self.codes[f"{method} {re.sub(r'/[a-z]+_[0-9a-f]{8,}|/[0-9a-f-]{36}', '/{id}', path)}"] = status
        # Everything here is a call that must succeed: a refusal by Redis would be a 503.
        assert status < 400, (method, path, status, text[:500])
        if text.startswith(("{", "[")):
            return json.loads(text)
        return text

    def until(self, path: str, predicate: Any, what: str, timeout: float = 40) -> Any:
        return wait_for(
            lambda: (body := self.call("GET", path)) and predicate(body) and body, timeout, 0.2, what
        )


def _jobs(http: Http, tmp_path: Path) -> None:
    added = http.call("POST", "/api/v1/tasks/jobs", {"task": "add", "kwargs": {"a": 1, "b": 2}})
    http.until(f"/api/v1/tasks/jobs/{added['job_id']}", lambda j: j["status"] == "finished", "add")
    later = http.call("POST", "/api/v1/tasks/jobs", {"task": "add", "kwargs": {"a": 2, "b": 2}, "delay": 1})
    http.until(f"/api/v1/tasks/jobs/{later['job_id']}", lambda j: j["status"] == "finished", "delayed add")
    started = tmp_path / "started"
    # On its own queue: the RQ-class worker files a stopped job as failed, and the requeue of
    # every failed "default" job below would run it again.
    sleeper = http.call(
        "POST", "/api/v1/tasks/jobs", {"task": "sleep_for", "kwargs": {"seconds": 30, "started_file": str(started)}, "queue": "workflows"}
    )  # fmt: skip
    wait_for(started.exists, 30, what="the job to stop to start")
    http.call("GET", f"/api/v1/tasks/jobs/{sleeper['job_id']}/progress")
    stopped = http.call("POST", f"/api/v1/tasks/jobs/{sleeper['job_id']}/stop", {"grace": 1, "wait": 15})
    assert stopped["job"]["status"] == "stopped", stopped
    failed = http.call("POST", "/api/v1/tasks/jobs", {"task": "fail", "kwargs": {"message": "acl"}})
    http.until(f"/api/v1/tasks/jobs/{failed['job_id']}", lambda j: j["status"] == "failed", "failure")
    http.call("POST", f"/api/v1/tasks/jobs/{failed['job_id']}/requeue")
    http.until(f"/api/v1/tasks/jobs/{failed['job_id']}", lambda j: j["status"] == "failed", "failure again")
    http.call("POST", "/api/v1/tasks/failed/requeue", {"queue": "default"})
    far = http.call("POST", "/api/v1/tasks/jobs", {"task": "add", "kwargs": {"a": 0, "b": 0}, "delay": 3600})
    assert http.call("DELETE", f"/api/v1/tasks/jobs/{far['job_id']}")["status"] == "canceled"
    http.call("POST", "/api/v1/tasks/jobs", {"task": "add", "kwargs": {"a": 0, "b": 0}, "queue": "parked"})
    assert http.call("DELETE", "/api/v1/tasks/queues/parked/jobs")["deleted"] == 1
    for path in ("queues", "workers", "scheduled", "failed"):
        http.call("GET", f"/api/v1/tasks/{path}")
    assert "atomq_" in http.call("GET", "/metrics")


def _posts(http: Http, receiver: FakeWebhookReceiver) -> None:
    hook = http.call(
        "POST",
        "/api/v1/accounts",
        {"platform": "webhook", "handle": "hook", "url": f"{receiver.url}/hooks/posts", "credentials": {"secret": receiver.secret}},
    )  # fmt: skip
    http.call("GET", "/api/v1/accounts")
    http.call("GET", f"/api/v1/accounts/{hook['id']}")
    now = http.call(
        "POST",
        "/api/v1/tasks/scheduled-posts",
        {"account_id": hook["id"], "content": "now", "publish_now": True},
    )
    soon_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    soon = http.call(
        "POST",
        "/api/v1/tasks/scheduled-posts",
        {"account_id": hook["id"], "content": "soon", "scheduled_for": soon_at},
    )
    later_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
    later = http.call(
        "POST",
        "/api/v1/tasks/scheduled-posts",
        {"account_id": hook["id"], "content": "later", "scheduled_for": later_at},
    )
    for post in (now, soon):
        http.until(
            f"/api/v1/tasks/scheduled-posts/{post['id']}/status",
            lambda p: p["post_status"] == "published",
            "a post",
        )
    http.call("PATCH", f"/api/v1/tasks/scheduled-posts/{later['id']}", {"content": "later, edited"})
    assert http.call("DELETE", f"/api/v1/tasks/scheduled-posts/{later['id']}/cancel")["status"] == "canceled"
    http.call("GET", "/api/v1/tasks/scheduled-posts")
    assert sorted(p["content"] for p in receiver.accepted) == ["now", "soon"]


def _batches_and_workflows(http: Http, tmp_path: Path) -> None:
    batch = http.call(
        "POST", "/api/v1/tasks/batches", {"task": "add", "items": [{"a": i, "b": 1} for i in range(5)]}
    )
    http.until(f"/api/v1/tasks/batches/{batch['id']}", lambda b: b["state"] == "finished", "the batch")
    slow = http.call(
        "POST", "/api/v1/tasks/batches", {"task": "sleep_for", "items": [{"seconds": 30}] * 3, "queue": "parked"}
    )  # fmt: skip
    http.call("DELETE", f"/api/v1/tasks/batches/{slow['id']}/cancel")
    run = http.call("POST", "/api/v1/tasks/workflows/diamond/runs", {"input": {"n": 2}})
    http.until(f"/api/v1/tasks/workflows/runs/{run['id']}", lambda r: r["status"] == "succeeded", "diamond")
    flag = tmp_path / "flag"
    gated = http.call("POST", "/api/v1/tasks/workflows/gated/runs", {"input": {"n": 1, "flag": str(flag), "ledger": str(tmp_path / "ledger")}})  # fmt: skip
    http.until(
        f"/api/v1/tasks/workflows/runs/{gated['id']}", lambda r: r["status"] == "failed", "the gate to fail"
    )
    flag.write_text("open")
    http.call("POST", f"/api/v1/tasks/workflows/runs/{gated['id']}/retry")
    http.until(f"/api/v1/tasks/workflows/runs/{gated['id']}", lambda r: r["status"] == "succeeded", "gated")
    chain = http.call("POST", "/api/v1/tasks/workflows/slow_chain/runs", {})
    http.call("DELETE", f"/api/v1/tasks/workflows/runs/{chain['id']}/cancel")
    http.call("GET", "/api/v1/tasks/workflows")
    http.call("GET", "/api/v1/tasks/workflows/runs")


def _dashboard(http: Http) -> None:
    login = http.call("GET", "/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
    page = http.call("POST", "/dashboard/login", form={"token": TOKEN, "nonce": nonce, "next": "/dashboard"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    http.call("GET", "/dashboard/partials/overview")
    failed = http.call("GET", "/dashboard/failed")
    job_ids = re.findall(r"/dashboard/jobs/([0-9a-f-]{36})", failed)
    assert job_ids, "the failed page lists the failed job"
    http.call("GET", f"/dashboard/jobs/{job_ids[0]}")
    http.call("POST", f"/dashboard/jobs/{job_ids[0]}/requeue", form={"csrf": csrf, "next": "/dashboard"})
    http.call("POST", "/dashboard/failed/requeue", form={"csrf": csrf, "queue": "default"})
    http.call("POST", "/dashboard/logout", form={"csrf": csrf})


def test_posts_workflows_batches_the_api_and_the_dashboard_need_no_more_than_the_deploy_users(
    acl_redis,  # noqa: F811
    tmp_path,
):
    admin = redis.Redis.from_url(url(acl_redis, "admin"))
    recurring = tmp_path / "recurring.json"
    recurring.write_text(json.dumps([{"name": "tick", "task": "record_tick", "every": 1, "kwargs": {"path": str(tmp_path / "ticks")}}]))  # fmt: skip
    common = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'atomq.db'}",
        "ATOMQ_POSTS_ALLOWED_HOSTS": "127.0.0.1",
        "ATOMQ_CREDENTIALS_KEY": CREDENTIALS_KEY,
        "ATOMQ_POSTS_PUBLISH_TIMEOUT": "2",
        "ATOMQ_POSTS_RECONCILE_INTERVAL": "1",
    }
    worker_env = cli_env(
        url(acl_redis, "worker"), tmp_path / "var", **common, ATOMQ_RECURRING_FILE=str(recurring)
    )
    port = free_port()
    api_env = cli_env(
        url(acl_redis, "api"),
        tmp_path / "var",
        **common,
        ATOMQ_API_TOKENS=entry_for("acl", "admin", TOKEN),
        ATOMQ_API_PORT=str(port),
    )
    migrated = run_cli(api_env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    receiver = FakeWebhookReceiver().start()
    processes = Processes(worker_env, tmp_path / "logs")
    started = time.monotonic()
    try:
        fast = processes.worker("--count", "2", "--name", "acl-fast")
        rq = processes.worker("--worker-class", "rq", "--no-scheduler", "--name", "acl-rq", "default")
        api = processes.start("serve", env=api_env, name="api")
        http = Http(f"http://127.0.0.1:{port}")
        wait_for(lambda: _alive(http), 30, what="the API")
        phases: dict[str, float] = {}
        for name, phase in (
            ("jobs", lambda: _jobs(http, tmp_path)),
            ("posts", lambda: _posts(http, receiver)),
            ("batches_and_workflows", lambda: _batches_and_workflows(http, tmp_path)),
            ("dashboard", lambda: _dashboard(http)),
        ):
            begun = time.monotonic()
            phase()
            phases[name] = round(time.monotonic() - begun, 1)
        wait_for(lambda: (tmp_path / "ticks").exists(), 20, what="the recurring job to run")
        time.sleep(1.5)  # a reconciler tick and a scheduler pass after the last call
        refusals = admin.acl_log()
        assert refusals == [], "Redis refused commands; add them to deploy/redis/users.acl:\n" + "\n".join(
            f"{r['username']}: {r['object']} ({r['reason']}, {r['context']})" for r in refusals
        )
        for process in (fast, rq, api):
            log = Processes.log(process)
            assert "NOPERM" not in log and "no permissions" not in log, log[-3000:]
            assert process.poll() is None, log[-3000:]
    finally:
        processes.stop_all()
        receiver.stop()
        admin.close()
    report(
        "security_acl",
        http_calls=len(http.codes),
        statuses=sorted(set(http.codes.values())),
        acl_denials=0,
        phase_seconds=phases,
        seconds=round(time.monotonic() - started, 1),
    )


def _alive(http: Http) -> bool:
    try:
        return bool(http.call("GET", "/health"))
    except OSError:
        return False


@pytest.mark.parametrize(
    "inside",
    ["redis.call('FLUSHALL')", "redis.call('KEYS', '*')", "redis.call('CONFIG', 'GET', 'dir')", "redis.call('GET', 'other:key')"],
)  # fmt: skip
def test_eval_gives_the_api_user_nothing_more(acl_redis, inside):  # noqa: F811
    """Workers and the API may EVAL (batch tracking uses it), which is no wider than the
    EVALSHA and SCRIPT LOAD they already had: a script runs with its caller's permissions."""
    api = redis.Redis.from_url(url(acl_redis, "api"))
    try:
        with pytest.raises(
            redis.exceptions.ResponseError, match="can't run|can't access|not allowed|no permissions"
        ):
            api.eval(f"return {inside}", 0)
    finally:
        api.close()
