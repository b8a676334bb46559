"""Enqueue registered tasks, read their status, cancel them: the guide's ``task_queue`` API.

::

    from atomq.engine.task_queue import task_queue, get_job_status, cancel_job

    job = task_queue.enqueue("process_scheduled_post", post_id="post_123", user_id="user_456")
    job = task_queue.enqueue_in(timedelta(minutes=30), "process_scheduled_post", post_id="post_123")
    job = task_queue.enqueue_at(datetime(2026, 2, 6, 14, 30), "process_scheduled_post", post_id="post_123")
    get_job_status(job.id)   # {'job_id': ..., 'status': 'queued', ...}
    cancel_job(job.id)

Keyword arguments go to the task, except the enqueue options (``queue``, ``job_id``,
``timeout``, ``retry``, ``at_front``, ``meta``, ``depends_on``, ``unique``, ``replace``,
``result_ttl``, ``failure_ttl``, ``ttl``, ``description``, ``group``). A task whose own parameter shares
one of those names takes its arguments through ``kwargs={...}`` instead.

Each enqueue is one round trip to Redis: :func:`atomq.engine.producer.build_job` checks the
call and builds the job, and one script writes it whole (:mod:`atomq.engine.producer_scripts`).
A ``job_id`` of the caller's that already exists is refused with :class:`DuplicateJobError`
unless ``replace=True`` is passed. ``atomq.aio`` offers the same methods as coroutines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import redis
from rq.exceptions import NoSuchJobError

from atomq.core import keys
from atomq.core.connection import blocking_timeout, connect, unavailable_error
from atomq.core.errors import AtomqError, WaitTimeoutError
from atomq.core.options import validate_queue_name
from atomq.core.settings import Settings, load_settings
from atomq.core.timeutil import as_timedelta, to_aware, utcnow
from atomq.engine.batches import Batch, enqueue_batch
from atomq.engine.calls import Call, build_many, rq_job_for, settle, split_call
from atomq.engine.jobs import AtomqJob, load_job, status_dict
from atomq.engine.producer import NewJob, build_job
from atomq.engine.producer_scripts import (
    CANCEL_SCRIPT,
    canceled_or_raise,
    enqueue_call,
    statuses_or_raise,
    stop_message,
)
from atomq.engine.queues import AtomqQueue
from atomq.engine.script_calls import call_script
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

__all__ = ["Call", "TaskQueue", "cancel_job", "get_job_status", "task_queue"]

#: Jobs ``enqueue_many`` writes per script call: each chunk is written whole or not at all,
#: and holds Redis for a few milliseconds at most.
MANY_CHUNK = 200


class TaskQueue:
    """Enqueue, inspect and cancel jobs of registered tasks.

    Built without arguments it reads settings from the environment on first use; pass
    ``settings`` and/or ``connection`` to control it (tests, embedding applications).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        connection: redis.Redis | None = None,
        registry: TaskRegistry | None = None,
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._registry = registry if registry is not None else default_registry
        self._lock = threading.Lock()
        self._modules_loaded = False
        self._queues: dict[str, AtomqQueue] = {}

    def configure(self, *, settings: Settings | None = None, connection: redis.Redis | None = None) -> None:
        """Replace the settings and/or connection used from now on."""
        with self._lock:
            if settings is not None:
                self._settings = settings
                self._modules_loaded = False
                if connection is None:
                    self._connection = None
            if connection is not None:
                self._connection = connection
            self._queues.clear()

    @property
    def settings(self) -> Settings:
        """The settings in use (read from the environment on first access)."""
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = load_settings()
        return self._settings

    @property
    def connection(self) -> redis.Redis:
        """The Redis client in use (connected on first access)."""
        if self._connection is None:
            settings = self.settings
            with self._lock:
                if self._connection is None:
                    self._connection = connect(settings)
        return self._connection

    @property
    def registry(self) -> TaskRegistry:
        """The task registry, with the configured task modules imported."""
        if not self._modules_loaded:
            load_task_modules(self.settings.task_modules)
            self._modules_loaded = True
        return self._registry

    def queue(self, name: str) -> AtomqQueue:
        """The named queue, bound to this task queue's connection."""
        queue = self._queues.get(name)
        if queue is None or queue.connection is not self.connection:
            validate_queue_name(name)
            queue = AtomqQueue(
                name, connection=self.connection, default_timeout=self.settings.default_timeout
            )
            self._queues[name] = queue
        return queue

    # -- enqueueing -------------------------------------------------------------------------

    def enqueue(self, task: str, /, *args: Any, **kwargs: Any) -> AtomqJob:
        """Queue a call of ``task`` now. Returns the job (``job.id`` is what to keep)."""
        return self._submit(task, args, kwargs, when=None)

    def enqueue_in(self, delay: timedelta | float, task: str, /, *args: Any, **kwargs: Any) -> AtomqJob:
        """Queue a call of ``task`` to run after ``delay`` (a timedelta or seconds)."""
        return self._submit(task, args, kwargs, when=utcnow() + as_timedelta(delay, field="delay"))

    def enqueue_at(self, when: datetime, task: str, /, *args: Any, **kwargs: Any) -> AtomqJob:
        """Queue a call of ``task`` to run at ``when``.

        A naive ``when`` is wall-clock time in ``ATOMQ_TIMEZONE`` (UTC by default). A time in
        the past queues the job at once.
        """
        return self._submit(task, args, kwargs, when=to_aware(when, self.settings.tz, field="at"))

    def enqueue_many(self, calls: Iterable[Call | Mapping[str, Any] | tuple[Any, ...]]) -> list[AtomqJob]:
        """Queue many calls, :data:`MANY_CHUNK` per round trip to Redis.

        Every call is checked first; if any is invalid nothing is queued. Each chunk is then
        written whole or not at all: when Redis refuses one (a ``job_id`` that exists, a
        ``depends_on`` naming no job), the chunks before it stay queued and the error says
        how many calls were. A call may depend on an earlier call of the same list.
        """
        jobs = build_many(self.registry, calls, self.settings)
        written: list[AtomqJob] = []
        for start in range(0, len(jobs), MANY_CHUNK):
            chunk = jobs[start : start + MANY_CHUNK]
            try:
                written += self._write(chunk, all_or_none=True)
            except AtomqError as exc:  # refused by Redis: say what the chunks before wrote
                if start:
                    exc.message = f"{exc.message} (calls 0-{start - 1} were queued; none after)"
                    exc.args = (exc.message,)
                raise
        return written

    def enqueue_batch(
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
        """Queue one job of ``task`` per item of ``items`` (each the task's keyword arguments)
        as a batch: one Redis round trip per ``chunk_size`` items, progress counted per batch.

        Options: ``queue``, ``timeout``, ``retry``, ``result_ttl``, ``failure_ttl``, ``ttl``,
        ``at_front``. Follow it with :func:`atomq.features.batches.progress.batch_progress`; cancel
        it with :func:`atomq.features.batches.tracking.cancel_batch`. See :mod:`atomq.engine.batches`.
        """
        return enqueue_batch(
            self, task, items, batch_id=batch_id, chunk_size=chunk_size, description=description, **options
        )

    def _submit(
        self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, when: datetime | None
    ) -> AtomqJob:
        spec = self.registry.get(task)
        call_args, call_kwargs, options = split_call(spec, args, kwargs)
        job = build_job(spec, call_args, call_kwargs, options, self.settings, when=when)
        (written,) = self._write([job], all_or_none=True)
        return written

    def _write(self, jobs: list[NewJob], *, all_or_none: bool) -> list[AtomqJob]:
        """Write ``jobs`` with one script call; the jobs written, or the first refusal raised."""
        script, args = enqueue_call(jobs, all_or_none=all_or_none, now=int(time.time()))
        returned: list[AtomqJob] = []

        def build_returned() -> None:  # while Redis runs the script
            returned.extend(rq_job_for(job, self.connection) for job in jobs)

        with self._redis_errors():
            reply = call_script(self.connection, script, args, meanwhile=build_returned)
        statuses = statuses_or_raise(jobs, reply)
        return [settle(rq_job, status) for rq_job, status in zip(returned, statuses, strict=True)]

    # -- inspection and control -------------------------------------------------------------

    def fetch_job(self, job_id: str) -> AtomqJob:
        """The job with ``job_id``, or :class:`JobNotFoundError`."""
        check_id(job_id)
        with self._redis_errors():
            try:
                return load_job(job_id, self.connection)
            except NoSuchJobError:
                raise missing(job_id) from None

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        """The guide's status dictionary for ``job_id``."""
        job = self.fetch_job(job_id)
        with self._redis_errors():
            return status_dict(job)

    def cancel_job(self, job_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Cancel a queued, scheduled or deferred job; stop a running one.

        A waiting job is taken back in one atomic step (a worker cannot claim it half-way).
        A running job's worker is told to stop it; the job then ends as ``stopped``. With
        ``wait`` (seconds) the call waits that long for the stop to be recorded. A job that
        already ended raises :class:`JobStateError`. Returns the status dictionary.
        """
        check_id(job_id)
        with self._redis_errors():
            reply = call_script(self.connection, CANCEL_SCRIPT, [job_id, int(time.time())])
            worker_name = canceled_or_raise(job_id, reply)
            if worker_name:
                self.connection.publish(*stop_message(worker_name, job_id))
                self._wait_end(job_id, wait)
        return self.get_job_status(job_id)

    def wait(self, job_id: str, timeout: float = 30.0) -> Any:
        """Wait until ``job_id`` ends and return its result.

        Woken by Redis as soon as the job ends (not by polling). Raises
        :class:`~atomq.core.errors.JobFailedError` when the job failed (its retries used up),
        was stopped or was canceled, naming the job and its error;
        :class:`~atomq.core.errors.WaitTimeoutError` when it has not ended after ``timeout``
        seconds (the job itself carries on); :class:`JobNotFoundError` when there is no such
        job. A retried attempt does not end the wait: its next attempt may still succeed.
        """
        seen = self._wait_end(job_id, timeout)
        if not seen.ended:
            raise WaitTimeoutError(job_id, timeout, seen.status)
        return outcome(seen)

    def wait_for_end(self, job_id: str, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for ``job_id`` to end; its status then (ended or not)."""
        return self._wait_end(job_id, timeout).status or ""

    def _wait_end(self, job_id: str, timeout: float) -> Seen:
        """Block until the job ends or ``timeout`` passes; what was seen last."""
        check_id(job_id)
        deadline = time.monotonic() + max(0.0, timeout)
        with self._redis_errors():
            seen = self._read(job_id)
            if seen.status is None:
                raise missing(job_id)
            while not seen.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return seen
                block = blocking_timeout(self.connection, min(remaining, WAIT_SLICE))
                reply = self.connection.xread(
                    {keys.results_key(job_id): seen.last_id}, count=1, block=block_ms(block)
                )
                seen = finished_from(job_id, reply, self.connection) or self._read(job_id)
                if seen.status is None:
                    raise gone(job_id)
        return seen

    def _read(self, job_id: str) -> Seen:
        with self.connection.pipeline(transaction=False) as pipe:
            queue_reads(pipe, job_id)
            return seen_from(job_id, pipe.execute(), self.connection)

    def _redis_errors(self) -> _RedisErrors:
        return _RedisErrors(self)


class _RedisErrors:
    """Turn redis-py connection failures into :class:`RedisUnavailableError`, and a write
    refused by a full Redis into :class:`RedisFullError`."""

    def __init__(self, owner: TaskQueue) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            return
        error = unavailable_error(exc, self.owner.connection)
        if error is not None:
            raise error from None


#: The process-wide task queue, configured from the environment on first use.
task_queue = TaskQueue()


def get_job_status(job_id: str) -> dict[str, Any]:
    """The guide's status dictionary for ``job_id`` (see :meth:`TaskQueue.get_job_status`)."""
    return task_queue.get_job_status(job_id)


def cancel_job(job_id: str) -> dict[str, Any]:
    """Cancel or stop ``job_id`` (see :meth:`TaskQueue.cancel_job`)."""
    return task_queue.cancel_job(job_id)
