"""Everything workers and the API do to Redis, in one run, each under its own Redis user.

Used by tests/test_redis_acl.py (against deploy/redis/users.acl: nothing may be refused) and by
scripts/redis-acl-audit (against all-permitting users, to list the commands each one uses).

* ``worker``: ``atomq worker --count 2`` (workers, supervisor, scheduler) running jobs that
  finish, fail, retry after a delay, time out, wait on a dependency, get stopped, and a worker
  killed mid-job whose job the supervisor recovers.
* ``api``: ``atomq serve`` answering probes, ``/api/v1/tasks/queues`` and the dashboard (login,
  pages, requeue, delete, pause, charts, batches), plus the service functions its endpoints call (enqueue, schedule,
  status, cancel, stop, requeue, empty, the monitor listings), run here with an api connection.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import redis

from atomq.api.auth import entry_for
from atomq.core.settings import load_settings
from atomq.engine import pause
from atomq.engine.task_queue import TaskQueue
from atomq.features.batches.progress import list_batches
from atomq.ops import admin, charts, monitor
from atomq.ops.admin import delete_job
from testkit.support import Processes, children_of, cli_env, free_port, wait_for

ADMIN_TOKEN = "atq_acl_scenario_admin_token"


def run(urls: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run the scenario with ``urls[user]`` for the worker and api users; return what happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    worker_env = cli_env(urls["worker"], workdir / "var")
    port = free_port()
    api_env = cli_env(
        urls["api"],
        workdir / "var",
        ATOMQ_API_TOKENS=entry_for("acl", "admin", ADMIN_TOKEN),
        ATOMQ_API_PORT=str(port),
        DATABASE_URL=f"sqlite:///{workdir / 'atomq.db'}",
    )
    processes = Processes(worker_env, workdir / "logs")
    outcome: dict[str, Any] = {}
    client = redis.Redis.from_url(urls["api"])
    tq = TaskQueue(
        settings=load_settings(redis_url=urls["api"], task_modules=["tests.jobs"]), connection=client
    )
    try:
        workers = processes.worker("--count", "2", "--name", "acl")
        wait_for(lambda: len(monitor.list_workers(client)) == 2, 30, what="two workers")
        api = processes.start("serve", env=api_env, name="api")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/health") == 200, 30, what="the API")
        outcome["logs"] = [workers, api]
        outcome["processes"] = processes
        outcome.update(_jobs(tq, client, workdir))
        outcome["killed"] = _kill_mid_job(tq, workers, workdir)
        outcome["http"] = _http(base, tq, outcome)
        outcome["statuses"] = {
            name: tq.get_job_status(job_id)["status"] for name, job_id in outcome["ids"].items()
        }
    except BaseException:
        processes.stop_all()  # the caller stops them only when it gets the outcome
        raise
    finally:
        client.close()
    return outcome


def _jobs(tq: TaskQueue, client: redis.Redis, workdir: Path) -> dict[str, Any]:
    ids: dict[str, str] = {}
    ids["finished"] = tq.enqueue("add", a=1, b=2).id
    ids["failed"] = tq.enqueue("fail", message="acl scenario").id
    ids["retried"] = tq.enqueue(
        "count_attempts", path=str(workdir / "attempts"), fail_times=1, retry_after=0.5, retry=2
    ).id
    ids["timed_out"] = tq.enqueue("sleep_for", seconds=5, timeout=1, queue="workflows").id
    ids["scheduled_ran"] = tq.enqueue_in(timedelta(seconds=1), "add", a=2, b=2).id
    ids["scheduled_at"] = tq.enqueue_at(datetime.now(UTC) + timedelta(seconds=1), "echo", value="at").id
    parent = tq.enqueue("sleep_for", seconds=0.5)
    ids["dependent"] = tq.enqueue("add", a=3, b=3, depends_on=parent.id).id
    ids["many"] = tq.enqueue_many([("add", {"a": 5, "b": 5}), ("echo", {"value": 1})])[0].id
    ids["unique"] = tq.enqueue("add", a=9, b=9, job_id="acl-unique", unique=True).id
    ids["canceled_scheduled"] = tq.enqueue_in(timedelta(hours=1), "add", a=0, b=0).id
    tq.cancel_job(ids["canceled_scheduled"])
    ids["parked_canceled"] = tq.enqueue("add", a=0, b=0, queue="parked").id  # no worker listens
    tq.cancel_job(ids["parked_canceled"])
    tq.enqueue("add", a=0, b=0, queue="parked")
    stop_started = workdir / "stop-started"
    # Like timed_out, on another queue: requeue-all of "default" below must not bring it back.
    ids["stopped"] = tq.enqueue("sleep_for", seconds=30, started_file=str(stop_started), queue="workflows").id
    wait_for(lambda: stop_started.exists() and stop_started.read_text(), 30, what="the job to stop to start")
    tq.cancel_job(ids["stopped"], wait=10)
    ids["far_future"] = tq.enqueue_in(timedelta(hours=2), "add", a=1, b=1).id
    terminal = {"finished", "failed", "stopped", "canceled"}
    for name in ("finished", "failed", "retried", "timed_out", "scheduled_ran", "scheduled_at", "dependent"):
        wait_for(lambda n=name: tq.get_job_status(ids[n])["status"] in terminal, 40, what=f"job {name}")
    # The service functions behind the API's endpoints and the dashboard.
    names = monitor.known_queues(client, tq.settings.queues)
    monitor.queue_stats(client, names)
    monitor.list_workers(client)
    monitor.list_scheduled(client, names)
    monitor.list_failed(client, names)
    monitor.failure_detail(client, ids["failed"])
    monitor.scheduler_status(client)
    emptied = admin.empty_queue(client, "parked")
    requeue_me = tq.enqueue("fail", message="to requeue").id
    wait_for(lambda: tq.get_job_status(requeue_me)["status"] == "failed", 30, what="a failure to requeue")
    admin.requeue_failed(client, job_ids=[requeue_me])
    wait_for(
        lambda: tq.get_job_status(requeue_me)["status"] == "failed", 30, what="the requeued job to fail again"
    )
    admin.requeue_failed(client, queues=["default"])
    wait_for(lambda: tq.get_job_status(requeue_me)["status"] == "failed", 30, what="requeue-all to run")
    delete_job(client, requeue_me)
    # Issue 15: pausing and resuming a queue, the charts' history, the batch list.
    admin.pause_queue(client, "parked")
    pause.paused_queues(client)
    admin.resume_queue(client, "parked")
    charts.job_history(client, tq.settings.queues, range_name="1h")
    tq.enqueue_batch("add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}])
    list_batches(client)
    return {"ids": ids, "emptied": emptied}


def _kill_mid_job(tq: TaskQueue, workers: Any, workdir: Path) -> str:
    """SIGKILL the worker process running a job: the supervisor recovers the job (failed, its
    one attempt used, when it ran alone; run again, in a process of its own, when other jobs
    ran beside it and which one crashed the worker is unknown)."""
    ledger = workdir / "slow-first"
    job = tq.enqueue("slow_first_attempt", path=str(ledger), seconds=60)
    wait_for(lambda: ledger.exists() and ledger.read_text().strip(), 30, what="the slow job to start")
    runner = int(ledger.read_text().split()[0])
    workers_now = children_of(workers.pid)
    # The job runs in the worker process itself, or in a work-horse forked by it.
    victim = runner if runner in workers_now else next(p for p in workers_now if runner in children_of(p))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: tq.get_job_status(job.id)["status"] in ("failed", "finished"), 60, what="recovery")
    return str(tq.get_job_status(job.id)["status"])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def _http(base: str, tq: TaskQueue, outcome: dict[str, Any]) -> dict[str, int]:
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    codes: dict[str, int] = {}

    def get(path: str, headers: dict[str, str] | None = None) -> str:
        request = urllib.request.Request(base + path, headers=headers or {})
        with opener.open(request, timeout=10) as response:
            codes[path] = response.status
            return str(response.read().decode())

    def post(path: str, fields: dict[str, str]) -> str:
        data = urllib.parse.urlencode(fields).encode()
        with opener.open(urllib.request.Request(base + path, data=data), timeout=10) as response:
            codes["POST " + path] = response.status
            return str(response.read().decode())

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    get("/ready")
    get("/api/v1/tasks/queues", auth)
    login = get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
    page = post("/dashboard/login", {"token": ADMIN_TOKEN, "nonce": nonce, "next": "/dashboard"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    get("/dashboard/partials/overview")
    get("/dashboard/failed")
    failed_id = outcome["ids"]["failed"]
    get(f"/dashboard/jobs/{failed_id}")
    post(f"/dashboard/jobs/{failed_id}/requeue", {"csrf": csrf, "next": "/dashboard"})
    wait_for(
        lambda: tq.get_job_status(failed_id)["status"] == "failed", 30, what="the dashboard requeue to run"
    )
    post("/dashboard/failed/requeue", {"csrf": csrf, "queue": "default"})
    wait_for(lambda: tq.get_job_status(failed_id)["status"] == "failed", 30, what="requeue-all to run")
    post(f"/dashboard/jobs/{outcome['ids']['finished']}/delete", {"csrf": csrf, "next": "/dashboard"})
    outcome["ids"].pop("finished")
    get("/api/v1/tasks/stats?range=1h", auth)
    get("/dashboard/queues/default")
    get("/dashboard/partials/history?range=6h")
    get("/dashboard/batches")
    post("/dashboard/queues/parked/pause", {"csrf": csrf, "next": "/dashboard"})
    post("/dashboard/queues/parked/resume", {"csrf": csrf, "next": "/dashboard"})
    post("/dashboard/logout", {"csrf": csrf})
    time.sleep(0.2)
    return codes
