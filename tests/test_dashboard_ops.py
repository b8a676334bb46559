"""Issue 15's dashboard pages without a browser: scopes, CSRF, bad input, the chart data."""

from __future__ import annotations

import re

import pytest

from atomq.core import keys
from atomq.engine import stats
from testkit.fixtures import TOKENS


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def login(client, scope: str):
    page = client.get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
    client.post("/dashboard/login", data={"token": TOKENS[scope], "nonce": nonce, "next": "/dashboard"})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.mark.timeout(60)
def test_only_admin_pauses_from_the_dashboard_and_only_with_the_csrf_token(api, connection):
    login(api, "write")
    page = api.get("/dashboard/queues/social_media")
    assert page.status_code == 200 and 'data-action="pause"' not in page.text
    refused = api.post(
        "/dashboard/queues/social_media/pause", data={"csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert refused.status_code == 403 and "admin scope" in refused.text
    assert not connection.hexists(keys.PAUSED_QUEUES, "social_media")
    api.post("/dashboard/logout", data={"csrf": csrf_of(page.text)})

    login(api, "admin")
    page = api.get("/dashboard/queues/social_media")
    assert 'data-action="pause"' in page.text
    forged = api.post("/dashboard/queues/social_media/pause", data={"csrf": "nope"}, follow_redirects=False)
    assert forged.status_code == 403
    done = api.post(
        "/dashboard/queues/social_media/pause",
        data={"csrf": csrf_of(page.text), "next": "/dashboard/queues/social_media"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and connection.hexists(keys.PAUSED_QUEUES, "social_media")
    overview = api.get("/dashboard").text
    assert "status-paused" in overview  # the queue table says so


@pytest.mark.timeout(60)
def test_chart_data_pages_and_bad_input(api, connection):
    assert api.get("/dashboard/partials/history").status_code == 401
    stats.record_job_end(connection, queue="default", task="add", outcome="finished", duration=0.2)
    login(api, "read")
    data = api.get("/dashboard/partials/history?range=6h&queue=default").json()
    assert data["step"] == 300 and sum(data["series"]["finished"]) > 0
    assert api.get("/dashboard/partials/history?range=1y").status_code == 400
    assert api.get("/dashboard/partials/history?queue=nope").status_code == 404
    bad = api.get("/dashboard?range=1y")
    assert bad.status_code == 400 and "range" in bad.text
    assert api.get("/dashboard/queues/nope").status_code == 404
    wrong = api.get("/dashboard/posts?status=lost&user_id=u1").text  # the form stays, with the error
    assert 'id="filter-error"' in wrong and "status: unknown status" in wrong and 'value="u1"' in wrong
    assert "status: " in api.get("/dashboard/workflows?status=lost").text
    assert api.get("/dashboard/posts/post_missing").status_code == 404
    assert api.get("/dashboard/workflows/wfr_missing").status_code == 404
    assert api.get("/dashboard/batches/missing").status_code == 404
    assert api.get("/dashboard/batches?before=soon").status_code == 400
    for path in ("/dashboard/posts", "/dashboard/workflows", "/dashboard/batches"):
        page = api.get(path)
        assert page.status_code == 200 and "data-action" not in page.text, path
