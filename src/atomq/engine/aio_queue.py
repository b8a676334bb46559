"""The task queue as coroutines, over ``redis.asyncio``: what ``atomq.aio`` exports.

::

    from atomq.aio import task_queue

    async def handler(user_id: str) -> dict:
        job = await task_queue.enqueue("send_welcome_email", user_id=user_id)
        return await task_queue.wait(job.id, timeout=10)

Calls are checked and jobs built by the same code as the sync ``TaskQueue``
(:func:`atomq.engine.producer.build_job`); only the sending differs. Enqueues made while an
earlier one is on its way to Redis travel together in the next script call (each job still
stands alone: one refused id fails only its own call), so a hundred request handlers
enqueueing at once cost a few round trips, not a hundred.

The client is built on first use inside the running event loop, from the same settings as the
sync API (``REDIS_URL`` and friends); each event loop gets its own.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio

from atomq.core import keys
from atomq.core.connection import blocking_timeout, connect_async, unavailable_error
from atomq.core.errors import AtomqError, WaitTimeoutError
from atomq.core.settings import Settings, load_settings
from atomq.core.timeutil import as_timedelta, to_aware, utcnow
from atomq.engine.batches import Batch, duplicate_batch, prepare_batch, queue_chunk, refused_midway
from atomq.engine.calls import Call, QueuedJob, build_many, split_call
from atomq.engine.jobs import guide_status, job_from_hash, result_from_entry
from atomq.engine.producer import NewJob, build_job
from atomq.engine.producer_scripts import (
    CANCEL_SCRIPT,
    canceled_or_raise,
    enqueue_call,
    refusal_error,
    statuses_or_raise,
    stop_message,
    text,
)
from atomq.engine.script_calls import call_script_async
from atomq.engine.task_queue import MANY_CHUNK
from atomq.engine.tasks import TaskRegistry, load_task_modules
from atomq.engine.tasks import registry as default_registry
from atomq.engine.waiting import (
    WAIT_SLICE,
    Seen,
    block_ms,
    check_id,
    finished_from,
    gone,
    missing,
    outcome,
    queue_reads,
    seen_from,
)

#: Most jobs one script call carries when concurrent enqueues travel together. Smaller
#: batches on a few connections at once let the loop build the next jobs while earlier ones
#: are on their way.
GATHER_MAX = 64

#: Script calls in flight at once for one event loop (each on its own connection).
MAX_SENDERS = 4


class _Loop:
    """What the task queue keeps per event loop: its client and the enqueues on their way."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pending: list[tuple[NewJob, asyncio.Future[str]]] = []
        self.senders: set[asyncio.Task[None]] = set()
        #: Senders started that have not taken their first jobs yet.
        self.starting = 0


class AsyncTaskQueue:
    """Enqueue, inspect, wait for and cancel jobs from asyncio code.

    Built without arguments it reads settings from the environment on first use; pass
    ``settings`` and/or ``client`` (a ``redis.asyncio.Redis``) to control it.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        client: redis.asyncio.Redis | None = None,
        registry: TaskRegistry | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._registry = registry if registry is not None else default_registry
        self._modules_loaded = False
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop] = weakref.WeakKeyDictionary()
        self._last: tuple[Callable[[], asyncio.AbstractEventLoop | None], _Loop | None] = (_no_loop, None)

    def configure(
        self, *, settings: Settings | None = None, client: redis.asyncio.Redis | None = None
    ) -> None:
        """Replace the settings and/or client used from now on (clients already built are
        left to :meth:`aclose`)."""
        if settings is not None:
            self._settings = settings
            self._modules_loaded = False
        if client is not None or settings is not None:
            self._client = client
            self._loops = weakref.WeakKeyDictionary()
            self._last = (_no_loop, None)

    @property
    def settings(self) -> Settings:
        """The settings in use (read from the environment on first access)."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def registry(self) -> TaskRegistry:
        """The task registry, with the configured task modules imported."""
        if not self._modules_loaded:
            load_task_modules(self.settings.task_modules)
            self._modules_loaded = True
        return self._registry

    def _loop(self) -> _Loop:
        loop = asyncio.get_running_loop()
        last_loop, last_state = self._last
        if last_state is not None and last_loop() is loop:
            return last_state
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _Loop(self._client or connect_async(self.settings))
        # Most processes run one loop: remember it without keeping it alive.
        self._last = (weakref.ref(loop), state)
        return state

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client of the running event loop (built on first use)."""
        return self._loop().client

    async def aclose(self) -> None:
        """Close the client this task queue built for the running event loop."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        self._last = (_no_loop, None)
        if state is not None and self._client is None:
            await state.client.aclose()

    # -- enqueueing -------------------------------------------------------------------------

    async def enqueue(self, task: str, /, *args: Any, **kwargs: Any) -> QueuedJob:
        """Queue a call of ``task`` now (see :meth:`atomq.TaskQueue.enqueue`)."""
        job, future = self._submit(task, args, kwargs, when=None)
        return _written(job, await future)

    async def enqueue_in(
        self, delay: timedelta | float, task: str, /, *args: Any, **kwargs: Any
    ) -> QueuedJob:
        """Queue a call of ``task`` to run after ``delay`` (a timedelta or seconds)."""
        job, future = self._submit(task, args, kwargs, when=utcnow() + as_timedelta(delay, field="delay"))
        return _written(job, await future)

    async def enqueue_at(self, when: datetime, task: str, /, *args: Any, **kwargs: Any) -> QueuedJob:
        """Queue a call of ``task`` to run at ``when`` (naive: in ``ATOMQ_TIMEZONE``)."""
        job, future = self._submit(task, args, kwargs, when=to_aware(when, self.settings.tz, field="at"))
        return _written(job, await future)

    async def enqueue_many(
        self, calls: Iterable[Call | Mapping[str, Any] | tuple[Any, ...]]
    ) -> list[QueuedJob]:
        """Queue many calls, a chunk per round trip (see :meth:`atomq.TaskQueue.enqueue_many`)."""
        jobs = build_many(self.registry, calls, self.settings)
        client = self.client
        written: list[QueuedJob] = []
        for start in range(0, len(jobs), MANY_CHUNK):
            chunk = jobs[start : start + MANY_CHUNK]
            script, args = enqueue_call(chunk, all_or_none=True, now=int(time.time()))
            try:
                with _RedisErrors(client):
                    reply = await call_script_async(client, script, args)
                statuses = statuses_or_raise(chunk, reply)
            except AtomqError as exc:  # refused by Redis: say what the chunks before wrote
                if start:
                    exc.message = f"{exc.message} (calls 0-{start - 1} were queued; none after)"
                    exc.args = (exc.message,)
                raise
            written += [QueuedJob.of(job, status) for job, status in zip(chunk, statuses, strict=True)]
        return written

    async def enqueue_batch(
        self,
        task: str,
        items: Iterable[Mapping[str, Any]],
        /,
        *,
        batch_id: str | None = None,
        chunk_size: int | None = None,
        description: str | None = None,
        **options: Any,
    ) -> Batch:
        """Queue one job of ``task`` per item, as a batch (see :meth:`atomq.TaskQueue.enqueue_batch`)."""
        prepared = prepare_batch(
            self.registry.get(task),
            items,
            self.settings,
            batch_id=batch_id,
            chunk_size=chunk_size,
            description=description,
            **options,
        )
        batch = prepared.batch
        client = self.client
        with _RedisErrors(client):
            if await client.exists(keys.batch_key(batch.id)):
                raise duplicate_batch(batch)
            for first, chunk in prepared.chunks():
                async with client.pipeline(transaction=True) as pipe:
                    queue_chunk(pipe, prepared, first, chunk)
                    try:
                        await pipe.execute()
                    except redis.RedisError as exc:
                        if first:
                            refused_midway(exc, batch, first)
                        raise
        return batch

    def _submit(
        self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, when: datetime | None
    ) -> tuple[NewJob, asyncio.Future[str]]:
        """Check and build the call's job and queue it for the next script call; the job and
        the future its status arrives on."""
        spec = self.registry.get(task)
        call_args, call_kwargs, options = split_call(spec, args, kwargs)
        job = build_job(spec, call_args, call_kwargs, options, self.settings, when=when)
        state = self._loop()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        state.pending.append((job, future))
        self._kick(state)
        return job, future

    def _kick(self, state: _Loop) -> None:
        """Start a sender for what is pending, unless one is about to take it."""
        if state.pending and not state.starting and len(state.senders) < MAX_SENDERS:
            state.starting += 1
            task = asyncio.get_running_loop().create_task(self._send(state))
            state.senders.add(task)
            task.add_done_callback(state.senders.discard)

    async def _send(self, state: _Loop) -> None:
        """Write what is pending, a script call at a time, until nothing is left."""
        state.starting -= 1
        batch: list[tuple[NewJob, asyncio.Future[str]]] = []
        try:
            while state.pending:
                batch = state.pending[:GATHER_MAX]
                del state.pending[:GATHER_MAX]
                self._kick(state)  # what is left goes out on another connection meanwhile
                script, args = enqueue_call(
                    [job for job, _ in batch], all_or_none=False, now=int(time.time())
                )
                try:
                    reply = await call_script_async(state.client, script, args)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    _settle(batch, error=unavailable_error(exc, state.client))
                except Exception:
                    # Something in one call (a value Redis refuses) must not fail the others
                    # that happened to travel with it: send each alone.
                    await self._send_each(state, batch)
                else:
                    _settle(batch, statuses=reply if isinstance(reply, list) else [reply])
                batch = []
        finally:
            # Only when cancelled (the loop is closing) is anything left: nobody will send it.
            for _, future in batch:
                future.cancel()
            if len(state.senders) <= 1:
                for _, future in state.pending:
                    future.cancel()
                state.pending.clear()

    @staticmethod
    async def _send_each(state: _Loop, batch: list[tuple[NewJob, asyncio.Future[str]]]) -> None:
        for job, future in batch:
            script, args = enqueue_call([job], all_or_none=False, now=int(time.time()))
            try:
                reply = await call_script_async(state.client, script, args)
            except Exception as exc:
                _settle([(job, future)], error=unavailable_error(exc, state.client) or exc)
            else:
                _settle([(job, future)], statuses=[reply])

    # -- inspection and control -------------------------------------------------------------

    async def get_job_status(self, job_id: str) -> dict[str, Any]:
        """The guide's status dictionary for ``job_id`` (one round trip)."""
        check_id(job_id)
        client = self.client
        with _RedisErrors(client):
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.job_key(job_id))
                pipe.xrevrange(keys.results_key(job_id), "+", "-", count=1)
                raw, entries = await pipe.execute()
        if not raw:
            raise missing(job_id)
        job = job_from_hash(job_id, raw, client)
        return guide_status(job, result_from_entry(job_id, entries[0] if entries else None, client))

    async def cancel_job(self, job_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Cancel a waiting job, or stop a running one (see :meth:`atomq.TaskQueue.cancel_job`)."""
        check_id(job_id)
        client = self.client
        with _RedisErrors(client):
            reply = await call_script_async(client, CANCEL_SCRIPT, [job_id, int(time.time())])
            worker_name = canceled_or_raise(job_id, reply)
            if worker_name:
                await client.publish(*stop_message(worker_name, job_id))
                await self._wait_end(job_id, wait)
        return await self.get_job_status(job_id)

    async def wait(self, job_id: str, timeout: float = 30.0) -> Any:
        """Wait until ``job_id`` ends and return its result (see :meth:`atomq.TaskQueue.wait`):
        woken by Redis, never blocking the event loop."""
        seen = await self._wait_end(job_id, timeout)
        if not seen.ended:
            raise WaitTimeoutError(job_id, timeout, seen.status)
        return outcome(seen)

    async def wait_for_end(self, job_id: str, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for ``job_id`` to end; its status then (ended or not)."""
        seen = await self._wait_end(job_id, timeout)
        return seen.status or ""

    async def _wait_end(self, job_id: str, timeout: float) -> Seen:
        check_id(job_id)
        client = self.client
        deadline = time.monotonic() + max(0.0, timeout)
        with _RedisErrors(client):
            seen = await self._read(client, job_id)
            if seen.status is None:
                raise missing(job_id)
            while not seen.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return seen
                block = blocking_timeout(client, min(remaining, WAIT_SLICE))
                reply = await client.xread(
                    {keys.results_key(job_id): seen.last_id}, count=1, block=block_ms(block)
                )
                seen = finished_from(job_id, reply, client) or await self._read(client, job_id)
                if seen.status is None:
                    raise gone(job_id)
        return seen

    @staticmethod
    async def _read(client: redis.asyncio.Redis, job_id: str) -> Seen:
        async with client.pipeline(transaction=False) as pipe:
            queue_reads(pipe, job_id)
            return seen_from(job_id, await pipe.execute(), client)


def _no_loop() -> None:
    return None


def _written(job: NewJob, status: str) -> QueuedJob:
    error = refusal_error(job, status)
    if error is not None:
        raise error
    return QueuedJob.of(job, status)


def _settle(
    batch: list[tuple[NewJob, asyncio.Future[str]]],
    *,
    statuses: list[Any] | None = None,
    error: BaseException | None = None,
) -> None:
    """Hand each waiting call its job's status, or the error (calls given up on are skipped)."""
    for index, (_, future) in enumerate(batch):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert statuses is not None
            future.set_result(text(statuses[index]))


class _RedisErrors:
    """Lost connections and a full Redis as atomq's errors (as the sync task queue reports them)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            error = unavailable_error(exc, self.client)
            if error is not None:
                raise error from None


#: The process-wide asyncio task queue, configured from the environment on first use.
task_queue = AsyncTaskQueue()
