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

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import redis

from atomq.core import keys
from atomq.core.connection import is_out_of_memory
from atomq.core.errors import (
    AtomqError,
    DuplicateJobError,
    InvalidInputError,
    RedisFullError,
    TaskArgumentsError,
)
from atomq.core.keys import ACTIVE_BATCHES, ALL_BATCHES, batch_key, bits_key
from atomq.core.options import JOB_ID_PATTERN, MAX_PAYLOAD_BYTES, check_json, validate_job_id
from atomq.core.settings import Settings
from atomq.core.timeutil import rq_text, utcnow
from atomq.engine.producer import build_job, compress
from atomq.engine.queues import wake_workers
from atomq.engine.tasks import TaskSpec

if TYPE_CHECKING:
    from atomq.engine.task_queue import TaskQueue


#: Outcomes counted per batch, each with a bitmap.
OUTCOMES: tuple[str, ...] = ("finished", "failed", "stopped", "canceled")


#: Most items one batch may hold.
MAX_BATCH_ITEMS = 1_000_000


#: Longest batch id, so that its items' ids (``<batch>-<index>``) stay valid job ids.
MAX_BATCH_ID_LENGTH = 100


def is_batch_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` has the form of a batch id (a job id of at most 100 characters): the
    only ids whose keys are looked up (``b:started`` would name one of a batch's bitmaps)."""
    if not isinstance(value, str) or len(value) > MAX_BATCH_ID_LENGTH:
        return False
    return bool(JOB_ID_PATTERN.fullmatch(value))


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


@dataclass
class PreparedBatch:
    """A batch checked and serialized, ready to be written a chunk at a time."""

    batch: Batch
    #: Hash fields every item shares (RQ's layout, from one job built the normal way).
    fields: dict[str, Any]
    payloads: list[bytes]
    at_front: bool
    chunk_size: int
    description: str | None
    ttl: int | None
    batch_ttl: int

    def chunks(self) -> Iterator[tuple[int, list[bytes]]]:
        """(index of the first item, payloads) of each chunk."""
        index = 0
        for chunk in chunked(self.payloads, self.chunk_size):
            yield index, chunk
            index += len(chunk)


def prepare_batch(
    spec: TaskSpec,
    items: Iterable[Mapping[str, Any]],
    settings: Settings,
    *,
    batch_id: str | None = None,
    chunk_size: int | None = None,
    description: str | None = None,
    **options: Any,
) -> PreparedBatch:
    """Check every item and build the batch's jobs, without touching Redis (the sync and
    asyncio task queues share this)."""
    unsupported = set(options) - {"queue", "timeout", "retry", "result_ttl", "failure_ttl", "ttl", "at_front"}
    if unsupported:
        raise InvalidInputError(f"enqueue_batch does not take {sorted(unsupported)}", field="options")
    calls = list(items)
    chunk_size = chunk_size or settings.batch_chunk_size
    batch_id = _check_batch(spec, calls, batch_id, chunk_size)
    # One job built the normal way gives every default (queue, timeout, retries, TTLs) and
    # RQ's field layout; each item's hash is that template with its own data and id.
    template = build_job(spec, (), dict(calls[0]), options, settings)
    fields = {
        name.decode(): value
        for name, value in zip(template.template.pairs[::2], template.template.pairs[1::2], strict=True)
    }
    fields.update(zip(template.pairs[::2], template.pairs[1::2], strict=True))
    return PreparedBatch(
        batch=Batch(batch_id, spec.name, template.queue, len(calls)),
        fields=fields,
        payloads=_serialize(spec.name, calls),
        at_front=template.at_front,
        chunk_size=chunk_size,
        description=description,
        ttl=template.ttl,
        batch_ttl=settings.batch_ttl,
    )


def queue_chunk(pipe: Any, prepared: PreparedBatch, first: int, chunk: list[bytes]) -> None:
    """Queue on ``pipe`` (a transaction, sync or asyncio) the writes of one chunk.

    The batch's record rides with the first chunk: a batch of one chunk is written whole or
    not at all (a full Redis refuses it entirely), and no record ever exists without jobs.
    """
    batch = prepared.batch
    if first == 0:
        _create_record(pipe, prepared)
    ids = _write_chunk(pipe, prepared, first, chunk)
    queue_key = keys.queue_key(batch.queue)
    pipe.sadd(keys.QUEUES_SET, queue_key)
    if prepared.at_front:
        pipe.lpush(queue_key, *reversed(ids))
    else:
        pipe.rpush(queue_key, *ids)
    wake_workers(pipe, batch.queue, len(ids))


def duplicate_batch(batch: Batch) -> DuplicateJobError:
    return DuplicateJobError(f"a batch with id {batch.id!r} already exists", field="batch_id")


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
    prepared = prepare_batch(
        tq.registry.get(task),
        items,
        tq.settings,
        batch_id=batch_id,
        chunk_size=chunk_size,
        description=description,
        **options,
    )
    batch = prepared.batch
    with tq._redis_errors():
        if tq.connection.exists(batch_key(batch.id)):
            raise duplicate_batch(batch)
        for first, chunk in prepared.chunks():
            with tq.connection.pipeline() as pipe:
                queue_chunk(pipe, prepared, first, chunk)
                try:
                    pipe.execute()
                except redis.RedisError as exc:
                    if first:
                        refused_midway(exc, batch, first)
                    raise
    return batch


def refused_midway(exc: redis.RedisError, batch: Batch, queued: int) -> None:
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
        if len(batch_id) > MAX_BATCH_ID_LENGTH:
            raise InvalidInputError(
                f"batch_id must be at most {MAX_BATCH_ID_LENGTH} characters", field="batch_id"
            )
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
            where = f"items[{index}]"
            field = exc.field if exc.field and exc.field.startswith(where) else where
            raise type(exc)(f"{where}: {exc.message}", field=field) from None
    return batch_id


def _create_record(pipe: Any, prepared: PreparedBatch) -> None:
    """Queue the batch's record, bitmaps and active entry on ``pipe``."""
    batch = prepared.batch
    created = time.time()
    pipe.hset(
        batch_key(batch.id),
        mapping={
            "task": batch.task,
            "queue": batch.queue,
            "total": batch.total,
            "created_at": repr(created),
            "state": "running",
            "description": prepared.description or "",
        },
    )
    pipe.expire(batch_key(batch.id), prepared.batch_ttl)
    for outcome in (*OUTCOMES, "started"):
        # Allocated now so that each bitmap carries the batch's expiry from the start.
        pipe.setbit(bits_key(batch.id, outcome), batch.total - 1, 0)
        pipe.expire(bits_key(batch.id, outcome), prepared.batch_ttl)
    pipe.zadd(ACTIVE_BATCHES, {batch.id: created})
    pipe.zadd(ALL_BATCHES, {batch.id: created})  # issue 15: finished batches stay listable
    pipe.zremrangebyscore(ALL_BATCHES, "-inf", created - prepared.batch_ttl)


def _serialize(task: str, calls: list[Any]) -> list[bytes]:
    """Each item's job payload (RQ's ``data`` field), refusing oversized ones before any write."""
    payloads = []
    for index, call in enumerate(calls):
        data = json.dumps([task, None, [], dict(call)]).encode()
        if len(data) > MAX_PAYLOAD_BYTES:
            raise TaskArgumentsError(
                f"items[{index}] is {len(data)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                field=f"items[{index}]",
            )
        payloads.append(compress(data))
    return payloads


def _write_chunk(pipe: Any, prepared: PreparedBatch, first: int, chunk: list[bytes]) -> list[str]:
    """Queue the job hashes of one chunk on ``pipe``; return their ids."""
    batch = prepared.batch
    stamp = rq_text(utcnow())
    ids = []
    for offset, data in enumerate(chunk):
        index = first + offset
        job_id = item_job_id(batch.id, index)
        mapping = dict(prepared.fields)
        mapping["data"] = data
        mapping["created_at"] = stamp
        mapping["enqueued_at"] = stamp
        mapping["status"] = "queued"
        mapping["description"] = f"{batch.task} item {index} of batch {batch.id}"
        mapping["meta"] = json.dumps({"batch_id": batch.id, "batch_index": index}).encode()
        key = keys.job_key(job_id)
        pipe.hset(key, mapping=mapping)
        if prepared.ttl:
            pipe.expire(key, prepared.ttl)
        ids.append(job_id)
    return ids
