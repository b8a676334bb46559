"""Where a batch stands: counts by outcome, percent, rate and an estimated finish.

::

    batch = task_queue.enqueue_batch("resize_image", [{"image_id": i} for i in ids])
    batch_progress(connection, batch.id).percent

Writing a batch is the engine's (:mod:`atomq.engine.batches`).

**Progress.** Item ``i`` of batch ``B`` is job ``B-i``. The worker sets bit ``i`` of one
Redis bitmap per outcome (``finished``, ``failed``, ``stopped``, ``canceled``, and
``started``) when the job starts and when it ends (:mod:`atomq.engine.hooks`). Counting is
then a handful of BITCOUNTs, whatever the batch size: 12.5 kB per bitmap for 100,000 items,
and setting a bit twice (a job run again) changes nothing, so counts stay exact under
at-least-once delivery. Scanning job statuses instead would cost a read per item per look,
and RQ's group registry keeps ids but no outcome counts. What a hook cannot see (a worker
that died and whose job recovery failed, a job canceled by hand) is picked up by
:func:`reconcile_batch`, which reads only the statuses of the items no bitmap accounts for;
the scheduler's leader runs it for stalled batches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from atomq.core.errors import BatchNotFoundError
from atomq.core.keys import ALL_BATCHES, batch_key, bits_key
from atomq.engine.batches import OUTCOMES, is_batch_id


@dataclass
class BatchProgress:
    """Where a batch stands: counts by status, percent, rate and an estimated finish."""

    id: str
    task: str
    queue: str
    state: str  # running | finished | canceled
    total: int
    queued: int
    running: int
    finished: int
    failed: int
    stopped: int
    canceled: int
    ended: int
    percent: float
    rate: float | None  # items ended per second since the first one started
    eta_seconds: float | None
    estimated_finish_at: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    description: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- progress ------------------------------------------------------------------------------


def batch_progress(connection: redis.Redis, batch_id: str, now: float | None = None) -> BatchProgress:
    """Counts by status, percent, rate and estimated finish of ``batch_id`` (one round trip)."""
    if not is_batch_id(batch_id):
        raise BatchNotFoundError(
            f"no batch with id {str(batch_id)[:80]!r} (not a valid batch id)", field="batch_id"
        )
    with connection.pipeline(transaction=False) as pipe:
        pipe.hgetall(batch_key(batch_id))
        for outcome in (*OUTCOMES, "started"):
            pipe.bitcount(bits_key(batch_id, outcome))
        meta_raw, *counts = pipe.execute()
    if not meta_raw:
        raise BatchNotFoundError(
            f"no batch with id {batch_id!r} (it never existed, or its record expired)", field="batch_id"
        )
    meta = {_text(k): _text(v) for k, v in meta_raw.items()}
    finished, failed, stopped, canceled, started = (int(c) for c in counts)
    total = int(meta.get("total", 0))
    ended = finished + failed + stopped + canceled
    running = max(0, min(started - finished - failed - stopped, total - ended))
    queued = max(0, total - ended - running)
    now = time.time() if now is None else now
    first_start = _float(meta.get("started_at"))
    last_end = _float(meta.get("ended_at"))
    complete = ended >= total
    state = meta.get("state", "running")
    if complete and state == "running":
        state = "finished"
    rate = eta = None
    done_by_workers = finished + failed + stopped
    if first_start is not None and done_by_workers:
        until = last_end if complete and last_end else now
        elapsed = max(until - first_start, 1e-3)
        rate = round(done_by_workers / elapsed, 2)
        if not complete and state == "running" and rate > 0:
            eta = round((total - ended) / rate, 1)
    return BatchProgress(
        id=batch_id,
        task=meta.get("task", ""),
        queue=meta.get("queue", ""),
        state=state,
        total=total,
        queued=queued,
        running=running,
        finished=finished,
        failed=failed,
        stopped=stopped,
        canceled=canceled,
        ended=ended,
        percent=round(100.0 * ended / total, 2) if total else 100.0,
        rate=rate,
        eta_seconds=eta,
        estimated_finish_at=_iso(now + eta) if eta is not None else None,
        created_at=_iso(_float(meta.get("created_at"))),
        started_at=_iso(first_start),
        ended_at=_iso(last_end) if complete else None,
        description=meta.get("description") or None,
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def _text(value: Any) -> str:
    # Bytes that are not UTF-8 (a record edited by hand) are shown escaped, never a 500.
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def list_batches(
    connection: redis.Redis, *, limit: int = 50, before: float | None = None
) -> tuple[list[BatchProgress], float | None]:
    """Batches newest first, ``limit`` at a time (keyset: pass the returned score as ``before``).

    Returns the page and the cursor of the next one (``None`` on the last page). A batch whose
    record expired is skipped.
    """
    top = "+inf" if before is None else f"({before!r}"
    rows: list[Any] = list(
        connection.zrevrangebyscore(ALL_BATCHES, top, "-inf", start=0, num=limit + 1, withscores=True)
    )
    page = []
    for raw_id, _score in rows[:limit]:
        try:
            page.append(batch_progress(connection, _text(raw_id)))
        except BatchNotFoundError:
            continue
    more = len(rows) > limit
    return page, float(rows[limit - 1][1]) if more else None
