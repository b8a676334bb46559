"""Enqueue registered tasks, read their status, cancel them: the guide's ``task_queue`` API.

::

    from atomq.engine.task_queue import task_queue, get_job_status, cancel_job

    job = task_queue.enqueue("process_scheduled_post", post_id="post_123", user_id="user_456")
    job = task_queue.enqueue_in(timedelta(minutes=30), "process_scheduled_post", post_id="post_123")
    job = task_queue.enqueue_at(datetime(2026, 2, 6, 14, 30), "process_scheduled_post", post_id="post_123")
    get_job_status(job.id)   # {'job_id': ..., 'status': 'queued', ...}
    cancel_job(job.id)

Keyword arguments go to the task, except the enqueue options (``queue``, ``job_id``,
``timeout``, ``retry``, ``at_front``, ``meta``, ``depends_on``, ``unique``, ``result_ttl``,
``failure_ttl``, ``ttl``, ``description``). A task whose own parameter shares one of those names
takes its arguments through ``kwargs={...}`` instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from rq.command import send_command
from rq.exceptions import DuplicateJobError as RQDuplicateJobError
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus
from rq.job import Retry as RQRetry

from atomq.core import keys
from atomq.core.connection import connect, describe_client, full_message, is_out_of_memory
from atomq.core.errors import (
    AtomqError,
    ConfigurationError,
    DuplicateJobError,
    InvalidJobOptionError,
    JobNotFoundError,
    JobStateError,
    RedisFullError,
    RedisUnavailableError,
    TaskArgumentsError,
)
from atomq.core.options import (
    ENQUEUE_OPTIONS,
    JOB_ID_PATTERN,
    MAX_PAYLOAD_BYTES,
    check_json,
    description_option,
    ttl_option,
    validate_job_id,
    validate_queue_name,
)
from atomq.core.settings import Settings, load_settings
from atomq.core.timeutil import as_timedelta, to_aware, utcnow
from atomq.engine.batches import Batch, enqueue_batch
from atomq.engine.jobs import CANCELABLE_STATUSES, TERMINAL_STATUSES, AtomqJob, load_job, status_dict
from atomq.engine.queues import AtomqQueue
from atomq.engine.tasks import Retry, TaskRegistry, TaskSpec, load_task_modules
from atomq.engine.tasks import registry as default_registry


@dataclass(frozen=True)
class Call:
    """One task call for :meth:`TaskQueue.enqueue_many`."""

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Call | Mapping[str, Any] | tuple[Any, ...]) -> Call:
        """Accept a ``Call``, ``(task, kwargs)`` or ``{"task": ..., "kwargs": ..., ...options}``."""
        if isinstance(value, Call):
            return value
        if isinstance(value, tuple) and len(value) in (1, 2) and isinstance(value[0], str):
            return cls(value[0], kwargs=value[1] if len(value) == 2 else {})
        if isinstance(value, Mapping) and isinstance(value.get("task"), str):
            rest = {k: v for k, v in value.items() if k not in ("task", "args", "kwargs")}
            return cls(
                value["task"], args=value.get("args", ()), kwargs=value.get("kwargs", {}), options=rest
            )
        raise TaskArgumentsError(
            f"cannot read {value!r} as a task call: "
            "use Call(...), (task, kwargs) or {'task': ..., 'kwargs': ...}"
        )


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
        spec, call_args, call_kwargs, options = self._split(task, args, kwargs)
        return self._submit(spec, call_args, call_kwargs, options, when=None)

    def enqueue_in(self, delay: timedelta | float, task: str, /, *args: Any, **kwargs: Any) -> AtomqJob:
        """Queue a call of ``task`` to run after ``delay`` (a timedelta or seconds)."""
        when = utcnow() + as_timedelta(delay, field="delay")
        spec, call_args, call_kwargs, options = self._split(task, args, kwargs)
        return self._submit(spec, call_args, call_kwargs, options, when=when)

    def enqueue_at(self, when: datetime, task: str, /, *args: Any, **kwargs: Any) -> AtomqJob:
        """Queue a call of ``task`` to run at ``when``.

        A naive ``when`` is wall-clock time in ``ATOMQ_TIMEZONE`` (UTC by default). A time in
        the past queues the job at once.
        """
        due = to_aware(when, self.settings.tz, field="at")
        spec, call_args, call_kwargs, options = self._split(task, args, kwargs)
        return self._submit(spec, call_args, call_kwargs, options, when=due)

    def enqueue_many(self, calls: Iterable[Call | Mapping[str, Any] | tuple[Any, ...]]) -> list[AtomqJob]:
        """Queue many calls in one round trip to Redis.

        Every call is checked first; if any is invalid nothing is queued. ``depends_on`` and
        ``unique`` are not available here (each needs its own atomic check).
        """
        prepared: list[tuple[AtomqQueue, AtomqJob, bool]] = []
        for index, raw in enumerate(calls):
            call = Call.coerce(raw)
            options = dict(call.options)
            for unsupported in ("depends_on", "unique"):
                if options.get(unsupported):
                    raise InvalidJobOptionError(
                        f"call {index}: {unsupported} is not supported by enqueue_many; use enqueue",
                        field=unsupported,
                    )
            unknown = set(options) - ENQUEUE_OPTIONS
            if unknown:
                raise InvalidJobOptionError(
                    f"call {index}: unknown options {sorted(unknown)}", field="options"
                )
            try:
                queue, job, at_front = self._build(
                    self.registry.get(call.task), tuple(call.args), dict(call.kwargs), options
                )
            except AtomqError as exc:
                raise type(exc)(f"call {index}: {exc.message}", field=exc.field) from None
            prepared.append((queue, job, at_front))
        ids = [job.id for _, job, _ in prepared if job._id]
        if len(ids) != len(set(ids)):
            raise InvalidJobOptionError("the same job_id appears more than once", field="job_id")
        if not prepared:
            return []
        with self._redis_errors(), self.connection.pipeline() as pipe:
            for queue in {id(q): q for q, _, _ in prepared}.values():
                pipe.sadd(queue.redis_queues_keys, queue.key)
            for queue, job, at_front in prepared:
                queue._enqueue_job(job, pipeline=pipe, at_front=at_front)
            pipe.execute()
        return [job for _, job, _ in prepared]

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

    def _split(
        self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[TaskSpec, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """The task's spec (looked up once per call), its arguments and the enqueue options."""
        spec = self.registry.get(task)
        explicit_kwargs = kwargs.pop("kwargs", None)
        explicit_args = kwargs.pop("args", None)
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in ENQUEUE_OPTIONS}
        if explicit_kwargs is not None or explicit_args is not None:
            if kwargs or args:
                raise TaskArgumentsError(
                    "pass the task's arguments either directly or through args=/kwargs=, not both",
                    field="kwargs",
                )
            if explicit_kwargs is not None and not isinstance(explicit_kwargs, Mapping):
                raise TaskArgumentsError("kwargs= must be a mapping", field="kwargs")
            if explicit_args is not None and not isinstance(explicit_args, list | tuple):
                raise TaskArgumentsError("args= must be a list or tuple", field="args")
            return spec, tuple(explicit_args or ()), dict(explicit_kwargs or {}), options
        clashes = spec.colliding_parameters() & set(options)
        if clashes:
            names = ", ".join(sorted(clashes))
            raise TaskArgumentsError(
                f"task {task!r} has a parameter named {names}, which is also an enqueue option; "
                f"pass the task's arguments as kwargs={{...}}",
                field="kwargs",
            )
        return spec, args, kwargs, options

    def _submit(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        when: datetime | None,
    ) -> AtomqJob:
        scheduled = when is not None and when > utcnow()
        status = JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED
        queue, job, at_front = self._build(spec, args, kwargs, options, status=status)
        unique = bool(options.get("unique"))
        if unique and not job._id:
            raise InvalidJobOptionError("unique=True needs a job_id", field="unique")
        with self._redis_errors():
            try:
                if scheduled:
                    assert when is not None
                    if at_front:
                        job.enqueue_at_front = True
                    queue.schedule_job(job, when, unique=unique)
                else:
                    queue.enqueue_job(job, at_front=at_front, unique=unique)
            except RQDuplicateJobError:
                raise DuplicateJobError(f"a job with id {job.id!r} already exists", field="job_id") from None
        return job

    def _build(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        status: JobStatus = JobStatus.QUEUED,
    ) -> tuple[AtomqQueue, AtomqJob, bool]:
        spec.bind(args, kwargs)
        check_json(list(args), "args")
        check_json(kwargs, "kwargs")
        meta = options.get("meta")
        if meta is not None:
            if not isinstance(meta, dict):
                raise InvalidJobOptionError("meta must be a dict", field="meta")
            check_json(meta, "meta")
        queue_name = validate_queue_name(options.get("queue") or spec.queue)
        job_id = options.get("job_id")
        if job_id is not None:
            validate_job_id(job_id)
        depends_on = self._dependencies(options.get("depends_on"))
        queue = self.queue(queue_name)
        retry = self._retry(options.get("retry", spec.retry))
        job = queue.create_job(
            spec.name,
            args=list(args),
            kwargs=kwargs,
            timeout=self._timeout(options.get("timeout"), spec),
            result_ttl=ttl_option(
                options.get("result_ttl", spec.result_ttl), self.settings.result_ttl, "result_ttl"
            ),
            failure_ttl=ttl_option(
                options.get("failure_ttl", spec.failure_ttl), self.settings.failure_ttl, "failure_ttl"
            ),
            ttl=ttl_option(options.get("ttl"), None, "ttl"),
            description=description_option(options.get("description")),
            depends_on=list(depends_on) if depends_on else None,
            job_id=job_id,
            meta=meta,
            retry=retry,
            status=status,
        )
        payload = len(job.data) + (len(job.serializer.dumps(meta)) if meta else 0)
        if payload > MAX_PAYLOAD_BYTES:
            raise TaskArgumentsError(
                f"job payload is {payload} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit; "
                "store large inputs elsewhere and pass their id",
                field="kwargs",
            )
        assert isinstance(job, AtomqJob)
        return queue, job, bool(options.get("at_front", False))

    def _timeout(self, value: Any, spec: TaskSpec) -> int:
        if value is None:
            return spec.timeout or self.settings.default_timeout
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidJobOptionError(
                f"timeout must be a positive number of seconds, got {value!r}", field="timeout"
            )
        return max(1, math.ceil(value))

    def _retry(self, value: Any) -> RQRetry | None:
        try:
            policy = Retry.coerce(value)
        except ConfigurationError as exc:
            raise InvalidJobOptionError(exc.message, field="retry") from None
        if policy is None:
            return None
        return RQRetry(max=policy.max, interval=policy.intervals())

    def _dependencies(self, value: Any) -> list[str]:
        if value is None:
            return []
        items = value if isinstance(value, list | tuple) else [value]
        ids = [item.id if isinstance(item, AtomqJob) else item for item in items]
        for job_id in ids:
            validate_job_id(job_id, field="depends_on")
        if ids:
            with self._redis_errors():
                exists = self.connection.pipeline()
                for job_id in ids:
                    exists.exists(keys.job_key(job_id))
                found = exists.execute()
            missing = [job_id for job_id, ok in zip(ids, found, strict=True) if not ok]
            if missing:
                raise JobNotFoundError(
                    f"depends_on names unknown jobs: {', '.join(missing)}", field="depends_on"
                )
        return ids

    # -- inspection and control -------------------------------------------------------------

    def fetch_job(self, job_id: str) -> AtomqJob:
        """The job with ``job_id``, or :class:`JobNotFoundError`."""
        if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFoundError(
                f"no job with id {str(job_id)[:80]!r} (not a valid job id)", field="job_id"
            )
        with self._redis_errors():
            try:
                return load_job(job_id, self.connection)
            except NoSuchJobError:
                raise JobNotFoundError(
                    f"no job with id {job_id!r} (it never existed, or its result has expired)", field="job_id"
                ) from None

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        """The guide's status dictionary for ``job_id``."""
        job = self.fetch_job(job_id)
        with self._redis_errors():
            return status_dict(job)

    def cancel_job(self, job_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Cancel a queued, scheduled or deferred job; stop a running one.

        A running job's worker is told to stop it; the job then ends as ``stopped``. With
        ``wait`` (seconds) the call waits that long for the stop to be recorded. A job that
        already ended raises :class:`JobStateError`. Returns the status dictionary.
        """
        job = self.fetch_job(job_id)
        with self._redis_errors():
            for _ in range(5):
                status = job.get_status(refresh=True)
                if status in TERMINAL_STATUSES:
                    raise JobStateError(f"job {job_id} has already ended ({status.value}); nothing to cancel")
                if status in CANCELABLE_STATUSES and self._take_back(job, status):
                    job.cancel()
                    return status_dict(job, refresh=True)
                if status == JobStatus.STARTED:
                    return self._stop(job, wait)
            # The job kept changing state under us; report where it stands.
            return status_dict(job, refresh=True)

    def _take_back(self, job: AtomqJob, status: JobStatus) -> bool:
        """Remove the job from its queue or registry; False when a worker or scheduler got it first."""
        if status == JobStatus.QUEUED:
            return bool(self.connection.lrem(keys.queue_key(job.origin), 0, job.id))
        if status == JobStatus.SCHEDULED:
            return bool(self.connection.zrem(keys.scheduled_key(job.origin), job.id))
        return True

    def _stop(self, job: AtomqJob, wait: float) -> dict[str, Any]:
        worker_name = job.worker_name
        if worker_name:
            send_command(self.connection, worker_name, "stop-job", job_id=job.id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if job.get_status(refresh=True) in TERMINAL_STATUSES:
                break
            time.sleep(0.05)
        return status_dict(job, refresh=True)

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
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            where = describe_client(self.owner.connection)
            raise RedisUnavailableError(f"lost the connection to Redis at {where}: {exc}") from None
        if is_out_of_memory(exc):
            where = describe_client(self.owner.connection)
            raise RedisFullError(full_message(where)) from None


def _group_by_queue(jobs: Iterable[tuple[str, AtomqJob]]) -> dict[str, list[AtomqJob]]:
    grouped: dict[str, list[AtomqJob]] = defaultdict(list)
    for queue_name, job in jobs:
        grouped[queue_name].append(job)
    return grouped


#: The process-wide task queue, configured from the environment on first use.
task_queue = TaskQueue()


def get_job_status(job_id: str) -> dict[str, Any]:
    """The guide's status dictionary for ``job_id`` (see :meth:`TaskQueue.get_job_status`)."""
    return task_queue.get_job_status(job_id)


def cancel_job(job_id: str) -> dict[str, Any]:
    """Cancel or stop ``job_id`` (see :meth:`TaskQueue.cancel_job`)."""
    return task_queue.cancel_job(job_id)
