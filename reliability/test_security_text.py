"""One rule for text (issue 16, items 2 and 6): text that cannot be encoded as UTF-8 (a lone
surrogate such as ``"\\ud800"``, which a JSON escape or a non-UTF-8 command line can carry) is
refused at every entrance with a 422 (CLI: exit 2) naming the field; a JSON body that repeats
a key is refused the same way; text already stored that cannot be encoded is shown escaped,
never a 500; and a 500, whatever its cause, leaves the keep-alive connection open.

Before the fix such a job was stored and run, after which ``GET /jobs/{id}`` as admin was a
500 for good, one workflow run made ``GET /workflows/runs`` a 500 for every caller, a task
raising an exception whose message held one crashed the worker, and each 500 reset the
client's connection.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy
import uvicorn

from atomq.api.app import create_app
from atomq.core import keys
from atomq.core.errors import InvalidTextError
from atomq.core.timeutil import utcnow
from atomq.db.base import Base
from atomq.db.engine import Database
from atomq.features.posts.accounts import AccountInput, create_account
from atomq.features.posts.service import PostInput
from atomq.features.workflows import service as workflows
from reliability.report import report
from testkit.fixtures import TOKENS
from testkit.support import free_port, run_cli, wait_for

pytestmark = pytest.mark.slow

SURROGATE = "\ud800"
JOBS = "/api/v1/tasks/jobs"
POSTS = "/api/v1/tasks/scheduled-posts"
ACCOUNTS = "/api/v1/accounts"


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def _send(api: Any, method: str, path: str, raw: bytes, scope: str = "admin") -> Any:
    headers = {"Authorization": f"Bearer {TOKENS[scope]}", "Content-Type": "application/json"}
    return api.request(method, path, content=raw, headers=headers)


def _snapshot(connection: redis.Redis, database: Database) -> tuple[dict[bytes, bytes], str]:
    data = {key: connection.dump(key) or b"" for key in connection.scan_iter(count=1000)}
    digest = hashlib.sha256()
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            digest.update(repr(sorted(map(repr, conn.execute(sqlalchemy.select(table)).all()))).encode())
    return data, digest.hexdigest()


def _setup_records(api: Any) -> tuple[str, str]:
    account = api.post(ACCOUNTS, json={"platform": "outbox", "handle": "me"}, headers=api.auth()).json()
    soon = (utcnow() + timedelta(hours=2)).isoformat()
    post = api.post(
        POSTS, json={"account_id": account["id"], "content": "hi", "scheduled_for": soon}, headers=api.auth()
    ).json()
    return account["id"], post["id"]


def test_lone_surrogates_and_repeated_keys_are_refused_at_every_api_entrance(posts_api, connection, database):
    account_id, post_id = _setup_records(posts_api)
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    job = {"task": "add", "kwargs": {"a": 1, "b": 2}}
    post = {"account_id": account_id, "content": "hello", "scheduled_for": soon}
    batch = {"task": "add", "items": [{"a": 1, "b": 2}]}
    s = SURROGATE
    # (name, method, path, body as JSON text, expected field, expected code)
    cases: list[tuple[str, str, str, str, str, str]] = [
        ("kwargs value", "POST", JOBS, json.dumps({**job, "kwargs": {"a": s, "b": 2}}), "kwargs.a", "invalid_text"),
        ("kwargs key", "POST", JOBS, json.dumps({**job, "kwargs": {s: 1}}), "kwargs.\\ud800", "invalid_text"),
        ("nested in a list", "POST", JOBS, json.dumps({**job, "args": [1, ["x", "\udc80"]]}), "args[1][1]", "invalid_text"),  # noqa: E501
        ("meta value", "POST", JOBS, json.dumps({**job, "meta": {"note": "a" + s}}), "meta.note", "invalid_text"),
        ("description", "POST", JOBS, json.dumps({**job, "description": s}), "description", "invalid_text"),
        ("task name", "POST", JOBS, json.dumps({**job, "task": s}), "task", "invalid_text"),
        ("batch item", "POST", "/api/v1/tasks/batches", json.dumps({**batch, "items": [{"a": s, "b": 1}]}), "items[0].a", "invalid_text"),  # noqa: E501
        ("batch description", "POST", "/api/v1/tasks/batches", json.dumps({**batch, "description": s}), "description", "invalid_text"),  # noqa: E501
        ("post content", "POST", POSTS, json.dumps({**post, "content": "hi " + s}), "content", "invalid_text"),
        ("post media", "POST", POSTS, json.dumps({**post, "media_urls": ["https://a.example/" + s]}), "media_urls[0]", "invalid_text"),  # noqa: E501
        ("post edit", "PATCH", f"{POSTS}/{post_id}", json.dumps({"content": s}), "content", "invalid_text"),
        ("account handle", "POST", ACCOUNTS, json.dumps({"platform": "outbox", "handle": s}), "handle", "invalid_text"),
        ("account option", "POST", ACCOUNTS, json.dumps({"platform": "mastodon", "handle": "@a@b.example", "options": {"language": s}}), "options.language", "invalid_text"),  # noqa: E501
        ("workflow input", "POST", "/api/v1/tasks/workflows/diamond/runs", json.dumps({"input": {"n": s}}), "input.n", "invalid_text"),  # noqa: E501
        ("requeue queue", "POST", "/api/v1/tasks/failed/requeue", json.dumps({"queue": s}), "queue", "invalid_text"),
        ("repeated task", "POST", JOBS, '{"task": "add", "task": "process_scheduled_post"}', "task", "duplicate_key"),
        ("repeated nested", "POST", JOBS, '{"task": "add", "kwargs": {"a": 1, "b": 2, "a": 3}}', "kwargs.a", "duplicate_key"),  # noqa: E501
        ("repeated in a list", "POST", "/api/v1/tasks/batches", '{"task": "add", "items": [{"a": 1, "b": 1}, {"a": 1, "a": 2}]}', "items[1].a", "duplicate_key"),  # noqa: E501
        ("repeated post field", "POST", POSTS, json.dumps(post)[:-1] + ', "content": "other"}', "content", "duplicate_key"),
        ("repeated edit field", "PATCH", f"{POSTS}/{post_id}", '{"content": "a", "content": "b"}', "content", "duplicate_key"),
        ("repeated account field", "POST", ACCOUNTS, '{"platform": "outbox", "handle": "x", "handle": "y"}', "handle", "duplicate_key"),  # noqa: E501
        ("repeated stop field", "POST", f"{JOBS}/some-job/stop", '{"grace": 1, "grace": 2}', "grace", "duplicate_key"),
        ("repeated run field", "POST", "/api/v1/tasks/workflows/diamond/runs", '{"input": 1, "input": 2}', "input", "duplicate_key"),  # noqa: E501
        ("repeated requeue field", "POST", "/api/v1/tasks/failed/requeue", '{"all": false, "all": true}', "all", "duplicate_key"),  # noqa: E501
    ]  # fmt: skip
    problems = []
    for name, method, path, text, field, code in cases:
        before = _snapshot(connection, database)
        response = _send(posts_api, method, path, text.encode())
        after = _snapshot(connection, database)
        where = f"{name}: {method} {path} -> {response.status_code} {response.text[:300]}"
        if response.status_code != 422:
            problems.append(where)
            continue
        error = response.json()["error"]
        if (error["field"], error["code"]) != (field, code):
            problems.append(f"{where} (expected {field!r}, {code!r})")
        if before != after:
            problems.append(f"{where} (something was written)")
    assert not problems, "\n".join(problems)
    # Valid text, non-ASCII included, goes through; an escaped surrogate *pair* is one valid character.
    echo = _send(
        posts_api, "POST", JOBS, json.dumps({"task": "echo", "kwargs": {"value": "é\ud83d\ude00"}}).encode()
    )
    assert echo.status_code == 201 and echo.json()["kwargs"] == {"value": "é😀"}, echo.text
    report("security_text_api", cases=len(cases), refused=len(cases), written=0)


def test_python_api_and_cli_refuse_lone_surrogates_naming_the_field(tq, connection, env, database, service):
    attempts = {
        "enqueue kwargs": (lambda: tq.enqueue("echo", value="a" + SURROGATE), "kwargs.value"),
        "enqueue_many": (lambda: tq.enqueue_many([("echo", {"value": SURROGATE})]), "kwargs.value"),
        "enqueue_batch": (lambda: tq.enqueue_batch("echo", [{"value": 1}, {"value": SURROGATE}]), "items[1].value"),
        "description": (lambda: tq.enqueue("echo", value=1, description=SURROGATE), "description"),
    }  # fmt: skip
    for name, (attempt, field) in attempts.items():
        with pytest.raises(InvalidTextError) as caught:
            attempt()
        assert caught.value.field == field, (name, caught.value.field)
    settings = service.settings
    with pytest.raises(InvalidTextError) as caught:
        create_account(database, settings, AccountInput("outbox", "me" + SURROGATE, "user_1"))
    assert caught.value.field == "handle"
    account = create_account(database, settings, AccountInput("outbox", "me", "user_1"))
    with pytest.raises(InvalidTextError) as caught:
        service.create(PostInput(account.id, "hi" + SURROGATE, "user_1", publish_now=True))
    assert caught.value.field == "content"
    with pytest.raises(InvalidTextError) as caught:
        workflows.start_run(database, tq, "diamond", {"n": SURROGATE})
    assert caught.value.field == "input.n"
    assert connection.dbsize() == 0
    # The CLI: a byte that is not UTF-8 on the command line, and a JSON escape.
    for value in ("\udcff", '"\\ud800"'):
        done = run_cli(env, "enqueue", "echo", f"value={value}")
        assert done.returncode == 2, (value, done.returncode, done.stderr)
        assert done.stderr.startswith("error: kwargs.value is not valid Unicode text"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert connection.dbsize() == 0


def _plant_kwargs(connection: redis.Redis, tq: Any, task: str, kwargs: dict[str, Any]) -> str:
    """Queue ``task`` normally, then rewrite its arguments as a writer of Redis could (with JSON
    escapes that decode to lone surrogates)."""
    job = tq.enqueue(task, **{k: "placeholder" for k in kwargs})
    data = json.dumps([task, None, [], kwargs]).encode()  # ensure_ascii: "\ud800" as an escape
    connection.hset(keys.job_key(job.id), "data", zlib.compress(data))
    return job.id


def test_stored_text_that_cannot_be_encoded_is_shown_escaped_never_a_500(
    posts_api, tq, connection, database, burst, env
):
    echo = _plant_kwargs(connection, tq, "echo", {"value": SURROGATE})  # its result will hold one
    failing = _plant_kwargs(connection, tq, "fail", {"message": "bad " + SURROGATE})  # its error
    oddly_named = _plant_kwargs(connection, tq, "echo", {})  # its task's name
    odd = json.dumps(["ev" + SURROGATE + "il", None, [], {}]).encode()
    connection.hset(keys.job_key(oddly_named), "data", zlib.compress(odd))
    # Tasks can make such text themselves (a file name that is not UTF-8): the worker records
    # their result and their failure without dying (it died recording the failure).
    named = tq.enqueue("undecodable_name")
    named_failure = tq.enqueue("undecodable_name", fail=True)
    burst("--no-scheduler")
    forked_failure = tq.enqueue("undecodable_name", fail=True)  # and the RQ-class worker
    burst("--no-scheduler", "--worker-class", "rq")
    waiting = _plant_kwargs(connection, tq, "echo", {"value": "x" + SURROGATE})  # its arguments
    run = posts_api.post(
        "/api/v1/tasks/workflows/diamond/runs", json={"input": {"n": 1}}, headers=posts_api.auth()
    )
    assert run.status_code == 201, run.text
    batch = posts_api.post(
        "/api/v1/tasks/batches", json={"task": "add", "items": [{"a": 1, "b": 1}]}, headers=posts_api.auth()
    )  # noqa: E501
    account_id, post_id = _setup_records(posts_api)
    with database.engine.begin() as conn:  # JSON columns keep "\ud800" as an escape
        conn.execute(
            sqlalchemy.text("UPDATE workflow_runs SET input = :v"), {"v": json.dumps({"n": SURROGATE})}
        )
        conn.execute(
            sqlalchemy.text("UPDATE scheduled_posts SET media_urls = :v"), {"v": json.dumps([SURROGATE])}
        )
    connection.hset(keys.batch_key(batch.json()["id"]), "description", b"bad \xed\xa0\x80 bytes")
    reads = [
        (f"{JOBS}/{echo}", "write", '"result":"\\\\ud800"'),
        (f"{JOBS}/{failing}", "write", '"error":"ValueError: bad \\\\ud800"'),
        (f"{JOBS}/{failing}", "admin", "bad \\\\ud800"),
        (f"{JOBS}/{waiting}", "admin", '"kwargs":{"value":"x\\\\ud800"}'),
        (f"{JOBS}/{echo}/progress", "write", '"result":"\\\\ud800"'),
        ("/api/v1/tasks/failed", "write", "bad \\\\ud800"),
        ("/api/v1/tasks/failed", "read", '"task":"ev\\\\ud800il"'),
        (f"{JOBS}/{oddly_named}", "read", '"task":"ev\\\\ud800il"'),
        ("/api/v1/tasks/workflows/runs", "read", '"input":null'),
        ("/api/v1/tasks/workflows/runs", "write", '"input":{"n":"\\\\ud800"}'),
        (f"/api/v1/tasks/workflows/runs/{run.json()['id']}", "admin", '"n":"\\\\ud800"'),
        (f"/api/v1/tasks/batches/{batch.json()['id']}", "read", "bad \\\\xed\\\\xa0\\\\x80 bytes"),
        (f"{POSTS}/{post_id}", "write", '"media_urls":["\\\\ud800"]'),
        (POSTS, "write", '"media_urls":["\\\\ud800"]'),
        (f"{POSTS}/{post_id}/status", "read", '"post_id"'),
        (f"{JOBS}/{named.id}", "write", '"result":"/data/report-\\\\udcff.csv"'),
        (
            f"{JOBS}/{named_failure.id}",
            "write",
            '"error":"FileNotFoundError: no such file: /data/report-\\\\udcff.csv"',
        ),
        (
            f"{JOBS}/{forked_failure.id}",
            "write",
            '"error":"FileNotFoundError: no such file: /data/report-\\\\udcff.csv"',
        ),
    ]
    for path, scope, expected in reads:
        response = posts_api.get(path, headers=posts_api.auth(scope))
        assert response.status_code == 200, (path, scope, response.status_code, response.text[:300])
        assert expected in response.text, (path, scope, response.text[:600])
        response.content.decode("utf-8")  # strictly valid UTF-8
    # The dashboard shows the same text escaped.
    _login(posts_api)
    pages = (f"/dashboard/jobs/{waiting}", f"/dashboard/jobs/{failing}", f"/dashboard/jobs/{oddly_named}")
    for path in (*pages, "/dashboard/failed", "/dashboard/partials/failed", "/dashboard"):
        page = posts_api.get(path)
        assert page.status_code == 200 and "\\ud800" in page.text, (path, page.status_code, page.text[:300])
    # And the CLI, as a table and as JSON.
    for args in (("status", echo), ("status", echo, "--json"), ("failed", "--job-id", failing)):
        done = run_cli(env, *args)
        assert done.returncode == 0 and "\\ud800" in done.stdout, (args, done.returncode, done.stderr)
    report("security_text_stored", reads=len(reads), dashboard_pages=6, cli_commands=3, server_errors=0)


def _login(api: Any, scope: str = "admin") -> None:
    form = api.get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    done = api.post("/dashboard/login", data={"token": TOKENS[scope], "nonce": nonce, "next": "/dashboard"})
    assert done.status_code == 200, done.text[:300]


@pytest.fixture
def live_api(api_settings: Any, connection: redis.Redis, database: Database) -> Iterator[tuple[str, int]]:
    """The API served by a real uvicorn on a free port (TestClient has no connections to keep),
    with one extra route that fails the way a bug would."""
    app = create_app(api_settings, redis_client=connection, database=database)

    def broken() -> dict[str, str]:
        raise RuntimeError("a bug nobody expected")

    app.add_api_route("/test-only/broken", broken)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, what="uvicorn")
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)


def test_a_500_leaves_the_keep_alive_connection_open(live_api, tq, connection):
    host, port = live_api
    waiting = _plant_kwargs(connection, tq, "echo", {"value": SURROGATE})
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    conn.request("GET", "/health")
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    assert first.status == 200 and sock is not None
    requests = [
        ("/test-only/broken", 500),  # an unexpected error
        (f"{JOBS}/{waiting}", 200),  # stored text that cannot be encoded (was a 500)
        ("/api/v1/tasks/workflows/runs", 200),
        ("/health", 200),
    ]
    started = time.monotonic()
    for path, status in requests:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == status, (path, response.status, body[:300])
        assert not response.will_close, (path, response.getheaders())
        assert conn.sock is sock, f"{path}: the server closed the connection"
        if status == 500:
            assert json.loads(body)["error"]["code"] == "internal_error"
    conn.close()
    report(
        "security_keepalive",
        requests=len(requests) + 1,
        connections=1,
        seconds=round(time.monotonic() - started, 2),
    )
