"""Keeping batch progress right: the worker hooks, cancel, and the reconciler.

See :mod:`atomq.features.batches.progress` for the layout (one bitmap per outcome, bit ``i`` = item ``i``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq.job import Job

from atomq.core import keys
from atomq.core.errors import BatchNotFoundError, ConflictError
from atomq.core.keys import ACTIVE_BATCHES, batch_key, bits_key
from atomq.core.options import RESERVED_META_KEYS
from atomq.core.timeutil import utcnow
from atomq.engine.batches import MAX_BATCH_ITEMS, OUTCOMES, is_batch_id, item_job_id
from atomq.engine.hooks import JobHooks
from atomq.engine.plugins import Context, job_hooks, periodic
from atomq.features.batches.progress import BatchProgress, batch_progress

logger = logging.getLogger("atomq.features.batches.progress")

#: A batch with no job started or ended for this long is reconciled against job statuses.
STALLED_AFTER_SECONDS = 30.0

#: Job statuses read per pipeline while reconciling or canceling.
SCAN_CHUNK = 2000

# Both scripts write only while the batch exists (a late job must not recreate bitmaps
# without an expiry) and only for an index inside it: SETBIT far past the end would grow each
# bitmap to match (2^32 is 512 MB), and a negative one is an error.
_IN_BATCH = """
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local index = tonumber(ARGV[1])
if not total or not index or index < 0 or index >= total or index % 1 ~= 0 then return 0 end
"""

# Record that item ARGV[1] started.
#   KEYS[1] batch hash, KEYS[2] started bitmap; ARGV[1] index, ARGV[2] now
_START = (
    _IN_BATCH
    + """
redis.call('SETBIT', KEYS[2], index, 1)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
return 1
"""
)

# Record the outcome of item ARGV[1]: set its bit in the outcome's bitmap, clear it in the
# others (a failed item requeued by hand that then finishes moves from failed to finished).
#   KEYS[1] batch hash, KEYS[2..5] finished/failed/stopped/canceled bitmaps
#   ARGV[1] index, ARGV[2] outcome position 1..4, ARGV[3] now
_END = (
    _IN_BATCH
    + """
local chosen = tonumber(ARGV[2])
for i = 2, 5 do
    redis.call('SETBIT', KEYS[i], index, (i - 1 == chosen) and 1 or 0)
end
redis.call('HSET', KEYS[1], 'ended_at', ARGV[3])
return 1
"""
)

# Cancel the given jobs of a batch unless a worker already has them (atomic per job against
# the worker's claim script, which skips jobs that are no longer 'queued').
#   KEYS[1] batch hash, KEYS[2] canceled bitmap
#   ARGV[1] job key prefix, ARGV[2] rq key prefix, ARGV[3] registry score, ARGV[4] now,
#   ARGV[5..] pairs of job id, index
_CANCEL = """
local canceled = 0
for i = 5, #ARGV, 2 do
    local job_key = ARGV[1] .. ARGV[i]
    local fields = redis.call('HMGET', job_key, 'status', 'origin')
    local status = fields[1]
    if status == 'queued' or status == 'scheduled' or status == 'deferred' then
        redis.call('HSET', job_key, 'status', 'canceled', 'ended_at', ARGV[4])
        if fields[2] then
            redis.call('ZREM', ARGV[2] .. ':scheduled:' .. fields[2], ARGV[i])
            redis.call('ZADD', ARGV[2] .. ':canceled:' .. fields[2], ARGV[3], ARGV[i])
        end
        redis.call('SETBIT', KEYS[2], tonumber(ARGV[i + 1]), 1)
        canceled = canceled + 1
    end
end
return canceled
"""


def batch_item(job: Job) -> bool:
    """Whether ``job`` is an item of a batch."""
    return _batch_of(job) is not None


def _batch_of(job: Job) -> tuple[str, int] | None:
    """``(batch id, index)`` when ``job`` is an item of a batch atomq queued, else ``None``.

    Callers cannot set these meta keys (:data:`atomq.core.options.RESERVED_META_KEYS`), but a
    job hash written into Redis by hand may carry anything; what does not describe the job's
    own item (a batch item's id is ``<batch>-<index>``) is logged and ignored, never written.
    The scripts above also refuse an index outside the batch.
    """
    meta = job.meta
    if not isinstance(meta, dict) or not RESERVED_META_KEYS.intersection(meta):
        return None
    batch_id, index = meta.get("batch_id"), meta.get("batch_index")
    if (
        is_batch_id(batch_id)
        and isinstance(index, int)
        and not isinstance(index, bool)
        and 0 <= index < MAX_BATCH_ITEMS
        and job.id == item_job_id(batch_id, index)
    ):
        return batch_id, index
    logger.warning(
        "job %s: ignoring batch fields that do not name its own item (batch_id=%.80r, batch_index=%.40r)",
        job.id,
        batch_id,
        index,
    )
    return None


def record_start(job: Job, pipeline: Any) -> None:
    """Worker hook (job about to run): set the item's ``started`` bit, on ``pipeline``."""
    found = _batch_of(job)
    if found is None:
        return
    batch_id, index = found
    pipeline.eval(_START, 2, batch_key(batch_id), bits_key(batch_id, "started"), index, repr(time.time()))


def record_end(connection: redis.Redis, job: Job, status: str) -> None:
    """Worker hook (job reached ``status``): set the item's bit for a terminal outcome."""
    if status not in OUTCOMES:
        return
    found = _batch_of(job)
    if found is None:
        return
    batch_id, index = found
    _record(connection, batch_id, index, status)


def record_end_on(pipeline: Any, job: Job, status: str) -> None:
    """Queue the end of a batch item on ``pipeline`` (the worker's own round trip)."""
    found = _batch_of(job) if status in OUTCOMES else None
    if found is not None:
        _record(pipeline, found[0], found[1], status)


def _record(connection: Any, batch_id: str, index: int, status: str) -> None:
    connection.eval(
        _END,
        5,
        batch_key(batch_id),
        *(bits_key(batch_id, o) for o in OUTCOMES),
        index,
        OUTCOMES.index(status) + 1,
        repr(time.time()),
    )


def _unaccounted(connection: redis.Redis, batch_id: str, total: int, also: tuple[str, ...] = ()) -> list[int]:
    """Indices whose bit is clear in every outcome bitmap (and in ``also``)."""
    with connection.pipeline(transaction=False) as pipe:
        for outcome in (*OUTCOMES, *also):
            pipe.get(bits_key(batch_id, outcome))
        maps = [bytes(m or b"") for m in pipe.execute()]
    size = (total + 7) // 8
    union = bytearray(size)
    for bitmap in maps:
        for i, byte in enumerate(bitmap[:size]):
            union[i] |= byte
    out = []
    for byte_index, byte in enumerate(union):
        if byte == 0xFF:
            continue
        for bit in range(8):
            index = byte_index * 8 + bit
            # Redis numbers bits from the most significant one of each byte.
            if index < total and not byte & (0x80 >> bit):
                out.append(index)
    return out


def cancel_batch(connection: redis.Redis, batch_id: str, *, result_ttl: int = 86_400) -> BatchProgress:
    """Cancel every item of ``batch_id`` that has not started; running items finish.

    Canceled jobs stay listed in their queue until a worker skips them (that costs nothing):
    removing 100,000 ids from a Redis list one by one would cost far more.
    """
    progress = batch_progress(connection, batch_id)
    if progress.state == "finished":
        raise ConflictError(f"batch {batch_id} has already finished; nothing to cancel")
    connection.hset(batch_key(batch_id), "state", "canceled")
    _cancel_pending(connection, batch_id, progress.total, result_ttl, also=("started",))
    connection.hset(batch_key(batch_id), "ended_at", repr(time.time()))
    return batch_progress(connection, batch_id)


def _cancel_pending(
    connection: redis.Redis, batch_id: str, total: int, result_ttl: int, also: tuple[str, ...] = ()
) -> None:
    """Cancel the items that are still queued, scheduled or deferred."""
    pending = _unaccounted(connection, batch_id, total, also=also)
    now = time.time()
    from rq.utils import utcformat

    stamp = utcformat(utcnow())
    score = "+inf" if result_ttl < 0 else repr(now + result_ttl)
    for start in range(0, len(pending), SCAN_CHUNK):
        part = pending[start : start + SCAN_CHUNK]
        args: list[Any] = [keys.JOB_KEY_PREFIX, keys.RQ_PREFIX, score, stamp]
        for index in part:
            args += [item_job_id(batch_id, index), index]
        connection.eval(_CANCEL, 2, batch_key(batch_id), bits_key(batch_id, "canceled"), *args)


def reconcile_batch(connection: redis.Redis, batch_id: str) -> int:
    """Account for items whose end no hook recorded; return how many were fixed.

    Reads the status of unaccounted items only, so it is cheap once most of a batch ran.
    A job whose hash is gone (expired, or lost with Redis data) counts as failed.
    """
    progress = batch_progress(connection, batch_id)
    missing = _unaccounted(connection, batch_id, progress.total)
    fixed = 0
    for start in range(0, len(missing), SCAN_CHUNK):
        part = missing[start : start + SCAN_CHUNK]
        with connection.pipeline(transaction=False) as pipe:
            for index in part:
                pipe.hget(keys.job_key(item_job_id(batch_id, index)), "status")
            statuses = pipe.execute()
        with connection.pipeline(transaction=False) as pipe:
            for index, raw in zip(part, statuses, strict=True):
                status = "failed" if raw is None else raw.decode()
                if status in OUTCOMES:
                    _record(pipe, batch_id, index, status)
                    fixed += 1
            pipe.execute()
    if fixed:
        logger.warning("batch %s: accounted for %d item(s) no worker reported", batch_id, fixed)
    return fixed


def reconcile_active(connection: redis.Redis, now: float | None = None, result_ttl: int = 86_400) -> None:
    """Reconcile stalled active batches and forget complete or expired ones."""
    now = time.time() if now is None else now
    for raw in connection.zrange(ACTIVE_BATCHES, 0, 999):
        batch_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            progress = batch_progress(connection, batch_id, now)
        except BatchNotFoundError:
            connection.zrem(ACTIVE_BATCHES, batch_id)
            continue
        if progress.ended >= progress.total:
            connection.zrem(ACTIVE_BATCHES, batch_id)
            continue
        fields = ["started_at", "ended_at", "created_at", "reconciled_at"]
        stamps = [float(v) for v in connection.hmget(batch_key(batch_id), fields) if v]
        last = max(stamps) if stamps else now
        if now - last >= STALLED_AFTER_SECONDS:
            connection.hset(batch_key(batch_id), "reconciled_at", repr(now))
            if progress.state == "canceled":
                # Items a worker had claimed when the batch was canceled, then handed back.
                _cancel_pending(connection, batch_id, progress.total, result_ttl)
            reconcile_batch(connection, batch_id)


@periodic("batches.reconcile", interval=15)
def _reconcile_periodic(ctx: Context) -> None:
    reconcile_active(ctx.connection, result_ttl=ctx.settings.result_ttl)


class BatchHooks(JobHooks):
    """Workers set an item's ``started`` bit when it starts and its outcome's bit when it ends,
    in the round trips that record the start and the end."""

    def started(self, job: Job, pipeline: Any) -> None:
        record_start(job, pipeline)

    def ended(self, job: Job, status: str, pipeline: Any) -> None:
        record_end_on(pipeline, job, status)


job_hooks(BatchHooks())
