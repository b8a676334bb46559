"""Batches: one round trip per chunk, exact progress at scale, cancel, reconcile, API and CLI."""

from __future__ import annotations

import json
import time

import pytest

from atomq.core import keys
from atomq.engine.batches import chunked, item_job_id
from atomq.features.batches.progress import batch_progress
from atomq.features.batches.tracking import cancel_batch, reconcile_active, reconcile_batch
from testkit.support import wait_for


def ground_truth(connection, batch):
    """Count the batch's job statuses by reading every job hash (what the bitmaps must match)."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in batch.job_ids():
            pipe.hget(keys.job_key(job_id), "status")
        statuses = [s.decode() for s in pipe.execute()]
    return {s: statuses.count(s) for s in set(statuses)}


def test_ten_thousand_items_progress_counts_are_exact(tq, connection, procs):
    batch = tq.enqueue_batch("fail_odd", [{"i": i} for i in range(10_000)], chunk_size=1000)
    assert batch.total == 10_000
    assert connection.llen(keys.queue_key("default")) == 10_000
    start = batch_progress(connection, batch.id)
    assert (start.total, start.queued, start.ended, start.percent, start.state) == (
        10_000,
        10_000,
        0,
        0.0,
        "running",
    )
    worker = procs.worker("default", "--count", "2", "--no-scheduler")
    wait_for(lambda: batch_progress(connection, batch.id).ended >= 100, 60, what="some items to run")
    midway = batch_progress(connection, batch.id)
    assert midway.rate and midway.rate > 0 and midway.eta_seconds and midway.estimated_finish_at
    # Cancel the rest as a whole; the items already running finish.
    canceled = cancel_batch(connection, batch.id)
    assert canceled.state == "canceled"
    # Items the workers held when the batch was canceled still run; then nothing is left.
    wait_for(lambda: batch_progress(connection, batch.id).ended == 10_000, 30, what="every item to end")
    procs.stop(worker)
    reconcile_active(connection, now=time.time() + 3600)  # finds nothing left to fix
    final = batch_progress(connection, batch.id)
    truth = ground_truth(connection, batch)
    assert sum(truth.values()) == 10_000
    assert final.finished == truth.get("finished", 0) > 0
    assert final.failed == truth.get("failed", 0) > 0
    assert final.canceled == truth.get("canceled", 0) > 9_000
    assert final.finished + final.failed + final.canceled == final.ended == 10_000, truth
    assert final.percent == 100.0 and final.queued == final.running == 0
    # Odd items fail, even ones succeed: the split is what the workers did.
    assert abs(final.finished - final.failed) <= 2


def test_a_batch_runs_to_completion_with_mixed_outcomes(tq, connection, burst, cli):
    batch = tq.enqueue_batch("fail_odd", [{"i": i} for i in range(60)], chunk_size=7)
    burst("default")
    progress = batch_progress(connection, batch.id)
    assert (progress.state, progress.finished, progress.failed, progress.percent) == (
        "finished",
        30,
        30,
        100.0,
    )
    assert progress.rate > 0 and progress.eta_seconds is None and progress.ended_at
    shown = cli("batch", "status", batch.id)
    assert shown.returncode == 0, shown.stderr
    assert "finished" in shown.stdout and "60/60 done (100.0%)" in shown.stdout
    watched = cli("batch", "status", batch.id, "--watch", "--json")
    assert json.loads(watched.stdout)["finished"] == 30


def test_invalid_items_queue_nothing(tq, connection):
    from atomq.core.errors import TaskArgumentsError, UnknownTaskError

    with pytest.raises(TaskArgumentsError, match=r"items\[2\]"):
        tq.enqueue_batch("add", [{"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1}])
    with pytest.raises(UnknownTaskError):
        tq.enqueue_batch("nope", [{}])
    assert connection.llen(keys.queue_key("default")) == 0
    assert not connection.keys("atomq:batch:*")


def test_reconcile_accounts_for_jobs_no_hook_saw(tq, connection, burst):
    batch = tq.enqueue_batch("noop", [{"i": i} for i in range(20)])
    tq.cancel_job(item_job_id(batch.id, 3))  # canceled by hand: no worker hook sees it
    burst("default")
    before = batch_progress(connection, batch.id)
    assert (before.finished, before.canceled, before.ended) == (19, 0, 19)
    assert reconcile_batch(connection, batch.id) == 1
    after = batch_progress(connection, batch.id)
    assert (after.finished, after.canceled, after.state) == (19, 1, "finished")
    reconcile_active(connection, now=time.time() + 3600)
    assert not connection.zscore("atomq:batches:active", batch.id)


def test_chunk_helper_splits_large_input_into_jobs(tq, connection, burst, tmp_path):
    out = tmp_path / "sums"
    out.mkdir()
    numbers = list(range(1, 1001))
    chunks = list(chunked(numbers, 300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    batch = tq.enqueue_batch("sum_chunk", [{"items": c, "out_dir": str(out)} for c in chunks])
    burst("default")
    assert batch_progress(connection, batch.id).finished == 4
    assert sum(int(p.read_text()) for p in out.iterdir()) == sum(numbers)


def test_batch_api(api, connection, burst):
    bad = api.post(
        "/api/v1/tasks/batches", json={"task": "add", "items": [{"a": 1}]}, headers=api.auth("write")
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "items[0]"
    denied = api.post(
        "/api/v1/tasks/batches", json={"task": "add", "items": [{"a": 1, "b": 1}]}, headers=api.auth("read")
    )
    assert denied.status_code == 403
    created = api.post(
        "/api/v1/tasks/batches",
        json={"task": "add", "items": [{"a": i, "b": 1} for i in range(5)]},
        headers=api.auth("write"),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["total"], body["queued"], body["state"]) == (5, 5, "running")
    burst("default")
    done = api.get(f"/api/v1/tasks/batches/{body['id']}", headers=api.auth("read")).json()
    assert (done["finished"], done["percent"], done["state"]) == (5, 100.0, "finished")
    again = api.delete(f"/api/v1/tasks/batches/{body['id']}/cancel", headers=api.auth("write"))
    assert again.status_code == 409
    missing = api.get("/api/v1/tasks/batches/batch_nope", headers=api.auth("read"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"


def test_batch_cli_enqueue_and_cancel(cli, tmp_path, connection):
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"a": i, "b": 0}) for i in range(50)))
    created = cli("batch", "enqueue", "add", "--file", str(items), "--chunk-size", "20")
    assert created.returncode == 0, created.stderr
    batch_id = created.stdout.strip()
    canceled = cli("batch", "cancel", batch_id, "--json")
    assert json.loads(canceled.stdout)["canceled"] == 50
    assert connection.hget(keys.job_key(f"{batch_id}-7"), "status") == b"canceled"
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    failed = cli("batch", "enqueue", "add", "--file", str(broken))
    assert failed.returncode == 2 and "not JSON" in failed.stderr


def test_ten_thousand_items_run_to_the_end_with_exact_counts(tq, connection, procs):
    batch = tq.enqueue_batch("fail_odd", [{"i": i} for i in range(10_000)])
    procs.worker("default", "--count", "2", "--no-scheduler")
    wait_for(
        lambda: batch_progress(connection, batch.id).state == "finished", 100, what="the batch to finish"
    )
    final = batch_progress(connection, batch.id)
    truth = ground_truth(connection, batch)
    assert truth == {"finished": 5_000, "failed": 5_000}
    assert (final.finished, final.failed, final.ended, final.queued, final.running) == (
        5_000,
        5_000,
        10_000,
        0,
        0,
    )
    assert final.percent == 100.0 and final.rate > 0 and final.ended_at


def test_items_handed_back_after_a_cancel_are_canceled_too(tq, connection):
    batch = tq.enqueue_batch("noop", [{"i": i} for i in range(5)])
    held = keys.job_key(item_job_id(batch.id, 2))
    connection.hset(held, "status", "started")  # a worker had claimed item 2
    assert cancel_batch(connection, batch.id).canceled == 4
    connection.hset(held, "status", "queued")  # ...and gave it back at shutdown
    reconcile_active(connection, now=time.time() + 3600)
    final = batch_progress(connection, batch.id)
    assert (final.canceled, final.ended, final.queued) == (5, 5, 0)
    assert connection.hget(held, "status") == b"canceled"
