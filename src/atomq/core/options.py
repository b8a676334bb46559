"""What callers may pass when they create a job: names, ids, payloads and option values.

One home for these rules, so the Python API, the HTTP API, the CLI, batches and workflows
refuse the same input with the same message (each error names the offending field).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from atomq.core.errors import InvalidJobOptionError, InvalidTextError, TaskArgumentsError
from atomq.core.text import printable

#: Task names: letters, digits, ``_ . : -``; they show up in logs, metrics and URLs.
TASK_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


#: Keyword arguments of ``task_queue.enqueue`` that configure the job rather than feed the task.
ENQUEUE_OPTIONS = frozenset(
    {
        "queue",
        "job_id",
        "timeout",
        "retry",
        "at_front",
        "meta",
        "depends_on",
        "unique",
        "result_ttl",
        "failure_ttl",
        "ttl",
        "description",
        "group",
        # Overwrite a job whose id exists (otherwise DuplicateJobError). The HTTP API lets only
        # admin tokens ask for it.
        "replace",
    }
)

#: Keys of ``meta`` that atomq itself reads back: workers count a job carrying them as item
#: ``batch_index`` of batch ``batch_id`` (:mod:`atomq.features.batches.tracking`). Only atomq
#: writes them (:mod:`atomq.engine.batches`); a caller setting them could forge a batch's
#: progress or make workers write far past a batch's bitmaps.
RESERVED_META_KEYS = frozenset({"batch_id", "batch_index"})


#: Queue names: they become Redis keys, metric labels and URL segments.
QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_queue_name(name: str) -> str:
    """Return ``name`` or raise :class:`InvalidJobOptionError` explaining the allowed form."""
    if not isinstance(name, str) or not QUEUE_NAME_PATTERN.fullmatch(name):
        raise InvalidJobOptionError(
            f"invalid queue name {name!r}: use 1-64 letters, digits, '_', '-' or '.'", field="queue"
        )
    return name


#: Job ids: RQ's alphabet, bounded so ids stay usable in keys, URLs and logs.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


#: Largest JSON payload (arguments plus meta) a job may carry; bigger inputs belong in the
#: database or object storage, with the job carrying their id.
MAX_PAYLOAD_BYTES = 1_000_000


def validate_job_id(job_id: Any, *, field: str = "job_id") -> str:
    """Return ``job_id`` or raise explaining the allowed form."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidJobOptionError(
            f"invalid job id {str(job_id)[:80]!r}: use 1-128 letters, digits, '_' or '-'", field=field
        )
    return job_id


def check_text(value: str, field: str) -> str:
    """``value`` if it can be encoded as UTF-8, else :class:`InvalidTextError` naming ``field``.

    The one rule for strings at every entrance (Python API, HTTP API, CLI): a lone surrogate
    (``"\\ud800"``, which a JSON escape or a non-UTF-8 command line can produce) is refused
    before anything is stored, since Redis replies, database drivers and JSON answers cannot
    carry it.
    """
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = printable(value[exc.start])
        raise InvalidTextError(
            f"{field} is not valid Unicode text: it holds a lone surrogate ({bad}) at character "
            f"{exc.start}; send UTF-8 text",
            field=field,
        ) from None
    return value


#: Job ids atomq derives itself, by what derives them. A caller choosing one of these could take
#: over (or, creating it first, suppress) a post's, a workflow step's, a batch item's or a
#: recurring schedule's job, so only those features may create them. The forms follow
#: ``features/posts/jobs.py`` ``job_id_for``, ``features/workflows/service.py``
#: ``step_job_id``, ``engine/batches.py`` ``item_job_id`` and
#: ``features/recurring/schedules.py`` ``Schedule.job_id`` (tests hold each to its pattern);
#: record ids are ``<prefix>_<32 hex>``.
RESERVED_JOB_IDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("scheduled posts", re.compile(r"post_[0-9a-f]{32}-r[0-9]+(?:-a[0-9]+)?")),
    ("workflow steps", re.compile(r"wfr_[0-9a-f]{32}-.+-[0-9]+")),
    ("batch items", re.compile(r"batch_[A-Za-z0-9_-]*-[0-9]+")),
    ("recurring schedules", re.compile(r"recurring-.+-[0-9]+")),
)


class DerivedJobId(str):
    """A job id atomq derived itself (a post's, a workflow step's...): passed as ``job_id`` it
    may take a reserved form. Only atomq's features make these; ids from the HTTP API and the
    command line are plain strings, so their reserved forms are refused."""

    __slots__ = ()


def reserved_for(job_id: str) -> str | None:
    """What derives ids of ``job_id``'s form (``"scheduled posts"``...), or ``None`` when a
    caller may use it."""
    for owner, pattern in RESERVED_JOB_IDS:
        if pattern.fullmatch(job_id):
            return owner
    return None


def check_caller_job_id(job_id: Any, *, field: str = "job_id") -> str:
    """``job_id`` if a caller may choose it: well formed and, unless it is a
    :class:`DerivedJobId`, not of a form atomq derives."""
    checked = validate_job_id(job_id, field=field)
    if isinstance(checked, DerivedJobId):
        return str.__str__(checked)
    owner = reserved_for(checked)
    if owner is not None:
        raise InvalidJobOptionError(
            f"job id {checked!r} has the form atomq gives to {owner}; choose another id", field=field
        )
    return checked


#: Types JSON carries unchanged whatever their value, passed without a call per value (strings
#: are checked: a lone surrogate cannot be stored).
_UNCHECKED_TYPES = frozenset({int, bool, type(None)})


def check_json(value: Any, path: str = "kwargs") -> None:
    """Raise :class:`TaskArgumentsError` naming the first value JSON cannot carry unchanged
    (or :class:`InvalidTextError` for text that is not valid Unicode)."""
    if isinstance(value, str):
        check_text(value, path)
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TaskArgumentsError(f"{path} is {value!r}, which JSON cannot store", field=path)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if type(item) not in _UNCHECKED_TYPES:
                check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TaskArgumentsError(
                    f"{path} has a non-string key {key!r}; JSON keys are strings", field=path
                )
            check_text(key, f"{path}.{printable(key)}")
            if type(item) not in _UNCHECKED_TYPES:
                check_json(item, f"{path}.{key}")
        return
    hint = " (pass an ISO-8601 string)" if isinstance(value, datetime) else " (pass ids and plain values)"
    raise TaskArgumentsError(
        f"{path} is a {type(value).__name__}, which cannot be stored as JSON{hint}", field=path
    )


def check_meta(meta: Any) -> dict[str, Any] | None:
    """``meta`` if a caller may set it: a dict of JSON values, none under a reserved key
    (:data:`RESERVED_META_KEYS`); else :class:`InvalidJobOptionError` naming ``meta.<key>``."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise InvalidJobOptionError("meta must be a dict", field="meta")
    reserved = sorted(RESERVED_META_KEYS.intersection(meta))
    if reserved:
        raise InvalidJobOptionError(
            f"meta.{reserved[0]} is reserved: atomq sets it on the items of a batch "
            "(queue a batch with enqueue_batch, or pick another key)",
            field=f"meta.{reserved[0]}",
        )
    check_json(meta, "meta")
    return meta


def ttl_option(value: Any, default: int | None, name: str) -> int | None:
    if value is None:
        return default
    if isinstance(value, timedelta):
        value = int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and value != -1):
        raise InvalidJobOptionError(
            f"{name} must be seconds (or -1 for no expiry), got {value!r}", field=name
        )
    return value


def description_option(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1000:
        raise InvalidJobOptionError(
            "description must be a string of at most 1000 characters", field="description"
        )
    return check_text(value, "description")


#: Group names (``group=``): they become Redis keys and log fields.
GROUP_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def validate_group(group: Any) -> str:
    """Return ``group`` or raise explaining the allowed form."""
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group):
        raise InvalidJobOptionError(
            f"invalid group {str(group)[:80]!r}: use 1-128 letters, digits, '_', '.', ':', '@' or '-'",
            field="group",
        )
    return group
