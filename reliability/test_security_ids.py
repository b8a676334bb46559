"""Explicit job ids and batch ids (issue 16, items 3 and 6).

A job id that exists is never taken over silently: the API answers 409 (the Python API raises
DuplicateJobError, the CLI exits 6) unless the caller asks to replace it and may (``admin``:
a ``write`` token asking gets a 403). Before the fix ``POST /jobs {"job_id": <a post's job>}``
turned a scheduled post's job into a ``ping``. The ids atomq derives for posts, workflow steps
and batch items are reserved outright. Batch ids are checked on every batches route: one that
names a batch's bitmap (``b2:started``) was a 503 WRONGTYPE.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from atomq.core.errors import DuplicateJobError
from atomq.core.timeutil import utcnow
from reliability.report import report
from testkit.support import run_cli

pytestmark = pytest.mark.slow

JOBS = "/api/v1/tasks/jobs"
BATCHES = "/api/v1/tasks/batches"


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def _admin_view(api: Any, job_id: str) -> dict[str, Any]:
    shown = api.get(f"{JOBS}/{job_id}", headers=api.auth("admin"))
    assert shown.status_code == 200, shown.text
    view: dict[str, Any] = shown.json()
    return view


def test_an_existing_job_id_is_a_409_unless_an_admin_replaces_it(api, tq, env):
    first = api.post(
        JOBS, json={"task": "add", "kwargs": {"a": 1, "b": 2}, "job_id": "mine-1"}, headers=api.auth("write")
    )
    assert first.status_code == 201, first.text
    original = _admin_view(api, "mine-1")
    for body in (
        {"task": "echo", "kwargs": {"value": "taken"}, "job_id": "mine-1"},
        {"task": "echo", "kwargs": {"value": "taken"}, "job_id": "mine-1", "delay": 60},
        {"task": "echo", "kwargs": {"value": "taken"}, "job_id": "mine-1", "unique": True},
    ):
        again = api.post(JOBS, json=body, headers=api.auth("write"))
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert (error["code"], error["field"]) == ("duplicate_job", "job_id") and "mine-1" in error["message"]
    refused = api.post(
        JOBS,
        json={"task": "echo", "kwargs": {"value": "x"}, "job_id": "mine-1", "replace": True},
        headers=api.auth("write"),
    )
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "replace", refused.text
    assert _admin_view(api, "mine-1") == original, "a refused request must not touch the job"
    replaced = api.post(
        JOBS,
        json={"task": "echo", "kwargs": {"value": "new"}, "job_id": "mine-1", "replace": True},
        headers=api.auth("admin"),
    )
    assert replaced.status_code == 201, replaced.text
    assert _admin_view(api, "mine-1")["task"] == "echo" and _admin_view(api, "mine-1")["kwargs"] == {
        "value": "new"
    }
    # The Python API and the CLI follow the same rule.
    with pytest.raises(DuplicateJobError):
        tq.enqueue("add", a=1, b=2, job_id="mine-1")
    assert tq.enqueue("add", a=1, b=2, job_id="mine-1", replace=True).id == "mine-1"
    assert run_cli(env, "enqueue", "add", "a=1", "b=2", "--job-id", "mine-2").returncode == 0
    again = run_cli(env, "enqueue", "add", "a=1", "b=2", "--job-id", "mine-2")
    assert again.returncode == 6 and again.stderr.startswith("error: ") and "mine-2" in again.stderr, (
        again.stderr
    )
    assert again.stderr.count("\n") == 1
    assert run_cli(env, "enqueue", "echo", "value=2", "--job-id", "mine-2", "--replace").returncode == 0
    assert tq.fetch_job("mine-2").func_name == "echo"
    report(
        "security_job_ids", conflicts_api=3, conflicts_python=1, conflicts_cli=1, replace_refused_for_write=1
    )


def test_a_scheduled_posts_job_cannot_be_taken_over(posts_api, connection):
    account = posts_api.post(
        "/api/v1/accounts", json={"platform": "outbox", "handle": "me"}, headers=posts_api.auth()
    ).json()
    soon = (utcnow() + timedelta(minutes=5)).isoformat()
    post = posts_api.post(
        "/api/v1/tasks/scheduled-posts",
        json={"account_id": account["id"], "content": "hello", "scheduled_for": soon},
        headers=posts_api.auth(),
    ).json()
    job_id = post["job_id"]
    before = _admin_view(posts_api, job_id)
    assert before["task"] == "process_scheduled_post" and before["status"] == "scheduled"
    taken = posts_api.post(JOBS, json={"task": "echo", "job_id": job_id}, headers=posts_api.auth("write"))
    # Refused by its form (a post's id is reserved) before its existence is even looked at.
    assert taken.status_code == 422 and taken.json()["error"]["field"] == "job_id", taken.text
    assert _admin_view(posts_api, job_id) == before


def test_ids_atomq_derives_are_reserved(posts_api, connection):
    """Ids atomq will give its own jobs later cannot be taken first (422 naming job_id)."""
    record = "0123456789abcdef0123456789abcdef"  # the 32 hex digits of a record id
    derived = (
        f"post_{record}-r2",  # a post's next revision
        f"post_{record}-r1-a1",  # a post's resume job
        f"wfr_{record}-A-1",  # a workflow step
        "batch_0123456789abcdef-3",  # a batch item
        "recurring-daily-1700000000",  # a recurring schedule's occurrence
    )
    for job_id in derived:
        response = posts_api.post(
            JOBS, json={"task": "echo", "job_id": job_id}, headers=posts_api.auth("write")
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "job_id", (
            job_id,
            response.text,
        )
    assert connection.dbsize() == 0


def test_batch_ids_are_checked_on_every_batches_route(api, tq, env):
    batch = api.post(
        BATCHES, json={"task": "add", "items": [{"a": 1, "b": 1}], "batch_id": "b2"}, headers=api.auth()
    )
    assert batch.status_code == 201, batch.text
    odd = ["b2:started", "b2:finished", quote("b2:canceled", safe=""), "b2%20", "x" * 10_240, "b2-0"]
    for batch_id in odd:
        for method, path in (("GET", f"{BATCHES}/{batch_id}"), ("DELETE", f"{BATCHES}/{batch_id}/cancel")):
            response = api.request(method, path, headers=api.auth())
            assert response.status_code == 404, (method, path[:80], response.status_code, response.text[:200])
            assert response.json()["error"]["field"] == "batch_id"
            assert len(response.text) < 1000
    for command in ("status", "cancel"):
        done = run_cli(env, "batch", command, "b2:started")
        assert done.returncode == 5 and "not a valid batch id" in done.stderr, (command, done.stderr)
    assert api.get(f"{BATCHES}/b2", headers=api.auth("read")).json()["total"] == 1
    report("security_batch_ids", odd_ids=len(odd), routes=2, cli_commands=2, server_errors=0)
