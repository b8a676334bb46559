"""The job, failed-job, worker and scheduled endpoints: scopes, shapes and bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from testkit.api import api_client, auth
from testkit.support import GUIDE_STATUS_KEYS, wait_for

ADMIN_ONLY = {"args", "kwargs", "meta", "traceback"}


@pytest.fixture
def client(settings, connection, tmp_path):
    with api_client(settings, connection, tmp_path) as c:
        yield c


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    return body["error"]


# -- who may do what ------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/api/v1/tasks/queues", None, "read"),
    ("GET", "/api/v1/tasks/jobs/nope", None, "read"),
    ("GET", "/api/v1/tasks/failed", None, "read"),
    ("GET", "/api/v1/tasks/workers", None, "read"),
    ("GET", "/api/v1/tasks/scheduled", None, "read"),
    ("GET", "/metrics", None, "read"),
    ("POST", "/api/v1/tasks/jobs", {"task": "add", "kwargs": {"a": 1, "b": 2}}, "write"),
    ("DELETE", "/api/v1/tasks/jobs/nope", None, "write"),
    ("POST", "/api/v1/tasks/jobs/nope/requeue", None, "write"),
    ("POST", "/api/v1/tasks/failed/requeue", {"all": True}, "write"),
    ("DELETE", "/api/v1/tasks/queues/default/jobs", None, "admin"),
]
SCOPES = ["read", "write", "admin"]


def test_every_endpoint_needs_a_token_of_the_right_scope(client):
    for method, path, body, needed in ENDPOINTS:
        kwargs = {"json": body} if body is not None else {}
        missing = client.request(method, path, **kwargs)
        assert error_of(missing, 401)["code"] == "unauthorized", (method, path)
        bad = client.request(method, path, headers={"Authorization": "Bearer atq_wrong"}, **kwargs)
        assert bad.status_code == 401, (method, path)
        for scope in SCOPES:
            response = client.request(method, path, headers=auth(scope), **kwargs)
            if SCOPES.index(scope) < SCOPES.index(needed):
                error = error_of(response, 403)
                assert error["code"] == "forbidden" and needed in error["message"], (method, path, scope)
            else:
                # Allowed through: the endpoint itself answers (404 for the made-up job id).
                assert response.status_code in (200, 201, 404), (method, path, scope, response.text)


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_run_and_read_the_guides_status(client, burst):
    response = client.post(
        "/api/v1/tasks/jobs", json={"task": "add", "kwargs": {"a": 2, "b": 3}}, headers=auth("write")
    )
    assert response.status_code == 201
    body = response.json()
    assert list(body)[:8] == GUIDE_STATUS_KEYS
    assert body["status"] == "queued" and body["queue"] == "default" and body["task"] == "add"
    assert response.headers["location"] == f"/api/v1/tasks/jobs/{body['job_id']}"
    assert not ADMIN_ONLY & set(body), "a write token must not see arguments"
    burst()
    done = client.get(f"/api/v1/tasks/jobs/{body['job_id']}", headers=auth("write")).json()
    assert done["status"] == "finished" and done["result"] == 5 and done["error"] is None
    # The read scope sees how the work goes, not what it says (docs/operations.md).
    watched = client.get(f"/api/v1/tasks/jobs/{body['job_id']}", headers=auth("read")).json()
    assert watched["status"] == "finished" and watched["result"] is None
    assert done["started_at"] and done["ended_at"]
    assert not ADMIN_ONLY & set(done)
    assert done["description"] is None, "the generated description spells out the arguments"
    admin = client.get(f"/api/v1/tasks/jobs/{body['job_id']}", headers=auth("admin")).json()
    assert admin["kwargs"] == {"a": 2, "b": 3} and admin["args"] == [] and admin["traceback"] is None
    assert admin["description"] == "add(a=2, b=3)"


def test_enqueue_with_options(client, tq):
    response = client.post(
        "/api/v1/tasks/jobs",
        json={
            "task": "echo",
            "kwargs": {"value": {"nested": [1, 2]}},
            "queue": "social_media",
            "job_id": "my-job_1",
            "timeout": 30,
            "retry": 2,
            "description": "say hello",
            "meta": {"source": "api"},
            "at_front": True,
        },
        headers=auth("admin"),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["job_id"] == "my-job_1" and body["queue"] == "social_media"
    assert body["description"] == "say hello" and body["meta"] == {"source": "api"}
    assert body["retries_left"] == 2
    job = tq.fetch_job("my-job_1")
    assert job.timeout == 30 and job.kwargs == {"value": {"nested": [1, 2]}}
    unique = client.post(
        "/api/v1/tasks/jobs",
        json={"task": "echo", "job_id": "my-job_1", "unique": True},
        headers=auth("write"),
    )
    assert error_of(unique, 409)["code"] == "duplicate_job"


def test_enqueue_later_by_delay_offset_or_timezone(client, connection):
    delayed = client.post(
        "/api/v1/tasks/jobs",
        json={"task": "add", "kwargs": {"a": 1, "b": 1}, "delay": 600},
        headers=auth("write"),
    ).json()
    assert delayed["status"] == "scheduled"
    due = connection.zscore("rq:scheduled:default", delayed["job_id"])
    assert abs(due - (datetime.now(UTC).timestamp() + 600)) < 5

    at = client.post(
        "/api/v1/tasks/jobs",
        json={"task": "add", "kwargs": {"a": 1, "b": 1}, "at": "2031-02-06T14:30:00+01:00"},
        headers=auth("write"),
    ).json()
    assert at["status"] == "scheduled"
    expected = datetime(2031, 2, 6, 13, 30, tzinfo=UTC).timestamp()
    assert connection.zscore("rq:scheduled:default", at["job_id"]) == expected

    zoned = client.post(
        "/api/v1/tasks/jobs",
        json={
            "task": "add",
            "kwargs": {"a": 1, "b": 1},
            "at": "2031-07-06T14:30:00",
            "timezone": "Europe/Paris",
        },
        headers=auth("write"),
    ).json()
    expected = datetime(2031, 7, 6, 12, 30, tzinfo=UTC).timestamp()  # CEST is UTC+2
    assert connection.zscore("rq:scheduled:default", zoned["job_id"]) == expected

    listed = client.get("/api/v1/tasks/scheduled", headers=auth("read")).json()
    assert [j["job_id"] for j in listed["jobs"]] == [delayed["job_id"], at["job_id"], zoned["job_id"]]
    assert listed["jobs"][1]["due_at"] == "2031-02-06T13:30:00+00:00"
    assert listed["jobs"][0]["description"] is None
    assert listed["scheduler"] == {"leader": None, "schedulers": {}}
    admin = client.get("/api/v1/tasks/scheduled?queue=default&limit=1", headers=auth("admin")).json()
    assert [j["description"] for j in admin["jobs"]] == ["add(a=1, b=1)"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"task": "no_such_task"}, "task", "unknown_task"),
        ({"task": "add", "kwargs": {"a": 1}}, "kwargs", "invalid_arguments"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2, "c": 3}}, "kwargs", "invalid_arguments"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "at": "2031-02-06T14:30:00"}, "at", "invalid_option"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "at": "tomorrow"}, "at", "invalid_request"),
        (
            {
                "task": "add",
                "kwargs": {"a": 1, "b": 2},
                "at": "2031-02-06T14:30:00",
                "timezone": "Mars/Olympus",
            },
            "timezone",
            "invalid_option",
        ),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "timezone": "UTC"}, "timezone", "invalid_option"),
        (
            {"task": "add", "kwargs": {"a": 1, "b": 2}, "delay": 5, "at": "2031-02-06T14:30:00Z"},
            "delay",
            "invalid_option",
        ),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "delay": -1}, "delay", "invalid_request"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "delay": 1e308}, "delay", "invalid_request"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "job_id": "a:b"}, "job_id", "invalid_option"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "job_id": "../x"}, "job_id", "invalid_option"),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "queue": "no spaces"}, "queue", "invalid_option"),
        (
            {"task": "add", "kwargs": {"a": 1, "b": 2}, "depends_on": ["missing"]},
            "depends_on",
            "invalid_option",
        ),
        ({"task": "add", "kwargs": {"a": 1, "b": 2}, "priority": 5}, "priority", "invalid_request"),
        ({"task": "x" * 10_000}, "task", "invalid_request"),
        ({"kwargs": {}}, "task", "invalid_request"),
        ({"task": "add", "kwargs": [1, 2]}, "kwargs", "invalid_request"),
    ],
)
def test_enqueue_refuses_bad_input_naming_the_field(client, connection, body, field, code):
    error = error_of(client.post("/api/v1/tasks/jobs", json=body, headers=auth("write")), 422)
    assert (error["field"], error["code"]) == (field, code), error
    assert len(error["message"]) < 600
    assert connection.keys("rq:job:*") == [], "nothing may be queued by a refused request"


def test_enqueue_refuses_malformed_json_and_non_finite_numbers(client):
    response = client.post(
        "/api/v1/tasks/jobs",
        content=b'{"task": "add", "kwargs": {"a": NaN, "b": 1}}',
        headers={**auth("write"), "content-type": "application/json"},
    )
    assert error_of(response, 422)["field"] in ("kwargs.a", "kwargs")
    broken = client.post(
        "/api/v1/tasks/jobs",
        content=b'{"task": ',
        headers={**auth("write"), "content-type": "application/json"},
    )
    assert broken.status_code == 422


@pytest.mark.parametrize("job_id", ["../x", "a:b", "x" * 10_000, "%00", "rq:job:x", " "])
def test_odd_job_ids_are_a_clean_404(client, job_id):
    path = quote(job_id, safe="")
    for method, suffix, scope in (
        ("GET", "", "read"),
        ("DELETE", "", "write"),
        ("POST", "/requeue", "write"),
    ):
        response = client.request(method, f"/api/v1/tasks/jobs/{path}{suffix}", headers=auth(scope))
        error = error_of(response, 404)
        assert len(error["message"]) < 300


# -- cancel, stop, requeue --------------------------------------------------------------------


def test_cancel_a_queued_job_then_409_then_404(client, tq):
    job = tq.enqueue("add", a=1, b=1)
    response = client.delete(f"/api/v1/tasks/jobs/{job.id}", headers=auth("write"))
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    again = error_of(client.delete(f"/api/v1/tasks/jobs/{job.id}", headers=auth("write")), 409)
    assert again["code"] == "invalid_job_state" and "canceled" in again["message"]
    assert (
        error_of(client.delete("/api/v1/tasks/jobs/unknown-job", headers=auth("write")), 404)["field"]
        == "job_id"
    )


def test_requeue_a_failed_job_and_refuse_others(client, tq, burst):
    failed = tq.enqueue("fail", message="broken thing")
    ok = tq.enqueue("add", a=1, b=1)
    burst()
    read = client.get(f"/api/v1/tasks/jobs/{failed.id}", headers=auth("read")).json()
    assert read["status"] == "failed" and read["error"] == "ValueError", "read: the error's kind only"
    assert "traceback" not in read
    write = client.get(f"/api/v1/tasks/jobs/{failed.id}", headers=auth("write")).json()
    assert write["error"] == "ValueError: broken thing" and "traceback" not in write
    admin = client.get(f"/api/v1/tasks/jobs/{failed.id}", headers=auth("admin")).json()
    assert "Traceback" in admin["traceback"] and admin["traceback"].rstrip().endswith(
        "ValueError: broken thing"
    )
    requeued = client.post(f"/api/v1/tasks/jobs/{failed.id}/requeue", headers=auth("write"))
    assert requeued.status_code == 200 and requeued.json()["status"] == "queued"
    refused = error_of(client.post(f"/api/v1/tasks/jobs/{ok.id}/requeue", headers=auth("write")), 409)
    assert "finished" in refused["message"]


def test_failed_list_pages_filters_and_requeues(client, tq, burst):
    for i in range(3):
        tq.enqueue("fail", message=f"default {i}")
    tq.enqueue("fail", message="social", queue="social_media")
    burst()
    page = client.get("/api/v1/tasks/failed?limit=2", headers=auth("read")).json()
    assert page["total"] == 4 and page["offset"] == 0 and page["limit"] == 2
    assert len(page["jobs"]) == 2
    rest = client.get("/api/v1/tasks/failed?limit=2&offset=2", headers=auth("read")).json()
    ids = [j["job_id"] for j in page["jobs"] + rest["jobs"]]
    assert len(set(ids)) == 4
    deep = client.get("/api/v1/tasks/failed?offset=20000", headers=auth("read"))
    assert error_of(deep, 422)["field"] == "offset"
    paged = [
        client.get(f"/api/v1/tasks/failed?queue=default&limit=1&offset={i}", headers=auth("read")).json()
        for i in range(4)
    ]
    assert [len(p["jobs"]) for p in paged] == [1, 1, 1, 0]
    assert len({p["jobs"][0]["job_id"] for p in paged[:3]}) == 3
    social = client.get("/api/v1/tasks/failed?queue=social_media", headers=auth("write")).json()
    assert social["total"] == 1
    assert social["jobs"][0]["error"] == "ValueError: social" and social["jobs"][0]["task"] == "fail"
    watched = client.get("/api/v1/tasks/failed?queue=social_media", headers=auth("read")).json()
    assert watched["jobs"][0]["error"] == "ValueError"
    assert set(social["jobs"][0]) == {"job_id", "queue", "task", "status", "ended_at", "error"}
    assert error_of(client.get("/api/v1/tasks/failed?limit=0", headers=auth("read")), 422)["field"] == "limit"
    assert (
        error_of(client.get("/api/v1/tasks/failed?queue=a%20b", headers=auth("read")), 422)["field"]
        == "queue"
    )

    nothing = error_of(client.post("/api/v1/tasks/failed/requeue", json={}, headers=auth("write")), 422)
    assert nothing["field"] == "queue"
    one = client.post("/api/v1/tasks/failed/requeue", json={"queue": "social_media"}, headers=auth("write"))
    assert one.json() == {"requeued": 1, "queues": ["social_media"]}
    everything = client.post("/api/v1/tasks/failed/requeue", json={"all": True}, headers=auth("write")).json()
    assert everything["requeued"] == 3
    assert client.get("/api/v1/tasks/failed", headers=auth("read")).json()["total"] == 0
    queues = {q["name"]: q for q in client.get("/api/v1/tasks/queues", headers=auth("read")).json()["queues"]}
    assert queues["default"]["queued"] == 3 and queues["social_media"]["queued"] == 1


def test_empty_a_queue_is_admin_only_and_checks_the_name(client, tq):
    for _ in range(3):
        tq.enqueue("add", a=1, b=1)
    emptied = client.delete("/api/v1/tasks/queues/default/jobs", headers=auth("admin"))
    assert emptied.json() == {"queue": "default", "deleted": 3}
    assert (
        error_of(client.delete("/api/v1/tasks/queues/nowhere/jobs", headers=auth("admin")), 404)["field"]
        == "name"
    )
    assert (
        error_of(client.delete("/api/v1/tasks/queues/a:b/jobs", headers=auth("admin")), 422)["field"]
        == "queue"
    )
    queues = client.get("/api/v1/tasks/queues", headers=auth("read")).json()["queues"]
    assert next(q for q in queues if q["name"] == "default")["queued"] == 0


def test_workers_and_stopping_a_running_job_with_a_real_worker(client, tq, procs, tmp_path):
    procs.worker("default", "--name", "api-test-worker", "--no-scheduler")
    started = tmp_path / "started"
    job = tq.enqueue("sleep_for", seconds=60, started_file=str(started))
    wait_for(started.exists, 30, what="the job to start")

    def listed() -> list[dict]:
        found = client.get("/api/v1/tasks/workers", headers=auth("read")).json()["workers"]
        return found if found and found[0]["current_jobs"] else []

    # The supervisor publishes what its workers run every 0.5 s.
    workers = wait_for(listed, 5, what="the worker listed with its job")
    assert [w["name"] for w in workers] == ["api-test-worker"]
    worker = workers[0]
    assert (
        worker["state"] == "busy" and worker["queues"] == ["default"] and worker["current_jobs"] == [job.id]
    )
    stopped = client.delete(f"/api/v1/tasks/jobs/{job.id}?wait=20", headers=auth("write"))
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped"
    assert error_of(client.delete(f"/api/v1/tasks/jobs/{job.id}", headers=auth("write")), 409)
    assert (
        error_of(client.delete(f"/api/v1/tasks/jobs/{job.id}?wait=99", headers=auth("write")), 422)["field"]
        == "wait"
    )


def test_jobs_written_by_hand_into_redis_never_cause_a_500(client, tq, connection):
    import pickle
    import time

    pickled = tq.enqueue("add", a=1, b=2)
    connection.hset(f"rq:job:{pickled.id}", "data", pickle.dumps(("os.system", None, ("echo hi",), {})))
    connection.hset(
        "rq:job:junk",
        mapping={
            "status": "bogus",
            "origin": "default",
            "data": b"\x00\xff",
            "created_at": "?",
            "enqueued_at": "?",
        },
    )
    connection.rpush("rq:queue:default", "junk")
    connection.lpush("rq:queue:high_priority", "junk")
    connection.zadd("rq:scheduled:default", {"junk": time.time() + 100})
    connection.zadd("rq:failed:default", {"junk": time.time() + 100, pickled.id: time.time() + 100})
    for scope in ("read", "admin"):
        for path in ("/scheduled", "/failed", "/queues", "/workers", f"/jobs/{pickled.id}"):
            response = client.get(f"/api/v1/tasks{path}", headers=auth(scope))
            assert response.status_code == 200, (path, response.text)
        assert client.get("/metrics", headers=auth(scope)).status_code == 200
    shown = client.get(f"/api/v1/tasks/jobs/{pickled.id}", headers=auth("admin")).json()
    assert shown["task"] == "<unreadable>" and shown["kwargs"] is None
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/requeue")):
        error = error_of(
            client.request(method, f"/api/v1/tasks/jobs/junk{suffix}", headers=auth("write")), 409
        )
        assert error["code"] == "unreadable_job" and "cannot read" in error["message"]
    requeued = client.post("/api/v1/tasks/failed/requeue", json={"queue": "default"}, headers=auth("write"))
    assert requeued.status_code == 200 and requeued.json()["requeued"] == 1
    assert connection.zscore("rq:failed:default", "junk") is not None, "an unreadable job stays where it is"
    assert connection.zscore("rq:failed:default", pickled.id) is None
