"""atomq's job class: RQ's ``Job`` that only ever runs registered tasks and only speaks JSON.

RQ imports whatever ``module.function`` a job names and unpickles its payload, so anyone who
can write to Redis can run code. ``AtomqJob`` closes both doors:

* the serializer is JSON, whatever the caller passes, so a pickle payload is never unpickled
  (and text that cannot be encoded comes back escaped);
* ``func`` resolves the stored name through the task registry, so ``os.system`` is refused;
* callbacks and webhooks named in a hand-written job hash are ignored.

It keeps RQ's hash layout, so ``Job.fetch``, ``rq info`` and rq-dashboard read atomq's jobs.
"""

from __future__ import annotations

import binascii
import logging
import math
import zlib
from datetime import datetime, tzinfo
from typing import Any

from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from atomq.core import keys, text
from atomq.core.errors import UnknownTaskError, UnreadableJobError
from atomq.core.timeutil import utcnow
from atomq.engine.stats import due_time
from atomq.engine.tasks import TaskRegistry, TaskSpec, registry

logger = logging.getLogger("atomq.engine.jobs")

#: Statuses from which a job can still be canceled without stopping anything.
CANCELABLE_STATUSES = frozenset(
    {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED, JobStatus.READY_TO_ENQUEUE}
)

#: Statuses after which nothing more will happen to a job.
TERMINAL_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


class EscapingJSONSerializer(JSONSerializer):
    """RQ's JSON serializer, reading back a lone surrogate (stored as a ``\\udXXX`` escape by
    someone who wrote Redis directly, or before atomq refused them) as visible text, so that
    no reader or task ever holds text that cannot be encoded."""

    @staticmethod
    def loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        return text.loads(s)


#: Per job class, the attributes RQ's constructor gives a new job (see AtomqJob.written).
_BLANK: dict[type, dict[str, Any]] = {}


class AtomqJob(Job):
    """An RQ job restricted to registered tasks and JSON payloads."""

    #: The job ran in a worker that crashed with other jobs in flight: it runs in a process of
    #: its own from now on, so a job that crashes its worker is found (see atomq.engine.recovery).
    suspect: bool = False

    #: Jobs of one group run one at a time, fairly beside other groups (see atomq.engine.groups).
    group: str | None = None

    #: When a scheduled job was due (epoch seconds), until it starts; its lateness is measured
    #: against this (see :mod:`atomq.engine.stats`).
    due_at: float | None = None

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        # The serializer argument is ignored on purpose: accepting pickle here would reopen the
        # door this class exists to close. (Set after RQ's constructor, which would otherwise
        # spend ~35 us per job on a runtime Protocol check of it.)
        super().__init__(id, connection=connection)
        self.serializer = EscapingJSONSerializer

    @classmethod
    def written(cls, job_id: str, connection: Any) -> AtomqJob:
        """A new job object for ``job_id`` just written to Redis, without RQ's constructor.

        RQ's ``Job.__init__`` sets some fifty attributes and validates the id (which the
        producer already checked): a sixth of an enqueue's Python time. The attributes are
        copied from a job built once by that constructor (so a new RQ attribute comes along),
        with fresh containers where a job may change its own.
        """
        blank = _BLANK.get(cls)
        if blank is None:
            blank = _BLANK[cls] = dict(cls("blank", connection=connection).__dict__)
        job = cls.__new__(cls)
        state = job.__dict__
        state.update(blank)
        state["_id"] = job_id
        state["connection"] = connection
        state["created_at"] = utcnow()
        state["webhooks"], state["_dependency_ids"], state["meta"] = [], [], {}
        return job

    @property
    def task_name(self) -> str | None:
        """The registered task name this job runs (RQ calls it ``func_name``)."""
        return self.func_name

    #: The registered task this job runs, once looked up (see :func:`resolve_task`).
    _spec: TaskSpec | None = None

    @property
    def spec(self) -> TaskSpec:
        """The registered task, or :class:`~atomq.core.errors.UnknownTaskError` (looked up in the
        process-wide registry unless :func:`resolve_task` bound the job to another)."""
        if self._spec is None:
            self._spec = registry.get(self.func_name or "")
        return self._spec

    @property
    def func(self) -> Any:
        # RQ's version imports any dotted path. Only the registry may resolve a job's function.
        return self.spec.func

    @property
    def success_callback(self) -> None:
        self._refuse_callback(self._success_callback_name)

    @property
    def failure_callback(self) -> None:
        self._refuse_callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> None:
        self._refuse_callback(self._stopped_callback_name)

    def _refuse_callback(self, name: str | None) -> None:
        if name:
            logger.warning(
                "job %s names callback %r; atomq never imports callbacks from Redis", self.id, name
            )

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        """RQ's hash fields, and the job's group when it has one."""
        data: dict[str, Any] = super().to_dict(include_meta=include_meta, include_result=include_result)
        if self.group:
            data[keys.GROUP_FIELD] = self.group
        return data

    def restore(self, raw_data: Any) -> Any:
        # RQ parses the five timestamps with strptime, the slowest part of loading a job; take
        # them out, let RQ restore the rest, then parse them with fromisoformat (same result).
        data = dict(raw_data)
        stamps = {}
        for name in _TIMESTAMP_FIELDS:
            for key in (name, name.encode()):
                value = data.pop(key, None)
                if value:
                    stamps[name] = value
        result = super().restore(data)
        for name, value in stamps.items():
            setattr(self, name, _parse_stamp(value))
        # Webhook URLs stored in Redis would let a writer make workers call arbitrary hosts.
        self.webhooks = []
        self.due_at = due_time(raw_data)
        group = raw_data.get(keys.GROUP_FIELD.encode()) or raw_data.get(keys.GROUP_FIELD)
        self.group = group.decode() if isinstance(group, bytes) else group
        self.suspect = bool(raw_data.get(keys.SUSPECT_FIELD.encode()) or raw_data.get(keys.SUSPECT_FIELD))
        return result


#: Job hash fields holding RQ-formatted UTC timestamps.
_TIMESTAMP_FIELDS = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")


def _parse_stamp(value: bytes | str) -> datetime:
    text = value.decode() if isinstance(value, bytes) else value
    try:
        return datetime.fromisoformat(text)  # RQ writes '%Y-%m-%dT%H:%M:%S.%fZ'; 3.11 reads the Z
    except ValueError:
        from rq.utils import utcparse

        return utcparse(text)


#: What restoring a job hash that was written by hand or corrupted raises (bad dates, statuses,
#: numbers or encodings); such a job is reported as unreadable rather than failing a listing.
_UNREADABLE = (ValueError, TypeError, KeyError, UnicodeDecodeError)


def load_job(job_id: str, connection: Any) -> AtomqJob:
    """Fetch one job as an :class:`AtomqJob`.

    Raises RQ's ``NoSuchJobError`` when there is none and
    :class:`~atomq.core.errors.UnreadableJobError` when its record cannot be decoded.
    """

    job = AtomqJob(job_id, connection=connection)
    try:
        job.refresh()
    except _UNREADABLE as exc:
        raise UnreadableJobError(
            f"job {job_id} is stored in a form atomq cannot read ({str(exc)[:200]})", field="job_id"
        ) from None
    return job


def load_jobs(job_ids: list[str], connection: Any) -> list[AtomqJob | None]:
    """Fetch many jobs in one round trip; ``None`` where a job no longer exists or cannot be read."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(AtomqJob.key_for(job_id))
        replies = pipe.execute()
    jobs: list[AtomqJob | None] = []
    for job_id, raw in zip(job_ids, replies, strict=True):
        if not raw:
            jobs.append(None)
            continue
        job = AtomqJob(job_id, connection=connection)
        try:
            job.restore(raw)
        except _UNREADABLE as exc:
            logger.warning("job %s cannot be read (%s); leaving it out", job_id, exc)
            jobs.append(None)
            continue
        jobs.append(job)
    return jobs


def iso(value: datetime | None, zone: tzinfo | None = None) -> str | None:
    """ISO-8601 with an explicit offset (UTC unless ``zone`` is given), or ``None``."""
    if value is None:
        return None
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    if zone is not None:
        value = value.astimezone(zone)
    return value.isoformat()


def error_summary(exc_string: str | None) -> str | None:
    """The last meaningful line of a traceback: ``ValueError: bad post``."""
    if not exc_string:
        return None
    lines = [line.strip() for line in exc_string.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def readable_meta(job: Job) -> dict[str, Any]:
    """The job's meta, or a note when it is not JSON (RQ then keeps the raw bytes, which would
    break any JSON reply and must never be unpickled)."""
    if getattr(job, "_unreadable_meta", None) is not None:
        return {"unreadable": "meta is stored in a form atomq cannot read (not JSON)"}
    return dict(job.meta or {})


def latest_result(job: Job) -> Result | None:
    """The job's newest Result, tolerating values that do not decode as JSON."""
    try:
        return job.latest_result()
    except (ValueError, TypeError, UnicodeDecodeError):
        logger.warning("job %s has a result atomq cannot decode", job.id)
        return None


def status_dict(job: Job, *, refresh: bool = False) -> dict[str, Any]:
    """The guide's job status dictionary, exactly its keys, times in ISO-8601 with offset.

    ``result`` is the return value of a finished job; ``error`` the last line of the latest
    failed attempt, shown also while a retry is pending (the traceback stays available through
    ``atomq failed --job-id``).
    """
    status = job.get_status(refresh=refresh)
    latest = latest_result(job) if status != JobStatus.CREATED else None
    return guide_status(job, latest)


def guide_status(job: Job, latest: Result | None) -> dict[str, Any]:
    """:func:`status_dict` from a job and its latest result already read (no Redis access)."""
    status = job.get_status(refresh=False)
    result: Any = None
    error: str | None = None
    if latest is not None and status != JobStatus.CREATED:
        if latest.type == Result.Type.SUCCESSFUL:
            if status == JobStatus.FINISHED:
                result = latest.return_value
        elif latest.type == Result.Type.MAX_RETRIES_EXCEEDED:
            error = "maximum number of retries exceeded"
        elif latest.exc_string:
            error = error_summary(latest.exc_string)
    if status == JobStatus.STOPPED and not error:
        error = "stopped on request"
    return {
        "job_id": job.id,
        "status": str(status.value if isinstance(status, JobStatus) else status),
        "created_at": iso(job.created_at),
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "result": result,
        "error": error,
    }


def job_from_hash(job_id: str, raw: dict[Any, Any], connection: Any) -> AtomqJob:
    """A job restored from its hash as read (``HGETALL``), or :class:`UnreadableJobError`.

    ``connection`` is only kept on the job (any truthy object will do where the job is only
    read, as ``atomq.aio`` does with its asyncio client).
    """
    job = AtomqJob(job_id, connection=connection)
    try:
        job.restore(raw)
    except _UNREADABLE as exc:
        raise UnreadableJobError(
            f"job {job_id} is stored in a form atomq cannot read ({str(exc)[:200]})", field="job_id"
        ) from None
    return job


def result_from_entry(job_id: str, entry: Any, connection: Any) -> Result | None:
    """A results-stream entry (``(id, fields)`` from ``XREVRANGE``/``XREAD``) as RQ's Result,
    or None when there is none or it cannot be decoded."""
    if not entry:
        return None
    entry_id, payload = entry
    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    try:
        return Result.restore(job_id, entry_id, payload, connection=connection, serializer=JSONSerializer)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, zlib.error, binascii.Error):
        logger.warning("job %s has a result atomq cannot decode", job_id)
        return None


def resolve_task(job: AtomqJob, tasks: TaskRegistry | None = None) -> str | None:
    """Look up the task ``job`` runs in ``tasks`` (the process-wide registry by default) and bind
    it to the job, so nothing looks it up again; return why a worker must not run the job
    (undecodable payload, unregistered task), or ``None``."""
    try:
        name = job.func_name
    except DeserializationError:
        return "its payload is not JSON (atomq never unpickles job data)"
    try:
        job._spec = (tasks if tasks is not None else registry).get(name or "")
    except UnknownTaskError as exc:
        return str(exc)
    return None


def set_next_retry_delay(job: Job, delay: float) -> None:
    """Make the job's next retry wait ``delay`` seconds (rounded up), keeping later intervals.

    RQ reads the wait for retry n from ``retry_intervals[n]``; a task that knows better (a rate
    limit's reset time) overrides just that slot.
    """
    intervals = list(job.retry_intervals or [0])
    retries_left = job.retries_left or 0
    index = max(len(intervals) - retries_left, 0)
    while len(intervals) <= index:
        intervals.append(intervals[-1])
    intervals[index] = max(0, math.ceil(delay))
    job.retry_intervals = intervals
