"""Batches: many calls of one task, queued together, followed and canceled as one.

::

    batch = task_queue.enqueue_batch("resize_image", [{"image_id": i} for i in ids])
    batch_progress(connection, batch.id).percent

**Writing.** Every item is checked first (arguments fit the task, values are JSON); if one is
wrong nothing is queued. Jobs are then written ``chunk_size`` at a time, each chunk in one
pipelined transaction (every job hash, one RPUSH of all ids, one wake-up), so a 100,000-item
batch costs 100 round trips, not 100,000.

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
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from rq.utils import utcformat

from atomq.core import keys
from atomq.core.errors import (
    AtomqError,
    DuplicateJobError,
    InvalidInputError,
    NotFoundError,
    RedisFullError,
    TaskArgumentsError,
)
from atomq.core.timeutil import utcnow
from atomq.engine.queues import wake_workers

if TYPE_CHECKING:
    from atomq.engine.task_queue import TaskQueue

#: Outcomes counted per batch, each with a bitmap.
OUTCOMES: tuple[str, ...] = ("finished", "failed", "stopped", "canceled")

#: Most items one batch may hold.
MAX_BATCH_ITEMS = 1_000_000

#: Batches not yet complete, scored by creation time (the reconciler walks it).
ACTIVE_BATCHES = f"{keys.PREFIX}:batches:active"


class BatchNotFoundError(NotFoundError):
    """No batch with the given id (it never existed or its record expired)."""

    code = "batch_not_found"


def batch_key(batch_id: str) -> str:
    """The hash describing a batch (task, queue, total, times, state)."""
    return f"{keys.PREFIX}:batch:{batch_id}"


def bits_key(batch_id: str, outcome: str) -> str:
    """The bitmap of items that reached ``outcome`` (or ``started``)."""
    return f"{keys.PREFIX}:batch:{batch_id}:{outcome}"


def item_job_id(batch_id: str, index: int) -> str:
    """The job id of item ``index``."""
    return f"{batch_id}-{index}"


@dataclass(frozen=True)
class Batch:
    """A queued batch: its id, task, queue and size."""

    id: str
    task: str
    queue: str
    total: int

    def job_ids(self) -> Iterator[str]:
        """Ids of the batch's jobs, in item order."""
        return (item_job_id(self.id, i) for i in range(self.total))


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


def chunked(items: Sequence[Any] | Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Split ``items`` into lists of at most ``size`` (the guide's "break into smaller chunks")."""
    if size < 1:
        raise InvalidInputError(f"chunk size must be at least 1, got {size}", field="chunk_size")
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def enqueue_batch(
    tq: TaskQueue,
    task: str,
    items: Iterable[Mapping[str, Any]],
    *,
    batch_id: str | None = None,
    chunk_size: int | None = None,
    description: str | None = None,
    **options: Any,
) -> Batch:
    """Queue one job of ``task`` per item (each item is the task's keyword arguments).

    ``options`` are the enqueue options that make sense for a whole batch: ``queue``,
    ``timeout``, ``retry``, ``result_ttl``, ``failure_ttl``, ``ttl``, ``at_front``.
    """
    unsupported = set(options) - {"queue", "timeout", "retry", "result_ttl", "failure_ttl", "ttl", "at_front"}
    if unsupported:
        raise InvalidInputError(f"enqueue_batch does not take {sorted(unsupported)}", field="options")
    calls = list(items)
    chunk_size = chunk_size or tq.settings.batch_chunk_size
    batch_id = _check_batch(tq, task, calls, batch_id, chunk_size)
    # One job built the normal way gives every default (queue, timeout, retries, TTLs) and
    # RQ's field layout; each item's hash is that template with its own data and id.
    queue, template_job, at_front = tq._build(task, (), dict(calls[0]), dict(options))
    batch = Batch(batch_id, task, queue.name, len(calls))
    payloads = _serialize(template_job.serializer, task, calls)
    with tq._redis_errors():
        if tq.connection.exists(batch_key(batch.id)):
            raise DuplicateJobError(f"a batch with id {batch.id!r} already exists", field="batch_id")
        index = 0
        for chunk in chunked(payloads, chunk_size):
            with tq.connection.pipeline() as pipe:
                if index == 0:
                    # The record rides with the first chunk: a batch of one chunk is written
                    # whole or not at all (a full Redis refuses it entirely), and no record
                    # ever exists without jobs.
                    _create_record(tq, pipe, batch, description)
                ids = _write_chunk(pipe, template_job, batch, index, chunk)
                pipe.sadd(keys.QUEUES_SET, queue.key)
                if at_front:
                    pipe.lpush(queue.key, *reversed(ids))
                else:
                    pipe.rpush(queue.key, *ids)
                wake_workers(pipe, queue.name)
                try:
                    pipe.execute()
                except redis.RedisError as exc:
                    if index:
                        _refused_midway(exc, batch, index)
                    raise
            index += len(chunk)
    return batch


def _refused_midway(exc: redis.RedisError, batch: Batch, queued: int) -> None:
    """Redis filled up after some chunks were written: say exactly what was queued."""
    from atomq.engine.task_queue import is_out_of_memory

    if is_out_of_memory(exc):
        raise RedisFullError(
            f"Redis is out of memory (maxmemory reached): batch {batch.id} has items 0-{queued - 1} "
            f"of {batch.total} queued (they run); the rest were not queued. Free memory or raise "
            "maxmemory, then queue the remaining items as a new batch."
        ) from None


def _check_batch(tq: TaskQueue, task: str, calls: list[Any], batch_id: str | None, chunk_size: int) -> str:
    """Refuse a batch that cannot be queued whole; return its id."""
    from atomq.core.options import check_json, validate_job_id

    if not calls:
        raise InvalidInputError("a batch needs at least one item", field="items")
    if len(calls) > MAX_BATCH_ITEMS:
        raise InvalidInputError(f"a batch holds at most {MAX_BATCH_ITEMS} items", field="items")
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be at least 1, got {chunk_size}", field="chunk_size")
    if batch_id is None:
        batch_id = f"batch_{uuid.uuid4().hex}"
    else:
        validate_job_id(batch_id, field="batch_id")
        if len(batch_id) > 100:
            raise InvalidInputError("batch_id must be at most 100 characters", field="batch_id")
    spec = tq.registry.get(task)
    for index, call in enumerate(calls):
        if not isinstance(call, Mapping):
            raise TaskArgumentsError(
                f"items[{index}] must be an object of keyword arguments, got {type(call).__name__}",
                field=f"items[{index}]",
            )
        try:
            spec.bind((), dict(call))
            check_json(call, f"items[{index}]")
        except AtomqError as exc:
            raise type(exc)(f"items[{index}]: {exc.message}", field=f"items[{index}]") from None
    return batch_id


def _create_record(tq: TaskQueue, pipe: Any, batch: Batch, description: str | None) -> None:
    """Queue the batch's record, bitmaps and active entry on ``pipe``."""
    created = time.time()
    batch_ttl = tq.settings.batch_ttl
    pipe.hset(
        batch_key(batch.id),
        mapping={
            "task": batch.task,
            "queue": batch.queue,
            "total": batch.total,
            "created_at": repr(created),
            "state": "running",
            "description": description or "",
        },
    )
    pipe.expire(batch_key(batch.id), batch_ttl)
    for outcome in (*OUTCOMES, "started"):
        # Allocated now so that each bitmap carries the batch's expiry from the start.
        pipe.setbit(bits_key(batch.id, outcome), batch.total - 1, 0)
        pipe.expire(bits_key(batch.id, outcome), batch_ttl)
    pipe.zadd(ACTIVE_BATCHES, {batch.id: created})


def _serialize(serializer: Any, task: str, calls: list[Any]) -> list[bytes]:
    """Each item's job payload (RQ's ``data`` field), refusing oversized ones before any write."""
    from atomq.core.options import MAX_PAYLOAD_BYTES

    payloads = []
    for index, call in enumerate(calls):
        data = serializer.dumps((task, None, [], dict(call)))
        if len(data) > MAX_PAYLOAD_BYTES:
            raise TaskArgumentsError(
                f"items[{index}] is {len(data)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                field=f"items[{index}]",
            )
        payloads.append(zlib.compress(data))
    return payloads


def _write_chunk(pipe: Any, template_job: Any, batch: Batch, first: int, chunk: list[bytes]) -> list[str]:
    """Queue the job hashes of one chunk on ``pipe``; return their ids."""
    template = template_job.to_dict()
    serializer = template_job.serializer
    ttl = template_job.ttl
    stamp = utcformat(utcnow())
    ids = []
    for offset, data in enumerate(chunk):
        index = first + offset
        job_id = item_job_id(batch.id, index)
        mapping = dict(template)
        mapping["data"] = data
        mapping["created_at"] = stamp
        mapping["enqueued_at"] = stamp
        mapping["status"] = "queued"
        mapping["description"] = f"{batch.task} item {index} of batch {batch.id}"
        mapping["meta"] = serializer.dumps({"batch_id": batch.id, "batch_index": index})
        key = keys.job_key(job_id)
        pipe.hset(key, mapping=mapping)
        if ttl:
            pipe.expire(key, ttl)
        ids.append(job_id)
    return ids


# -- progress ------------------------------------------------------------------------------


def batch_progress(connection: redis.Redis, batch_id: str, now: float | None = None) -> BatchProgress:
    """Counts by status, percent, rate and estimated finish of ``batch_id`` (one round trip)."""
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
    return value.decode() if isinstance(value, bytes) else str(value)
