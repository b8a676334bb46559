"""Task calls as callers write them, and the jobs handed back for them.

:func:`split_call` tells a call's task arguments from its enqueue options, :func:`build_many`
checks a whole ``enqueue_many`` before anything is written, and :func:`rq_job_for` (completed
by :func:`settle`) / :class:`QueuedJob` are what the sync and the asyncio task queues return
for a written job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rq.job import JobStatus

from atomq.core.errors import AtomqError, InvalidJobOptionError, TaskArgumentsError
from atomq.core.options import ENQUEUE_OPTIONS
from atomq.core.settings import Settings
from atomq.engine.jobs import AtomqJob
from atomq.engine.producer import NewJob, build_job
from atomq.engine.tasks import TaskRegistry, TaskSpec


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


def split_call(
    spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """A call's task arguments and its enqueue options, told apart (``kwargs`` is consumed).

    Keyword arguments named like an enqueue option are options; a task with a parameter of
    such a name takes its arguments through ``kwargs={...}`` (and ``args=[...]``).
    """
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
        return tuple(explicit_args or ()), dict(explicit_kwargs or {}), options
    clashes = spec.colliding_parameters() & options.keys() if options else None
    if clashes:
        names = ", ".join(sorted(clashes))
        raise TaskArgumentsError(
            f"task {spec.name!r} has a parameter named {names}, which is also an enqueue option; "
            f"pass the task's arguments as kwargs={{...}}",
            field="kwargs",
        )
    return args, kwargs, options


def build_many(
    registry: TaskRegistry,
    calls: Iterable[Call | Mapping[str, Any] | tuple[Any, ...]],
    settings: Settings,
) -> list[NewJob]:
    """Check and build every call of :meth:`TaskQueue.enqueue_many`; an error names its call."""
    jobs: list[NewJob] = []
    seen: set[str] = set()
    for index, raw in enumerate(calls):
        call = Call.coerce(raw)
        options = dict(call.options)
        unknown = set(options) - ENQUEUE_OPTIONS
        if unknown:
            raise InvalidJobOptionError(f"call {index}: unknown options {sorted(unknown)}", field="options")
        try:
            job = build_job(registry.get(call.task), tuple(call.args), dict(call.kwargs), options, settings)
        except AtomqError as exc:
            raise type(exc)(f"call {index}: {exc.message}", field=exc.field) from None
        if job.check != "none":
            if job.id in seen:
                raise InvalidJobOptionError(
                    f"call {index}: job_id {job.id!r} appears more than once", field="job_id"
                )
            seen.add(job.id)
        jobs.append(job)
    return jobs


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job ``atomq.aio`` wrote: what it is and where it went (``id`` is what to keep).

    Unlike the sync API's RQ ``Job`` it holds no connection; ask ``atomq.aio`` about it
    (``get_job_status``, ``wait``, ``cancel_job``).
    """

    id: str
    task: str
    queue: str
    #: ``queued``, ``scheduled`` (due later) or ``deferred`` (waiting for ``depends_on``).
    status: str
    created_at: datetime
    description: str
    #: When a scheduled job is due.
    due_at: datetime | None = None

    @classmethod
    def of(cls, job: NewJob, status: str) -> QueuedJob:
        due = datetime.fromtimestamp(job.due, UTC) if job.due is not None else None
        return cls(job.id, job.task, job.queue, status, job.created_at, job.description, due)


def rq_job_for(job: NewJob, connection: Any) -> AtomqJob:
    """The RQ job object for ``job``, as ``Job.fetch`` would return it once written, but for
    the status Redis writes it with: the sync queue builds it while the script that writes
    the job runs, and :func:`settle` completes it."""
    rq_job = AtomqJob.written(job.id, connection)
    rq_job._func_name = job.task
    rq_job._instance = None
    rq_job._args = list(job.args)
    rq_job._kwargs = job.kwargs
    rq_job.origin = job.queue
    rq_job.description = job.description
    rq_job.timeout = job.timeout
    rq_job.result_ttl = job.result_ttl
    rq_job.failure_ttl = job.failure_ttl
    rq_job.ttl = job.ttl
    rq_job.meta = dict(job.meta or {})
    rq_job.retries_left = job.retries_left
    rq_job.retry_intervals = job.retry_intervals
    rq_job.created_at = job.created_at
    rq_job._dependency_ids = list(job.depends_on)
    if job.at_front and (job.due is not None or job.depends_on):
        rq_job.enqueue_at_front = True
    rq_job.due_at = job.due
    return rq_job


def settle(rq_job: AtomqJob, status: str) -> AtomqJob:
    """Give a job built by :func:`rq_job_for` the status Redis wrote it with."""
    rq_job.enqueued_at = rq_job.created_at if status == JobStatus.QUEUED.value else None
    rq_job._status = JobStatus(status)
    return rq_job
