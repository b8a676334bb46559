"""What callers may pass when they create a job: names, ids, payloads and option values.

One home for these rules, so the Python API, the HTTP API, the CLI, batches and workflows
refuse the same input with the same message (each error names the offending field).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from atomq.core.errors import InvalidJobOptionError, TaskArgumentsError

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
    }
)


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


def check_json(value: Any, path: str = "kwargs") -> None:
    """Raise :class:`TaskArgumentsError` naming the first value JSON cannot carry unchanged."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TaskArgumentsError(f"{path} is {value!r}, which JSON cannot store", field=path)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TaskArgumentsError(
                    f"{path} has a non-string key {key!r}; JSON keys are strings", field=path
                )
            check_json(item, f"{path}.{key}")
        return
    hint = " (pass an ISO-8601 string)" if isinstance(value, datetime) else " (pass ids and plain values)"
    raise TaskArgumentsError(
        f"{path} is a {type(value).__name__}, which cannot be stored as JSON{hint}", field=path
    )


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
    return value
