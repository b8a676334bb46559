"""GET /api/v1/tasks/jobs/{id}?wait=N: the answer once the job has ended (or N seconds have
passed), woken by Redis, while the server keeps answering other requests."""

from __future__ import annotations

import threading
import time

import pytest

from testkit.api import api_client, auth
from testkit.support import wait_for

pytestmark = pytest.mark.timeout(90)

JOBS = "/api/v1/tasks/jobs"


@pytest.fixture
def client(settings, connection, tmp_path):
    with api_client(settings, connection, tmp_path) as c:
        yield c


def test_wait_answers_when_the_job_ends_and_other_requests_go_on(client, tq, procs, connection):
    procs.worker("--no-scheduler")
    wait_for(lambda: connection.scard("rq:workers"), 20, what="worker registration")
    job = tq.enqueue("sleep_for", seconds=2.0)
    others: list[float] = []

    def meanwhile() -> None:
        time.sleep(0.3)
        for _ in range(5):
            started = time.monotonic()
            assert client.get("/api/v1/tasks/queues", headers=auth("read")).status_code == 200
            others.append(time.monotonic() - started)

    thread = threading.Thread(target=meanwhile)
    thread.start()
    started = time.monotonic()
    response = client.get(f"{JOBS}/{job.id}", params={"wait": 20}, headers=auth("write"))
    elapsed = time.monotonic() - started
    thread.join()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "finished" and body["result"] == 2.0
    assert "kwargs" not in body, "a read token still sees no arguments"
    assert 1.5 < elapsed < 10
    assert len(others) == 5 and max(others) < 1.5, "the server stalled while a request waited"


def test_wait_answers_the_current_status_when_the_job_has_not_ended(client, tq):
    job = tq.enqueue("add", a=1, b=1)  # no worker runs
    started = time.monotonic()
    response = client.get(f"{JOBS}/{job.id}", params={"wait": 0.5}, headers=auth("admin"))
    assert 0.5 <= time.monotonic() - started < 5
    assert response.status_code == 200
    assert response.json()["status"] == "queued" and response.json()["kwargs"] == {"a": 1, "b": 1}


def test_a_failed_job_is_answered_as_failed(client, tq, burst):
    job = tq.enqueue("fail", message="nope")
    burst()
    response = client.get(f"{JOBS}/{job.id}", params={"wait": 5}, headers=auth("write"))
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["error"]) == ("failed", "ValueError: nope")


@pytest.mark.parametrize(("wait", "status"), [(31, 422), (-1, 422), ("soon", 422)])
def test_bad_waits_are_refused_naming_the_parameter(client, tq, wait, status):
    job = tq.enqueue("add", a=1, b=1)
    response = client.get(f"{JOBS}/{job.id}", params={"wait": wait}, headers=auth("read"))
    assert response.status_code == status
    assert response.json()["error"]["field"] == "wait"


def test_waiting_for_an_unknown_job_is_a_404_at_once(client):
    started = time.monotonic()
    response = client.get(f"{JOBS}/no-such-job", params={"wait": 10}, headers=auth("read"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
    assert time.monotonic() - started < 2
