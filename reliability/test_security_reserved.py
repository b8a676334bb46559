"""Reserved job fields (issue 16, item 1): the ``meta`` keys atomq reads back (``batch_id``,
``batch_index``) cannot be set by callers, and workers ignore forged ones.

Entrances: the HTTP API refuses them with a 422 naming ``meta.<key>`` and writes nothing; the
Python API (enqueue, enqueue_in, enqueue_at, enqueue_many) raises the same error. Workers: jobs
written into Redis by hand with forged batch fields (a real batch's id with index -1, 80 000 000,
2^32, one past its end, a string, a boolean; a batch that does not exist; meta that is not an
object; a job that names a batch item it is not) are run by both worker classes. Each runs
and finishes, no worker dies, the batch's counts do not move, its bitmaps keep their size and
Redis does not grow: before the fix one such job killed a worker, and 80 000 000 made five
12 MB bitmaps.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from atomq.core import keys
from atomq.core.errors import InvalidJobOptionError
from atomq.core.keys import batch_key, bits_key
from atomq.engine.batches import OUTCOMES
from atomq.features.batches.progress import batch_progress
from reliability.report import report

pytestmark = pytest.mark.slow

JOBS = "/api/v1/tasks/jobs"

#: Forged meta written into job hashes: (job id, meta). The batch under attack is ``b2`` (3 items).
FORGED: list[tuple[str, Any]] = [
    ("forged-negative", {"batch_id": "b2", "batch_index": -1}),
    ("forged-huge", {"batch_id": "b2", "batch_index": 80_000_000}),
    ("forged-2-32", {"batch_id": "b2", "batch_index": 2**32}),
    ("forged-string", {"batch_id": "b2", "batch_index": "1"}),
    ("forged-bool", {"batch_id": "b2", "batch_index": True}),
    ("forged-float", {"batch_id": "b2", "batch_index": 1.0}),
    ("forged-key", {"batch_id": "b2:started", "batch_index": 0}),
    ("forged-other-item", {"batch_id": "b2", "batch_index": 0}),  # not job b2-0: must not count
    ("forged-list-meta", [1, 2, 3]),
    ("forged-text-meta", "batch_id"),
    ("nobatch-0", {"batch_id": "nobatch", "batch_index": 0}),  # its own id, no such batch
    ("b2-3", {"batch_id": "b2", "batch_index": 3}),  # its own id, one past the end of b2
    ("b2-80000000", {"batch_id": "b2", "batch_index": 80_000_000}),  # its own id, far past
]


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"


def _snapshot(connection: redis.Redis) -> dict[bytes, bytes]:
    return {key: connection.dump(key) or b"" for key in connection.scan_iter(count=1000)}


def test_api_refuses_reserved_meta_keys_naming_the_field_and_writes_nothing(api, connection):
    cases = [
        ({"batch_id": "b2", "batch_index": -1}, "meta.batch_id"),
        ({"batch_index": 80_000_000}, "meta.batch_index"),
        ({"note": "ok", "batch_id": "b2"}, "meta.batch_id"),
    ]
    for scope in ("write", "admin"):
        for meta, field in cases:
            before = _snapshot(connection)
            response = api.post(
                JOBS, json={"task": "add", "kwargs": {"a": 1, "b": 2}, "meta": meta}, headers=api.auth(scope)
            )
            assert response.status_code == 422, (scope, meta, response.text)
            error = response.json()["error"]
            assert error["field"] == field and "reserved" in error["message"], error
            assert _snapshot(connection) == before, "a refused job must leave no trace"
    # Other keys are the caller's own, and come back (to admin) as given.
    ok = api.post(
        JOBS, json={"task": "add", "kwargs": {"a": 1, "b": 2}, "meta": {"batch": "mine"}}, headers=api.auth()
    )
    assert ok.status_code == 201 and ok.json()["meta"] == {"batch": "mine"}, ok.text


def test_python_api_refuses_reserved_meta_keys_at_every_entrance(tq, connection):
    meta = {"batch_id": "b2", "batch_index": 1}
    attempts = {
        "enqueue": lambda: tq.enqueue("add", a=1, b=2, meta=meta),
        "enqueue_in": lambda: tq.enqueue_in(timedelta(minutes=5), "add", a=1, b=2, meta=meta),
        "enqueue_at": lambda: tq.enqueue_at(datetime(2031, 1, 1, tzinfo=UTC), "add", a=1, b=2, meta=meta),
        "enqueue_many": lambda: tq.enqueue_many([{"task": "add", "kwargs": {"a": 1, "b": 2}, "meta": meta}]),
    }
    for name, attempt in attempts.items():
        with pytest.raises(InvalidJobOptionError) as caught:
            attempt()
        assert caught.value.field == "meta.batch_id", (name, caught.value.field)
    assert connection.dbsize() == 0, "nothing may be written"


def _plant(connection: redis.Redis, tq: Any, job_id: str, meta: Any) -> None:
    """A queued ``add`` job whose hash carries ``meta`` as written by someone with Redis access."""
    template = tq.enqueue("add", a=1, b=2)
    raw = connection.hgetall(keys.job_key(template.id))
    connection.delete(keys.job_key(template.id))
    connection.lrem(keys.queue_key("default"), 0, template.id)
    raw[b"meta"] = json.dumps(meta).encode()
    raw[b"data"] = zlib.compress(json.dumps(["add", None, [], {"a": 1, "b": 2}]).encode())
    connection.hset(keys.job_key(job_id), mapping=raw)
    connection.rpush(keys.queue_key("default"), job_id)


def _bitmap_sizes(connection: redis.Redis, batch_id: str) -> dict[str, int]:
    return {o: int(connection.strlen(bits_key(batch_id, o))) for o in (*OUTCOMES, "started")}


def test_workers_ignore_forged_batch_fields_and_never_crash(tq, connection, burst, tmp_path):
    # The batch under attack: 3 items on a queue no worker in this test serves.
    batch = tq.enqueue_batch("add", [{"a": i, "b": 1} for i in range(3)], batch_id="b2", queue="idle")
    assert batch.total == 3
    sizes = _bitmap_sizes(connection, "b2")
    assert all(size == 1 for size in sizes.values()), sizes
    for job_id, meta in FORGED:
        _plant(connection, tq, job_id, meta)
    memory = int(connection.info("memory")["used_memory"])
    for worker_class in ("fast", "rq"):
        done = burst("--worker-class", worker_class, "--no-scheduler", "default")
        assert done.returncode == 0, done.stderr
        for job_id, _ in FORGED:
            status = tq.get_job_status(job_id)
            assert status["status"] == "finished" and status["result"] == 3, (worker_class, job_id, status)
        progress = batch_progress(connection, "b2")
        assert (progress.ended, progress.running, progress.queued, progress.percent) == (0, 0, 3, 0.0), (
            worker_class,
            progress,
        )
        assert _bitmap_sizes(connection, "b2") == sizes, "no bitmap may grow past the batch"
        assert not connection.exists(batch_key("nobatch")), "a missing batch must not be created"
        assert not any(connection.scan_iter(match=bits_key("nobatch", "*"))), "nor its bitmaps"
        # Run them all again with the other worker class.
        for job_id, _ in FORGED:
            connection.hset(keys.job_key(job_id), "status", "queued")
            connection.rpush(keys.queue_key("default"), job_id)
    grown = int(connection.info("memory")["used_memory"]) - memory
    assert grown < 2_000_000, f"Redis grew by {grown} bytes"
    # The batch's own items still count normally once a worker serves their queue.
    for job_id, _ in FORGED:
        connection.lrem(keys.queue_key("default"), 0, job_id)
    burst("--no-scheduler", "idle")
    progress = batch_progress(connection, "b2")
    assert (progress.finished, progress.ended, progress.state) == (3, 3, "finished"), progress
    report(
        "security_reserved_meta",
        forged_jobs=len(FORGED),
        workers=["fast", "rq"],
        worker_crashes=0,
        batch_counts_moved=0,
        redis_growth_bytes=grown,
    )


def test_batch_requests_carry_no_meta_of_their_own(api, connection):
    # A batch's items get their batch fields from atomq alone; a request cannot add any.
    response = api.post(
        "/api/v1/tasks/batches",
        json={"task": "add", "items": [{"a": 1, "b": 2}], "meta": {"batch_index": -1}},
        headers=api.auth("write"),
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "meta", response.text
    assert connection.dbsize() == 0
