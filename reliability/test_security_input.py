"""Hand-picked hostile input to every endpoint that writes: malformed and oversized bodies,
unknown tasks, far-past and far-future times, naive and invalid time zones, ids like ``../x``
and ``a:b``, 10 KB strings, SQL and header injection. Each is a 4xx whose error names the
field and the reason, never a 5xx, and nothing is written: Redis (every key and value) and the
database (every row) are the same after the request as before it.

(The single-field checks of POST /jobs and of odd job ids in GET/DELETE paths live in
tests/test_api_jobs.py and tests/test_posts_api.py; this module adds the other endpoints, the
"nothing written" proof and the injection cases.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
import redis
import sqlalchemy

from atomq.core.timeutil import utcnow
from atomq.db.base import Base
from atomq.db.engine import Database
from reliability.report import report
from testkit.fixtures import TOKENS

KB10 = "x" * 10_240
SQL = "x' OR '1'='1'; DROP TABLE scheduled_posts; --"
CRLF = "x\r\nSet-Cookie: pwned=1\r\nX-Injected: yes"
JOBS = "/api/v1/tasks/jobs"
POSTS = "/api/v1/tasks/scheduled-posts"
ACCOUNTS = "/api/v1/accounts"
BATCHES = "/api/v1/tasks/batches"


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """What is under test is the HTTP layer's refusals: SQLite is enough."""
    return f"sqlite:///{tmp_path / 'atomq.db'}"


@dataclass
class Case:
    """One hostile request and the refusal it must get."""

    name: str
    method: str
    path: str
    status: int
    field: str | None  # the error's ``field`` (None: the status alone says it, e.g. 404)
    body: Any = None
    raw: bytes | None = None
    scope: str = "admin"
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # a word the message must contain


def _snapshot_redis(connection: redis.Redis) -> dict[bytes, bytes]:
    """Every key with its serialized value (DUMP), so any write shows up."""
    return {key: connection.dump(key) or b"" for key in connection.scan_iter(count=1000)}


def _snapshot_db(database: Database) -> dict[str, str]:
    """A digest of every table's rows."""
    digests = {}
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(sqlalchemy.select(table)).all()
            digests[table.name] = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
    return digests


def _cases(account_id: str, post_id: str) -> list[Case]:
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    post = {"account_id": account_id, "content": "hello", "scheduled_for": soon}
    job = {"task": "add", "kwargs": {"a": 1, "b": 2}}
    return [
        # -- bodies
        Case("malformed JSON (jobs)", "POST", JOBS, 422, "body", raw=b'{"task": "add", ', reason="JSON"),
        Case("malformed JSON (posts)", "POST", POSTS, 422, "body", raw=b"{'single': quotes}", reason="JSON"),
        Case("malformed JSON (accounts)", "POST", ACCOUNTS, 422, "body", raw=b"[1, 2", reason="JSON"),
        Case("malformed JSON (batches)", "POST", BATCHES, 422, "body", raw=b"nul", reason="JSON"),
        Case("not UTF-8", "POST", JOBS, 422, "body", raw=b"\xff\xfe\x00{", reason="JSON"),
        Case("JSON of the wrong type", "POST", POSTS, 422, None, body=["a", "list"]),
        Case(
            "body over the limit", "POST", POSTS, 413, None,
            body={**post, "content": "x" * 1_100_000}, reason="limit",
        ),  # fmt: skip
        Case(
            "body over the limit (jobs)", "POST", JOBS, 413, None,
            body={**job, "kwargs": {"a": "x" * 1_100_000}}, reason="limit",
        ),  # fmt: skip
        # -- unknown tasks
        Case("unknown task (batch)", "POST", BATCHES, 422, "task", body={"task": "nope", "items": [{}]}),
        Case("os.system as a task", "POST", JOBS, 422, "task", body={"task": "os.system"}),
        Case("SQL as a task", "POST", JOBS, 422, "task", body={"task": SQL}),
        Case("unknown workflow", "POST", "/api/v1/tasks/workflows/nope/runs", 404, None),
        # -- times
        Case("far-past job", "POST", JOBS, 422, "at", body={**job, "at": "0001-01-01T00:00:00Z"}),
        Case("far-future job", "POST", JOBS, 422, "at", body={**job, "at": "9999-12-31T23:59:59Z"}),
        Case("far-past post", "POST", POSTS, 422, "scheduled_for", body={**post, "scheduled_for": "1970-01-01T00:00:00Z"}),
        Case("far-future post", "POST", POSTS, 422, "scheduled_for", body={**post, "scheduled_for": "9999-12-31T23:59:59Z"}),
        Case(
            "year zero", "POST", POSTS, 422, "scheduled_for", body={**post, "scheduled_for": "0000-01-01T00:00:00Z"}
        ),
        Case("naive time, no zone", "POST", POSTS, 422, "scheduled_for", body={**post, "scheduled_for": "2031-01-01T09:00:00"}, reason="offset"),
        Case(
            "invalid zone", "POST", POSTS, 422, "timezone",
            body={**post, "scheduled_for": "2031-01-01T09:00:00", "timezone": "Mars/Olympus"},
        ),  # fmt: skip
        Case(
            "zone as a path", "POST", JOBS, 422, "timezone",
            body={**job, "at": "2031-01-01T09:00:00", "timezone": "../../../etc/localtime"},
        ),  # fmt: skip
        Case("far-future reschedule", "PATCH", f"{POSTS}/{post_id}", 422, "scheduled_for", body={"scheduled_for": "9999-12-31T23:59:59Z"}),
        Case("invalid zone in an edit", "PATCH", f"{POSTS}/{post_id}", 422, "timezone", body={"timezone": KB10}),
        # -- ids
        Case("batch id ../x", "POST", BATCHES, 422, "batch_id", body={"task": "add", "items": [{"a": 1, "b": 1}], "batch_id": "../x"}),
        Case("batch id a:b", "POST", BATCHES, 422, "batch_id", body={"task": "add", "items": [{"a": 1, "b": 1}], "batch_id": "a:b"}),
        Case("queue a:b", "POST", JOBS, 422, "queue", body={**job, "queue": "a:b"}),
        Case("queue ../x (empty)", "DELETE", f"/api/v1/tasks/queues/{quote('../x', safe='')}/jobs", 404, None),
        Case("queue a:b (empty)", "DELETE", "/api/v1/tasks/queues/a:b/jobs", 422, "queue"),
        Case("queue a:b (requeue)", "POST", "/api/v1/tasks/failed/requeue", 422, "queue", body={"queue": "a:b"}),
        Case("post id ../x", "PATCH", f"{POSTS}/{quote('../x', safe='')}", 404, None, body={"content": "x"}),
        Case("post id a:b", "DELETE", f"{POSTS}/a:b/cancel", 404, None),
        Case("account id ../x", "DELETE", f"{ACCOUNTS}/{quote('../x', safe='')}", 404, None),
        Case("run id a:b", "POST", "/api/v1/tasks/workflows/runs/a:b/retry", 404, None),
        Case("batch id 10 KB", "DELETE", f"{BATCHES}/{KB10}/cancel", 404, None),
        Case("job id 10 KB (stop)", "POST", f"{JOBS}/{KB10}/stop", 404, None),
        # -- 10 KB strings
        Case("10 KB account id", "POST", POSTS, 422, "account_id", body={**post, "account_id": KB10}),
        Case("10 KB user id", "POST", POSTS, 422, "user_id", body={**post, "user_id": KB10}),
        Case("10 KB handle", "POST", ACCOUNTS, 422, "handle", body={"platform": "outbox", "handle": KB10}),
        Case("10 KB media URL", "POST", POSTS, 422, "media_urls", body={**post, "media_urls": ["https://a.example/" + KB10]}),
        Case("10 KB description", "POST", JOBS, 422, "description", body={**job, "description": KB10}),
        # -- SQL injection
        Case("SQL as an account id", "POST", POSTS, 422, "account_id", body={**post, "account_id": SQL[:60]}),
        Case("SQL as a platform", "POST", ACCOUNTS, 422, "platform", body={"platform": SQL, "handle": "h"}),
        Case("SQL as a post id", "DELETE", f"{POSTS}/{quote(SQL, safe='')}/cancel", 404, None),
        # -- header injection (CR/LF in values that end up in headers, logs or keys)
        Case("CRLF in a job id", "POST", JOBS, 422, "job_id", body={**job, "job_id": CRLF}),
        Case("CRLF in a handle", "POST", ACCOUNTS, 422, "handle", body={"platform": "outbox", "handle": CRLF}),
        Case("CRLF in a queue", "POST", JOBS, 422, "queue", body={**job, "queue": CRLF}),
        Case("CRLF in a batch id", "POST", BATCHES, 422, "batch_id", body={"task": "add", "items": [{"a": 1, "b": 1}], "batch_id": CRLF}),
        Case("token with SQL", "POST", JOBS, 401, None, body=job, scope="", headers={"Authorization": f"Bearer {SQL}"}),
        Case("token 10 KB", "POST", JOBS, 401, None, body=job, scope="", headers={"Authorization": f"Bearer {KB10}"}),
        Case("not a bearer", "POST", JOBS, 401, None, body=job, scope="", headers={"Authorization": "Basic YTpi"}),
    ]  # fmt: skip


def _send(api: Any, case: Case) -> Any:
    headers = dict(case.headers)
    if case.scope:
        headers["Authorization"] = f"Bearer {TOKENS[case.scope]}"
    if case.raw is not None or case.body is not None:
        headers["Content-Type"] = "application/json"
    content = case.raw if case.raw is not None else None
    if case.body is not None:
        content = json.dumps(case.body).encode()
    return api.request(case.method, case.path, content=content, headers=headers)


def test_hostile_input_is_a_4xx_naming_the_field_and_nothing_is_written(posts_api, connection, database):
    account = posts_api.post(
        ACCOUNTS, json={"platform": "outbox", "handle": "me", "user_id": "user_1"}, headers=posts_api.auth()
    ).json()
    post = posts_api.post(
        POSTS,
        json={"account_id": account["id"], "content": "hi", "scheduled_for": (utcnow() + timedelta(hours=2)).isoformat(), "user_id": "user_1"},
        headers=posts_api.auth(),
    ).json()  # fmt: skip
    assert "id" in post, post
    problems: list[str] = []
    cases = _cases(account["id"], post["id"])
    for case in cases:
        before = (_snapshot_redis(connection), _snapshot_db(database))
        response = _send(posts_api, case)
        after = (_snapshot_redis(connection), _snapshot_db(database))
        where = f"{case.name}: {case.method} {case.path[:60]} -> {response.status_code} {response.text[:300]}"
        if response.status_code != case.status:
            problems.append(f"{where} (expected {case.status})")
            continue
        error = response.json()["error"]
        if case.field is not None and error["field"] != case.field:
            problems.append(f"{where} (expected field {case.field!r})")
        if not error["message"] or (case.reason and case.reason.lower() not in error["message"].lower()):
            problems.append(f"{where} (the message must say why: {case.reason!r})")
        if len(response.text) > 2000:
            problems.append(f"{where} (echoes the input back: {len(response.text)} bytes)")
        injected = {k.lower() for k in response.headers} & {"x-injected", "set-cookie"}
        if injected:
            problems.append(f"{where} (injected headers {injected})")
        if before != after:
            changed = set(before[0]) ^ set(after[0]) | {
                k for k in before[0] if before[0][k] != after[0].get(k)
            }
            problems.append(f"{where} (it wrote: redis {sorted(changed)[:5]}, db {before[1] != after[1]})")
    assert not problems, "\n".join(problems)
    # The snapshots do see writes: a valid request changes both.
    before = (_snapshot_redis(connection), _snapshot_db(database))
    accepted = posts_api.post(
        POSTS,
        json={"account_id": account["id"], "content": "ok", "scheduled_for": (utcnow() + timedelta(minutes=5)).isoformat()},
        headers=posts_api.auth(),
    )  # fmt: skip
    assert accepted.status_code == 201, accepted.text
    after = (_snapshot_redis(connection), _snapshot_db(database))
    assert before[0] != after[0] and before[1] != after[1]
    # SQL in filters is a value, not a query: it matches nothing.
    for path in (f"{POSTS}?user_id={quote(SQL)}", f"{ACCOUNTS}?user_id={quote(SQL)}"):
        listed = posts_api.get(path, headers=posts_api.auth("read"))
        assert listed.status_code == 200, listed.text
        items = listed.json()
        assert not next(v for v in items.values() if isinstance(v, list)), (path, items)
    report("security_input", cases=len(cases), refused=len(cases), server_errors=0, writes=0)
