"""Queueing a batch: many calls of one task, written a chunk per round trip.

Every item is checked first (arguments fit the task, values are JSON); if one is wrong
nothing is queued. Jobs are then written ``chunk_size`` at a time, each chunk in one
pipelined transaction (every job hash, one RPUSH of all ids, one wake-up), so a
100,000-item batch costs 100 round trips, not 100,000. Item ``i`` of batch ``B`` is job
``B-i``, and carries ``batch_id``/``batch_index`` in its meta; the batch's record and its
outcome bitmaps (:mod:`atomq.core.keys`) are created with the first chunk. Following a
batch (progress, cancel, reconciling) is the batches feature's work
(:mod:`atomq.features.batches`).
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from rq.utils import utcformat

from atomq.core import keys
from atomq.core.connection import is_out_of_memory
from atomq.core.errors import (
    AtomqError,
    DuplicateJobError,
    InvalidInputError,
    RedisFullError,
    TaskArgumentsError,
)
from atomq.core.keys import ACTIVE_BATCHES, batch_key, bits_key
from atomq.core.options import MAX_PAYLOAD_BYTES, check_json, validate_job_id
from atomq.core.timeutil import utcnow
from atomq.engine.queues import wake_workers

if TYPE_CHECKING:
    from atomq.engine.task_queue import TaskQueue
    from atomq.engine.tasks import TaskSpec


#: Outcomes counted per batch, each with a bitmap.
OUTCOMES: tuple[str, ...] = ("finished", "failed", "stopped", "canceled")


#: Most items one batch may hold.
MAX_BATCH_ITEMS = 1_000_000


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
    spec = tq.registry.get(task)
    batch_id = _check_batch(spec, calls, batch_id, chunk_size)
    # One job built the normal way gives every default (queue, timeout, retries, TTLs) and
    # RQ's field layout; each item's hash is that template with its own data and id.
    queue, template_job, at_front = tq._build(spec, (), dict(calls[0]), dict(options))
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
    if is_out_of_memory(exc):
        raise RedisFullError(
            f"Redis is out of memory (maxmemory reached): batch {batch.id} has items 0-{queued - 1} "
            f"of {batch.total} queued (they run); the rest were not queued. Free memory or raise "
            "maxmemory, then queue the remaining items as a new batch."
        ) from None


def _check_batch(spec: TaskSpec, calls: list[Any], batch_id: str | None, chunk_size: int) -> str:
    """Refuse a batch that cannot be queued whole; return its id."""
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
