"""The written scope policy (docs/operations.md, "What each scope sees"), applied to every
endpoint and dashboard page, and tokens bound to a user (issue 16, items 5 and 6).

Every kind of data carries a marker: a job's result, its error message, a workflow step's
error and a run's input, a post's text, a progress message (what the work *says*: ``write``
and up) and a waiting job's arguments (what it was *called with*: ``admin``). Every read
endpoint and page is fetched with each scope, and a marker must appear exactly where the
policy lets it. Before the fix ``read`` saw run inputs, step results, post text and error
summaries quoting arguments (``no scheduled post SECRETKW1``).

Tokens bound to a user reach that user's accounts, posts and workflow runs only; another
user's record is a 404 and naming another user a 403; what all users share (jobs, queues,
batches, metrics, the dashboard) is refused. Unbound tokens keep their full reach. Logging
out of the dashboard needs the session's CSRF token like every other button.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from atomq.api.app import create_app
from atomq.api.auth import entry_for, parse_entries
from atomq.core.timeutil import utcnow
from atomq.features.longjobs.progress import live_key
from reliability.report import report
from testkit.fixtures import TOKENS
from testkit.posts import POSTS_OVERRIDES
from testkit.support import run_cli

pytestmark = pytest.mark.slow

API = "/api/v1/tasks"

#: What the work says: shown from ``write`` up.
CONTENT = ("RESULTSECRET", "ERRSECRET", "GATESECRET", "INPUTSECRET", "POSTSECRET", "PROGRESSSECRET")
#: What it was called with: ``admin`` only.
INTERNALS = ("ARGSECRET",)


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def _login(client: Any, token: str) -> Any:
    form = client.get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return client.post("/dashboard/login", data={"token": token, "nonce": nonce, "next": "/dashboard"})


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def _work(
    posts_api: Any, tq: Any, connection: redis.Redis, env: dict[str, str], database: Any, tmp_path: Any
) -> dict[str, str]:  # noqa: E501
    """One of everything, each carrying its marker; returns the ids."""
    done = tq.enqueue("echo", value="RESULTSECRET")
    failed = tq.enqueue("fail", message="ERRSECRET")
    waiting = tq.enqueue_in(timedelta(hours=1), "echo", value="ARGSECRET")
    body = {
        "input": {
            "n": 1,
            "flag": str(tmp_path / "GATESECRET"),
            "ledger": str(tmp_path / "l"),
            "tag": "INPUTSECRET",
        }
    }
    run = posts_api.post(f"{API}/workflows/gated/runs", json=body, headers=posts_api.auth("write")).json()
    db_env = dict(env, DATABASE_URL=database.engine.url.render_as_string(hide_password=False))
    worked = run_cli(db_env, "worker", "--burst", "--no-scheduler", timeout=120)
    assert worked.returncode == 0, worked.stderr
    connection.hset(
        live_key(done.id), mapping={"fraction": "0.5", "message": "PROGRESSSECRET", "progress_at": "1"}
    )
    account = posts_api.post(
        "/api/v1/accounts", json={"platform": "outbox", "handle": "me"}, headers=posts_api.auth()
    ).json()
    due = (utcnow() + timedelta(hours=2)).isoformat()
    post = posts_api.post(
        f"{API}/scheduled-posts", json={"account_id": account["id"], "content": "POSTSECRET", "scheduled_for": due},
        headers=posts_api.auth(),
    ).json()  # fmt: skip
    return {"done": done.id, "failed": failed.id, "waiting": waiting.id, "run": run["id"], "post": post["id"]}


def test_each_scope_sees_what_the_policy_says_on_every_endpoint_and_page(
    posts_api, tq, connection, env, database, tmp_path
):
    ids = _work(posts_api, tq, connection, env, database, tmp_path)
    paths = [
        f"{API}/jobs/{ids['done']}", f"{API}/jobs/{ids['done']}/progress", f"{API}/jobs/{ids['failed']}",
        f"{API}/jobs/{ids['failed']}/progress", f"{API}/jobs/{ids['waiting']}", f"{API}/failed", f"{API}/scheduled",
        f"{API}/queues", f"{API}/workers", f"{API}/workflows", f"{API}/workflows/runs",
        f"{API}/workflows/runs/{ids['run']}", f"{API}/scheduled-posts", f"{API}/scheduled-posts/{ids['post']}",
        f"{API}/scheduled-posts/{ids['post']}/status", "/api/v1/accounts", "/metrics",
    ]  # fmt: skip
    pages = ["/dashboard", "/dashboard/partials/overview", "/dashboard/failed", "/dashboard/partials/failed"]
    pages += [f"/dashboard/jobs/{ids[k]}" for k in ("done", "failed", "waiting")]
    seen: dict[str, str] = {}
    for scope in ("read", "write", "admin"):
        texts = []
        for path in paths:
            response = posts_api.get(path, headers=posts_api.auth(scope))
            assert response.status_code == 200, (scope, path, response.text[:300])
            texts.append(response.text)
        assert _login(posts_api, TOKENS[scope]).status_code == 200
        for page in pages:
            response = posts_api.get(page)
            assert response.status_code == 200, (scope, page, response.text[:300])
            texts.append(response.text)
        seen[scope] = "\n".join(texts)
    shown = {scope: {m for m in CONTENT + INTERNALS if m in text} for scope, text in seen.items()}
    assert shown["read"] == set(), f"read saw {shown['read']}"
    assert shown["write"] == set(CONTENT), f"write saw {shown['write']}"
    assert shown["admin"] == set(CONTENT + INTERNALS), f"admin saw {shown['admin']}"
    # What read gets instead: the fields, empty, and the error's kind.
    job = posts_api.get(f"{API}/jobs/{ids['failed']}", headers=posts_api.auth("read")).json()
    assert job["status"] == "failed" and job["error"] == "ValueError" and job["result"] is None
    run = posts_api.get(f"{API}/workflows/runs/{ids['run']}", headers=posts_api.auth("read")).json()
    assert run["input"] is None and run["error"] == "step G failed"
    assert [s["error"] for s in run["steps"] if s["error"]] == ["ValueError"]
    post = posts_api.get(f"{API}/scheduled-posts/{ids['post']}", headers=posts_api.auth("read")).json()
    assert post["content"] is None and post["media_urls"] is None and post["status"] == "scheduled"
    definitions = posts_api.get(f"{API}/workflows", headers=posts_api.auth("write")).json()["items"]
    assert all(step["kwargs"] is None for w in definitions for step in w["steps"])
    definitions = posts_api.get(f"{API}/workflows", headers=posts_api.auth("admin")).json()["items"]
    gated = next(w for w in definitions if w["name"] == "gated")
    assert {s["name"]: s["kwargs"] for s in gated["steps"]}["E"] == {"key": "E"}
    report(
        "security_scopes",
        endpoints=len(paths),
        pages=len(pages),
        markers_seen={scope: sorted(found) for scope, found in shown.items()},
    )


#: Extra tokens bound to users (and one unbound write token, as today).
USER_TOKENS = {
    "alice": ("alice-app", "write", "atq_alice_token", "alice"),
    "alice-read": ("alice-ro", "read", "atq_alice_read_token", "alice"),
    "bob": ("bob-app", "write", "atq_bob_token", "bob"),
    "bob-admin": ("bob-admin", "admin", "atq_bob_admin_token", "bob"),
}


@pytest.fixture
def owners_api(api_settings: Any, connection: redis.Redis, database: Any) -> Iterator[Any]:
    entries = list(api_settings.api_tokens) + [entry_for(n, s, t, u) for n, s, t, u in USER_TOKENS.values()]
    settings = api_settings.model_copy(update={**POSTS_OVERRIDES, "api_tokens": entries})
    with TestClient(
        create_app(settings, redis_client=connection, database=database), raise_server_exceptions=False
    ) as client:  # noqa: E501
        yield client


def _as(who: str) -> dict[str, str]:
    token = USER_TOKENS[who][2] if who in USER_TOKENS else TOKENS[who]
    return {"Authorization": f"Bearer {token}"}


def test_a_token_bound_to_a_user_reaches_only_that_users_records(owners_api, env, database):
    c = owners_api
    due = (utcnow() + timedelta(hours=3)).isoformat()
    mine = c.post("/api/v1/accounts", json={"platform": "outbox", "handle": "a"}, headers=_as("alice")).json()
    theirs = c.post("/api/v1/accounts", json={"platform": "outbox", "handle": "b"}, headers=_as("bob")).json()
    assert (mine["user_id"], theirs["user_id"]) == ("alice", "bob")
    forbidden = c.post(
        "/api/v1/accounts", json={"platform": "outbox", "handle": "c", "user_id": "bob"}, headers=_as("alice")
    )
    assert forbidden.status_code == 403 and forbidden.json()["error"]["field"] == "user_id"
    listed = c.get("/api/v1/accounts", headers=_as("alice-read")).json()["accounts"]
    assert [a["id"] for a in listed] == [mine["id"]]
    assert c.get("/api/v1/accounts?user_id=bob", headers=_as("alice")).status_code == 403
    assert c.get(f"/api/v1/accounts/{theirs['id']}", headers=_as("alice")).status_code == 404
    assert c.delete(f"/api/v1/accounts/{theirs['id']}", headers=_as("alice")).status_code == 404
    # Posts: only through one's own accounts, only as oneself.
    posts = f"{API}/scheduled-posts"
    through_bob = c.post(
        posts, json={"account_id": theirs["id"], "content": "x", "scheduled_for": due}, headers=_as("alice")
    )
    assert through_bob.status_code == 422 and through_bob.json()["error"]["field"] == "account_id"
    as_bob = c.post(
        posts,
        json={"account_id": mine["id"], "content": "x", "scheduled_for": due, "user_id": "bob"},
        headers=_as("alice"),
    )  # noqa: E501
    assert as_bob.status_code == 403 and as_bob.json()["error"]["field"] == "user_id"
    post = c.post(
        posts, json={"account_id": mine["id"], "content": "hers", "scheduled_for": due}, headers=_as("alice")
    ).json()
    assert post["user_id"] == "alice"
    assert c.get(f"{posts}/{post['id']}", headers=_as("alice-read")).status_code == 200
    for method, path, body in (
        ("GET", f"{posts}/{post['id']}", None),
        ("GET", f"{posts}/{post['id']}/status", None),
        ("PATCH", f"{posts}/{post['id']}", {"content": "bob was here"}),
        ("DELETE", f"{posts}/{post['id']}/cancel", None),
    ):
        for who in ("bob", "bob-admin"):
            response = c.request(method, path, json=body, headers=_as(who))
            assert response.status_code == 404, (who, method, path, response.text)
    assert c.get(posts, headers=_as("bob")).json()["items"] == []
    assert c.get(f"{posts}?user_id=alice", headers=_as("bob")).status_code == 403
    assert c.get(f"{posts}/{post['id']}", headers=_as("alice")).json()["content"] == "hers"
    # Workflow runs belong to the user whose token started them.
    run = c.post(f"{API}/workflows/diamond/runs", json={"input": {"n": 1}}, headers=_as("alice"))
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    for method, path in (("GET", f"{API}/workflows/runs/{run_id}"), ("POST", f"{API}/workflows/runs/{run_id}/retry"),
                         ("DELETE", f"{API}/workflows/runs/{run_id}/cancel")):  # fmt: skip
        assert c.request(method, path, headers=_as("bob")).status_code == 404, (method, path)
    assert c.get(f"{API}/workflows/runs", headers=_as("bob")).json()["items"] == []
    assert [r["id"] for r in c.get(f"{API}/workflows/runs", headers=_as("alice-read")).json()["items"]] == [
        run_id
    ]
    # Nothing shared across users: jobs, queues, batches, failed jobs, workers, metrics.
    shared = [("GET", f"{API}/queues"), ("GET", f"{API}/jobs/{post['job_id'] or 'x'}"), ("POST", f"{API}/jobs"),
              ("GET", f"{API}/failed"), ("GET", f"{API}/workers"), ("GET", f"{API}/scheduled"),
              ("POST", f"{API}/batches"), ("GET", f"{API}/batches/b1"), ("GET", "/metrics")]  # fmt: skip
    for method, path in shared:
        response = c.request(
            method, path, json={"task": "echo"} if method == "POST" else None, headers=_as("bob-admin")
        )
        assert response.status_code == 403 and "acts for user 'bob'" in response.json()["error"]["message"], (
            method,
            path,
        )
    login = _login(c, USER_TOKENS["alice"][2])
    assert login.status_code == 403 and "one user" in login.text
    # Unbound tokens keep today's reach: every user's records, any account, any user_id.
    everyone = c.get("/api/v1/accounts", headers=_as("write")).json()["accounts"]
    assert {a["user_id"] for a in everyone} == {"alice", "bob"}
    assert c.get(f"{posts}/{post['id']}", headers=_as("read")).status_code == 200
    anyone = c.post(
        posts,
        json={"account_id": mine["id"], "content": "x", "scheduled_for": due, "user_id": "carol"},
        headers=_as("write"),
    )  # noqa: E501
    assert anyone.status_code == 201 and anyone.json()["user_id"] == "carol"
    assert run_id in [r["id"] for r in c.get(f"{API}/workflows/runs", headers=_as("admin")).json()["items"]]
    # `atomq token create --user` makes such an entry; users the entry format cannot hold are refused.
    made = run_cli(
        env, "token", "create", "--name", "carol-app", "--scope", "write", "--user", "carol:42", "--json"
    )
    assert made.returncode == 0, made.stderr
    entry = json.loads(made.stdout)["entry"]
    assert entry.startswith("carol-app:write:") and entry.endswith(":carol:42")
    assert parse_entries([entry])[0].principal().user == "carol:42"
    for user in ("a,b", "line\nbreak", ""):
        refused = run_cli(env, "token", "create", "--user", user)
        assert refused.returncode == 2 and "--user" in refused.stderr, (user, refused.stderr)
    report("security_ownership", users=2, foreign_reads_refused=True, shared_endpoints_refused=len(shared))


def test_logging_out_needs_the_csrf_token(api):
    home = _login(api, TOKENS["admin"])
    csrf = _csrf(home.text)
    for data, headers in (
        ({}, {}),
        ({"csrf": "forged"}, {}),
        ({"csrf": csrf}, {"Origin": "https://evil.example"}),
    ):
        refused = api.post("/dashboard/logout", data=data, headers=headers, follow_redirects=False)
        assert refused.status_code == 403, (data, headers, refused.status_code)
        assert "set-cookie" not in refused.headers, "the cookie must stay"
        assert api.get("/dashboard", follow_redirects=False).status_code == 200, "still logged in"
    done = api.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and "atomq_session=" in done.headers["set-cookie"]
    assert api.get("/dashboard", follow_redirects=False).status_code == 303, "logged out"
