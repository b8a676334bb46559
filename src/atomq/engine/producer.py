"""Building jobs for Redis without talking to Redis: every check, the job hash, the due time.

:func:`build_job` is the one place a task call becomes a job. The sync ``TaskQueue`` and
``atomq.aio`` both call it and differ only in how they send the result
(:mod:`atomq.engine.producer_scripts`): one script call writes the job whole.

The hash holds the fields RQ's ``Job.to_dict()`` writes for the same call, with the same
values (a test compares the two), so ``Job.fetch``, ``rq info`` and rq-dashboard read atomq's
jobs. The fields RQ writes empty for a job that has not run (its callbacks, ``started_at``,
``ended_at``, ``last_heartbeat``, ``worker_name``, ``group_id``) are left out: RQ's
``Job.restore`` reads a missing field and an empty one alike, and they were 8 of a job's 17
fields, 16 of an enqueue's 41 arguments and 155 of the 557 bytes a queued job takes in
Redis. The fields that every job of one task with the same options shares are kept as a
:class:`Template`, built once and sent as they are, already encoded.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from rq.utils import get_call_string

from atomq.core import keys
from atomq.core.errors import ConfigurationError, InvalidJobOptionError, TaskArgumentsError
from atomq.core.options import (
    MAX_PAYLOAD_BYTES,
    check_caller_job_id,
    check_json,
    check_meta,
    description_option,
    ttl_option,
    validate_group,
    validate_job_id,
    validate_queue_name,
)
from atomq.core.settings import Settings
from atomq.core.timeutil import rq_text, utcnow
from atomq.engine.stats import DUE_FIELD
from atomq.engine.tasks import Retry, TaskSpec

#: How a job lands: on its queue now, or in the scheduled registry until it is due.
Kind = Literal["queue", "schedule"]

#: What the script does when the job's id already exists: refuse (an id the caller chose),
#: replace the old job (``replace=True``), or nothing to check (an id atomq generated).
Check = Literal["none", "refuse", "replace"]

#: Enqueue options stored as a job hash field of atomq's own: option -> (field, check that
#: returns the text to store or raises InvalidJobOptionError). Adding one is a line here (and
#: its name in ``core.options.ENQUEUE_OPTIONS``); both scripts write whatever fields a job
#: carries, and RQ ignores fields it does not know.
FIELD_OPTIONS: dict[str, tuple[str, Callable[[Any], str]]] = {
    # Jobs of one group run one at a time (see atomq.engine.groups).
    "group": (keys.GROUP_FIELD, validate_group),
}


@dataclass(frozen=True, slots=True)
class Template:
    """The hash fields shared by every job of one task, queue and set of options."""

    queue: str
    #: Flat field/value pairs, encoded.
    pairs: tuple[bytes, ...]


@dataclass(slots=True)
class NewJob:
    """One job ready to be written: what the script needs, and what the caller gets back."""

    id: str
    task: str
    queue: str
    kind: Kind
    template: Template
    #: The job's own hash fields (flat pairs): payload, times, description, retries, meta...
    pairs: list[Any]
    check: Check = "none"
    at_front: bool = False
    #: Due time (epoch seconds, sub-second part kept) of a scheduled job.
    due: float | None = None
    #: Seconds the job may wait to start (RQ's ``ttl``), or None.
    ttl: int | None = None
    depends_on: tuple[str, ...] = ()
    created_at: datetime = field(default_factory=utcnow)
    #: RQ's text form of ``created_at``; also the ``enqueued_at`` of a job queued at once.
    stamp: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    description: str = ""
    timeout: int = 0
    result_ttl: int | None = None
    failure_ttl: int | None = None
    retries_left: int | None = None
    retry_intervals: list[int] | None = None


def build_job(
    spec: TaskSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Mapping[str, Any],
    settings: Settings,
    *,
    when: datetime | None = None,
) -> NewJob:
    """Check one task call and build its job (``options`` are :meth:`TaskQueue.enqueue`'s).

    ``when`` is the due time of ``enqueue_in``/``enqueue_at``; a time that has passed queues
    the job at once. Raises the :class:`~atomq.core.errors.InvalidInputError` that names the
    offending field.
    """
    spec.bind(args, kwargs)
    check_json(list(args), "args")
    check_json(kwargs, "kwargs")
    meta = check_meta(options.get("meta"))
    queue = validate_queue_name(options.get("queue") or spec.queue)
    job_id, check = _identity(options)
    depends_on = dependency_ids(options.get("depends_on"))
    timeout = _timeout(options.get("timeout"), spec, settings)
    result_ttl = ttl_option(options.get("result_ttl", spec.result_ttl), settings.result_ttl, "result_ttl")
    failure_ttl = ttl_option(
        options.get("failure_ttl", spec.failure_ttl), settings.failure_ttl, "failure_ttl"
    )
    ttl = _wait_limit(options.get("ttl"))
    retry = _retry(options.get("retry", spec.retry))
    description = description_option(options.get("description"))
    at_front = bool(options.get("at_front", False))

    now = utcnow()
    due = when.timestamp() if when is not None and when > now else None
    data = json.dumps([spec.name, None, list(args), kwargs]).encode()
    meta_bytes = json.dumps(meta).encode() if meta else b""
    if len(data) + len(meta_bytes) > MAX_PAYLOAD_BYTES:
        raise TaskArgumentsError(
            f"job payload is {len(data) + len(meta_bytes)} bytes, over the {MAX_PAYLOAD_BYTES}-byte "
            "limit; store large inputs elsewhere and pass their id",
            field="kwargs",
        )
    description = description or get_call_string(spec.name, args, kwargs, max_length=75) or ""
    stamp = rq_text(now)
    pairs: list[Any] = ["created_at", stamp, "data", compress(data), "description", description]
    intervals = retry.intervals() if retry is not None else None
    if intervals is not None:
        pairs += ["retry_intervals", json.dumps(intervals)]
    if depends_on:
        pairs += ["dependency_id", depends_on[0], "dependency_ids", json.dumps(list(depends_on))]
    if meta_bytes:
        pairs += ["meta", meta_bytes]
    for option, (name, field_check) in FIELD_OPTIONS.items():
        value = options.get(option)
        if value is not None:
            pairs += [name, field_check(value)]
    if at_front and (due is not None or depends_on):
        # Read when the job reaches its queue later (due, or its dependencies done).
        pairs += ["enqueue_at_front", "1"]
    if due is not None:
        pairs += [DUE_FIELD, repr(due), "status", "scheduled"]
    elif not depends_on:
        # With dependencies the script decides: queued, or deferred until they finish.
        pairs += ["status", "queued", "enqueued_at", stamp]
    return NewJob(
        id=job_id or new_job_id(),
        task=spec.name,
        queue=queue,
        kind="schedule" if due is not None else "queue",
        template=template(
            queue, timeout, result_ttl, failure_ttl, ttl, retry.max if retry is not None else None
        ),
        pairs=pairs,
        check=check,
        at_front=at_front,
        due=due,
        ttl=ttl,
        depends_on=depends_on,
        created_at=now,
        stamp=stamp,
        args=args,
        kwargs=kwargs,
        meta=meta,
        description=description,
        timeout=timeout,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        retries_left=retry.max if retry is not None else None,
        retry_intervals=intervals,
    )


def new_job_id() -> str:
    """A random (version 4) UUID in its text form, as RQ names jobs: ``str(uuid.uuid4())``
    without building a ``UUID`` object (a tenth of an enqueue's Python time went there)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Payloads up to this many bytes are stored as JSON text, not compressed (see :func:`compress`).
RAW_PAYLOAD_BYTES = 256


def compress(data: bytes) -> bytes:
    """RQ's ``data`` field for the JSON payload ``data``: zlib-compressed, or as it is when small.

    RQ's reader tries ``zlib.decompress`` and keeps the raw bytes when that fails. JSON text
    always fails it (its first byte, ``[``, is no zlib header), so a stored payload is read
    right either way. Compressing a payload of a few dozen bytes made it no smaller and cost
    a twentieth of an enqueue's Python time.

    A window just large enough for the payload finds the same matches as zlib's default one,
    and spares setting up its full 256 KiB state for every small job (the largest single cost
    of building one). Readers (``zlib.decompress``) take any window size.
    """
    if len(data) <= RAW_PAYLOAD_BYTES:
        return data
    wbits = min(15, max(9, len(data).bit_length()))
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits, max(1, wbits - 7))
    return compressor.compress(data) + compressor.flush()


def _identity(options: Mapping[str, Any]) -> tuple[str | None, Check]:
    """The caller's job id (if any) and what to do when a job with that id exists."""
    job_id = options.get("job_id")
    unique = bool(options.get("unique"))
    replace = bool(options.get("replace"))
    if job_id is None:
        if unique:
            raise InvalidJobOptionError("unique=True needs a job_id", field="unique")
        if replace:
            raise InvalidJobOptionError("replace=True needs a job_id", field="replace")
        return None, "none"
    job_id = check_caller_job_id(job_id)
    if unique and replace:
        raise InvalidJobOptionError(
            "unique=True refuses an existing job and replace=True replaces it: give one of them",
            field="replace",
        )
    return job_id, "replace" if replace else "refuse"


def dependency_ids(value: Any) -> tuple[str, ...]:
    """The ``depends_on`` option (an id, a job, or a list of them) as checked ids."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(validate_job_id(getattr(item, "id", item), field="depends_on") for item in items)


def _timeout(value: Any, spec: TaskSpec, settings: Settings) -> int:
    if value is None:
        return spec.timeout or settings.default_timeout
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidJobOptionError(
            f"timeout must be a positive number of seconds, got {value!r}", field="timeout"
        )
    if not math.isfinite(value):
        raise InvalidJobOptionError(
            f"timeout must be a finite number of seconds, got {value!r}", field="timeout"
        )
    return max(1, math.ceil(value))


def _wait_limit(value: Any) -> int | None:
    """The ``ttl`` option: seconds a job may wait to start; -1 (or None) for no limit."""
    ttl = ttl_option(value, None, "ttl")
    if ttl == 0:
        raise InvalidJobOptionError(
            "ttl must be a positive number of seconds, or -1 for no limit", field="ttl"
        )
    return None if ttl == -1 else ttl


def _retry(value: Any) -> Retry | None:
    try:
        return Retry.coerce(value)
    except ConfigurationError as exc:
        raise InvalidJobOptionError(exc.message, field="retry") from None


#: Templates built so far; a process sees few distinct (task, options) combinations.
_TEMPLATES: dict[tuple[Any, ...], Template] = {}

#: Templates kept before the cache starts over (options computed per call, e.g. a timeout
#: derived from the payload, would otherwise grow it without end).
_MAX_TEMPLATES = 1024


def template(
    queue: str,
    timeout: int,
    result_ttl: int | None,
    failure_ttl: int | None,
    ttl: int | None,
    retries: int | None,
) -> Template:
    """The shared fields of jobs with these options, in RQ's ``to_dict`` form (cached)."""
    key = (queue, timeout, result_ttl, failure_ttl, ttl, retries)
    found = _TEMPLATES.get(key)
    if found is not None:
        return found
    pairs: list[Any] = []
    if retries is not None:
        pairs += ["retries_left", retries]
    pairs += ["origin", queue, "timeout", timeout]
    if result_ttl is not None:
        pairs += ["result_ttl", result_ttl]
    if failure_ttl is not None:
        pairs += ["failure_ttl", failure_ttl]
    if ttl:
        pairs += ["ttl", ttl]
    built = Template(queue, tuple(str(item).encode() for item in pairs))
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()
    _TEMPLATES[key] = built
    return built
