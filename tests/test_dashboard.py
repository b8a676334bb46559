"""The web dashboard through HTTP: login, scopes, CSRF, pages and extension sections.

The click-through in a real browser is in test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from atomq.api.app import create_app
from atomq.engine import plugins
from testkit.fixtures import TOKENS


@pytest.fixture
def database_url(tmp_path) -> str:
    """The dashboard reads Redis only: one database kind is enough here."""
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def login(client, scope: str = "admin", next: str = "/dashboard"):
    page = client.get(f"/dashboard/login?next={next}")
    assert page.status_code == 200
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/dashboard/login",
        data={"token": TOKENS[scope], "nonce": nonce, "next": next},
        follow_redirects=False,
    )


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.fixture
def failed_job(tq, burst):
    job = tq.enqueue("fail", message="the printer is on fire")
    burst()
    assert tq.get_job_status(job.id)["status"] == "failed"
    return job.id


def test_pages_need_a_login(api):
    response = api.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?next=/dashboard"
    post = api.post("/dashboard/jobs/x/requeue", data={"next": "/dashboard/failed"}, follow_redirects=False)
    assert post.headers["location"] == "/dashboard/login?next=/dashboard/failed"
    assert api.get("/dashboard/partials/overview").status_code == 401
    assert api.get("/dashboard/jobs/abc", follow_redirects=False).status_code == 303


def test_login_sets_a_strict_http_only_cookie_and_shows_the_overview(api):
    response = login(api, "read")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "atomq_session" in v)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie
    assert TOKENS["read"] not in cookie  # the browser gets a session id, never the token
    page = api.get("/dashboard")
    assert page.status_code == 200
    assert "social_media" in page.text and "Workers" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_a_wrong_token_is_refused_and_opens_no_session(api):
    page = api.get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
    response = api.post(
        "/dashboard/login", data={"token": "atq_wrong", "nonce": nonce}, follow_redirects=False
    )
    assert response.status_code == 401
    assert "that token is not valid" in response.text
    assert "atomq_session" not in response.headers.get("set-cookie", "")
    assert api.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_login_form_needs_its_own_nonce(api):
    api.get("/dashboard/login")
    response = api.post(
        "/dashboard/login", data={"token": TOKENS["admin"], "nonce": "forged"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "expired" in response.text


def test_login_redirects_only_inside_the_dashboard(api):
    response = login(api, "read", next="//evil.example/x")
    assert response.headers["location"] == "/dashboard"


def test_read_scope_sees_the_failure_but_not_its_traceback_and_cannot_act(api, failed_job, tq):
    login(api, "read")
    overview = api.get("/dashboard").text
    assert failed_job in overview
    # The read scope sees the error's kind, not its message (which may quote arguments).
    assert "ValueError" in overview and "the printer is on fire" not in overview
    assert 'data-action="requeue"' not in overview and 'data-action="delete"' not in overview
    page = api.get(f"/dashboard/jobs/{failed_job}").text
    assert "ValueError" in page and "the printer is on fire" not in page
    assert "Traceback (most recent call last)" not in page
    assert "admin tokens only" in page
    refused = api.post(
        f"/dashboard/jobs/{failed_job}/requeue", data={"csrf": csrf_of(overview)}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert "needs a token with the write scope" in refused.text
    assert tq.get_job_status(failed_job)["status"] == "failed"


def test_write_scope_requeues_but_cannot_delete(api, failed_job, tq):
    login(api, "write")
    overview = api.get("/dashboard").text
    assert "ValueError: the printer is on fire" in overview, "write sees the error's message"
    assert 'data-action="requeue"' in overview and 'data-action="delete"' not in overview
    csrf = csrf_of(overview)
    refused = api.post(f"/dashboard/jobs/{failed_job}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert refused.status_code == 403
    response = api.post(
        f"/dashboard/jobs/{failed_job}/requeue",
        data={"csrf": csrf, "next": f"/dashboard/jobs/{failed_job}"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{failed_job}"
    assert tq.get_job_status(failed_job)["status"] == "queued"
    page = api.get(f"/dashboard/jobs/{failed_job}").text
    assert f"requeued job {failed_job}" in page  # the flash message, shown once
    assert f"requeued job {failed_job}" not in api.get(f"/dashboard/jobs/{failed_job}").text


def test_admin_sees_arguments_and_traceback_and_deletes(api, failed_job, tq):
    login(api, "admin")
    page = api.get(f"/dashboard/jobs/{failed_job}").text
    assert "Traceback (most recent call last)" in page
    assert "the printer is on fire" in page and "message" in page
    response = api.post(
        f"/dashboard/jobs/{failed_job}/delete", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert response.status_code == 303
    overview = api.get("/dashboard").text
    assert f"deleted job {failed_job} (it was failed)" in overview
    assert api.get(f"/dashboard/jobs/{failed_job}").status_code == 404
    assert tq.connection.zcard("rq:failed:default") == 0


def test_posts_need_the_csrf_token_and_the_same_origin(api, failed_job, tq):
    login(api, "admin")
    csrf = csrf_of(api.get("/dashboard").text)
    no_token = api.post(f"/dashboard/jobs/{failed_job}/requeue", data={}, follow_redirects=False)
    assert no_token.status_code == 403 and "security token" in no_token.text
    wrong = api.post(f"/dashboard/jobs/{failed_job}/requeue", data={"csrf": "x" * 43}, follow_redirects=False)
    assert wrong.status_code == 403
    cross = api.post(
        f"/dashboard/jobs/{failed_job}/requeue",
        data={"csrf": csrf},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403 and "another site" in cross.text
    assert tq.get_job_status(failed_job)["status"] == "failed"


def test_requeue_all_failed_of_a_queue(api, tq, burst):
    ids = [tq.enqueue("fail").id for _ in range(3)]
    burst()
    login(api, "write")
    page = api.get("/dashboard/failed?queue=default").text
    assert all(job_id in page for job_id in ids)
    response = api.post(
        "/dashboard/failed/requeue",
        data={"csrf": csrf_of(page), "queue": "default", "next": "/dashboard/failed?queue=default"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/dashboard/failed?queue=default"
    assert "requeued 3 failed job(s) of queue default" in api.get("/dashboard/failed?queue=default").text
    assert {tq.get_job_status(i)["status"] for i in ids} == {"queued"}
    bad = api.post(
        "/dashboard/failed/requeue",
        data={"csrf": csrf_of(page), "queue": "no such queue!"},
        follow_redirects=True,
    )
    assert "invalid queue name" in bad.text


def test_logout_ends_the_session_for_good(api):
    login(api, "read")
    page = api.get("/dashboard")
    cookie = api.cookies.get("atomq_session")
    response = api.post("/dashboard/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert response.headers["location"] == "/dashboard/login"
    api.cookies.set("atomq_session", cookie, path="/dashboard")  # a copied cookie is dead too
    assert api.get("/dashboard", follow_redirects=False).status_code == 303


def test_removing_a_token_ends_the_sessions_made_with_it(api, api_settings, connection, database):
    login(api, "write")
    cookie = api.cookies.get("atomq_session")
    kept = [entry for entry in api_settings.api_tokens if not entry.startswith("test-write:")]
    app = create_app(
        api_settings.model_copy(update={"api_tokens": kept}), redis_client=connection, database=database
    )
    with TestClient(app) as other:
        other.cookies.set("atomq_session", cookie, path="/dashboard")
        assert other.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_live_fragment_is_the_page_without_its_frame(api, tq):
    login(api, "read")
    tq.enqueue("add", a=1, b=2)
    fragment = api.get("/dashboard/partials/overview")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert 'id="total-queued">1<' in fragment.text


def test_timeline_shows_scheduled_jobs_and_plugged_in_sources(api, tq, monkeypatch):
    monkeypatch.setattr(plugins.registry, "timeline", dict(plugins.registry.timeline))
    soon = tq.enqueue_in(timedelta(minutes=10), "add", a=1, b=2)
    later = tq.enqueue_in(timedelta(days=3), "add", a=1, b=2)

    @plugins.timeline_source("posts", title="Scheduled posts", order=20)
    def posts(ctx, until, limit):
        return [
            plugins.TimelineItem(
                at=ctx.now + timedelta(hours=2),
                kind="post",
                title="Hello fediverse",
                ref="post_123",
                link="/x",
            )
        ]

    @plugins.timeline_source("broken", title="Workflow timers", order=30)
    def broken(ctx, until, limit):
        raise RuntimeError("workflow store offline")

    login(api, "read")
    page = api.get("/dashboard")
    assert page.status_code == 200
    assert soon.id in page.text
    assert later.id not in page.text  # beyond the 24-hour window
    assert "add(a=1, b=2)" not in page.text  # the description spells out arguments: admin only
    assert "Scheduled posts" in page.text and "post_123" in page.text and "Hello fediverse" in page.text
    assert "Could not load workflow timers: RuntimeError: workflow store offline" in page.text


def test_progress_shows_running_jobs_against_their_timeout(api, tq, procs, tmp_path):
    from testkit.support import wait_for

    started = tmp_path / "started"
    job = tq.enqueue("sleep_for", seconds=30, started_file=str(started))
    procs.worker("--no-scheduler")
    wait_for(started.exists, 30, what="the job to start")
    login(api, "read")
    page = wait_for(lambda: (p := api.get("/dashboard").text) and job.id in p.split('id="progress"')[1] and p)
    progress = page.split('id="progress"')[1]
    assert "Running jobs" in progress and "sleep_for" in progress
    assert 'max="120.0"' in progress  # the task's timeout
    tq.cancel_job(job.id, wait=10)


def test_unknown_job_is_a_404_page(api):
    login(api, "read")
    response = api.get("/dashboard/jobs/nope")
    assert response.status_code == 404
    assert "no job with id &#39;nope&#39;" in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_redis_down_is_a_clear_page_not_a_crash(api_settings, database):
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    app = create_app(api_settings, redis_client=dead, database=database)
    with TestClient(app) as client:
        response = login(client, "read")
        assert response.status_code == 503
        assert "Redis is unreachable" in response.text


def test_static_files_and_times(api):
    assert api.get("/dashboard/static/dashboard.js").status_code == 200
    assert api.get("/dashboard/static/../app.py").status_code == 404
    from atomq.api.dashboard_web import relative, when

    now = datetime(2026, 2, 6, 10, 0, tzinfo=UTC)
    assert relative(now + timedelta(minutes=4, seconds=12), now) == "in 4m12s"
    assert relative("2026-02-06T09:57:00+00:00", now) == "3m00s ago"
    assert when(now) == "2026-02-06 10:00:00 UTC"
