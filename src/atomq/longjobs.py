"""Long-running jobs: progress, liveness and a clean stop.

Inside a task::

    from atomq import report_progress, job_stopping

    @task("reindex", timeout=3600)
    def reindex(shard: str) -> int:
        for n, item in enumerate(items, 1):
            if job_stopping():          # a stop was asked: leave at a clean point
                return n
            process(item)
            report_progress(n / len(items), f"{n} of {len(items)} items")

Each running job has a small Redis hash, ``atomq:live:<job_id>``, next to RQ's job hash:

* ``fraction``/``message``/``progress_at``: what :func:`report_progress` last said;
* ``heartbeat_at``: written every :data:`HEARTBEAT_SECONDS` by a thread in the process that
  runs the job, so a job whose process died or froze is seen as stalled within seconds
  (RQ's own job heartbeat comes from the parent worker every 10 s and says nothing about
  the job's process);
* ``stop_requested_at``/``stop_deadline``: set by :func:`atomq.stopping.stop_job`; the same
  thread notices them and :func:`job_stopping` turns true.

The guide's status dictionary is left exactly as it is; :func:`job_view` returns it with
``progress`` and ``liveness`` next to it for the API and the CLI.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.job import Job, get_current_job

from atomq.engine import keys
from atomq.errors import InvalidInputError
from atomq.jobs import status_dict

logger = logging.getLogger("atomq.longjobs")

#: Seconds between two heartbeats of a running job (and two looks for a stop request).
HEARTBEAT_SECONDS = 1.0

#: A started job whose last heartbeat is older than this is reported as stalled.
STALLED_AFTER_SECONDS = 5.0

#: Progress written more often than this is coalesced: the latest value is written by the
#: next heartbeat, so a loop may call report_progress for every item at no cost.
PROGRESS_MIN_INTERVAL = 0.25

#: Seconds the live hash outlives its last write (it is for looking at recent jobs).
LIVE_TTL_SECONDS = 86_400

#: Longest progress message kept.
MAX_MESSAGE_CHARS = 500


class JobStopped(Exception):
    """Raised by :func:`raise_if_stopping`; the worker records the job as ``stopped``."""


def live_key(job_id: str) -> str:
    """The hash holding a job's progress, heartbeat and stop request."""
    return f"{keys.PREFIX}:live:{job_id}"


@dataclass
class _Runtime:
    """What the process running one job knows about it (one per running job)."""

    job_id: str
    connection: redis.Redis
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[Any, Any] | None = None
    last_write: float = 0.0

    def beat(self) -> None:
        """Write the heartbeat (and any coalesced progress); look for a stop request."""
        fields: dict[Any, Any] = {"heartbeat_at": repr(time.time())}
        with self.lock:
            if self.pending:
                fields.update(self.pending)
                self.pending = None
                self.last_write = time.monotonic()
        key = live_key(self.job_id)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, LIVE_TTL_SECONDS)
            pipe.hget(key, "stop_requested_at")
            _, _, stop = pipe.execute()
        if stop:
            self.stop.set()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except redis.RedisError as exc:
                logger.warning("job %s: heartbeat failed (%s)", self.job_id, exc)


_current: _Runtime | None = None


def start_job_runtime(job: Job, connection: redis.Redis) -> None:
    """Start the heartbeat thread for ``job`` in the process that is about to run it.

    Called by the worker in the work-horse, right before the task runs. The thread is a
    daemon: it ends with the process, and stops beating once the job returns
    (:func:`end_job_runtime`).
    """
    global _current  # noqa: PLW0603 - one running job per process; the job's own code reads it
    runtime = _Runtime(job.id, connection)
    _current = runtime
    thread = threading.Thread(target=runtime.run, name=f"atomq-heartbeat-{job.id}", daemon=True)
    thread.start()


def end_job_runtime() -> None:
    """Stop the heartbeat of the job this process ran."""
    global _current
    runtime, _current = _current, None
    if runtime is not None:
        runtime.done.set()


def _runtime() -> _Runtime | None:
    runtime = _current
    if runtime is None:
        return None
    job = get_current_job()
    if job is not None and job.id != runtime.job_id:
        return None
    return runtime


def report_progress(fraction: float, message: str | None = None) -> None:
    """Record how far the running job has got: ``fraction`` from 0 to 1, and a short message.

    Outside a worker (a job function called directly, as the guide's "Job Testing" does) it
    does nothing. Calls more frequent than every :data:`PROGRESS_MIN_INTERVAL` seconds are
    coalesced, so calling it for every item of a long loop is cheap.
    """
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0 <= fraction <= 1
    ):
        raise InvalidInputError(f"progress must be a number from 0 to 1, got {fraction!r}", field="fraction")
    runtime = _runtime()
    if runtime is None:
        return
    fields: dict[Any, Any] = {
        "fraction": repr(float(fraction)),
        "message": (message or "")[:MAX_MESSAGE_CHARS],
        "progress_at": repr(time.time()),
    }
    now = time.monotonic()
    with runtime.lock:
        if now - runtime.last_write < PROGRESS_MIN_INTERVAL and fraction < 1:
            runtime.pending = fields
            return
        runtime.pending = None
        runtime.last_write = now
    key = live_key(runtime.job_id)
    fields["heartbeat_at"] = fields["progress_at"]
    with runtime.connection.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, LIVE_TTL_SECONDS)
        pipe.execute()


def job_stopping() -> bool:
    """True once someone asked to stop the running job: finish up and return soon.

    The job is killed when the grace period given with the stop request runs out. Outside a
    worker it is always false.
    """
    runtime = _runtime()
    return runtime is not None and runtime.stop.is_set()


def raise_if_stopping() -> None:
    """Raise :class:`JobStopped` when a stop was asked; the job then ends as ``stopped``."""
    if job_stopping():
        raise JobStopped("stopped on request")


# -- reading -------------------------------------------------------------------------------


def _float(raw: dict[str, str], name: str) -> float | None:
    value = raw.get(name)
    try:
        return float(value) if value else None
    except ValueError:
        return None


def live_state(connection: redis.Redis, job_id: str) -> dict[str, str]:
    """The raw live hash of ``job_id`` (empty when the job never reported anything)."""
    raw = connection.hgetall(live_key(job_id))
    return {_text(k): _text(v) for k, v in raw.items()}


def progress_and_liveness(
    status: dict[str, Any], raw: dict[str, str], job: Job | None = None, now: float | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``progress`` (or None when never reported) and ``liveness`` for a job's status dict."""
    now = time.time() if now is None else now
    fraction = _float(raw, "fraction")
    progress: dict[str, Any] | None = None
    if fraction is not None:
        progress = {
            "fraction": fraction,
            "percent": round(fraction * 100, 1),
            "message": raw.get("message") or None,
            "updated_at": _iso_ts(_float(raw, "progress_at")),
        }
    beat = _float(raw, "heartbeat_at")
    if beat is None and job is not None and job.last_heartbeat is not None:
        # No beat from the job's own process yet: fall back on the worker's (every 10 s).
        beat = job.last_heartbeat.timestamp() if job.last_heartbeat.tzinfo else None
    running = status["status"] == "started"
    age = None if beat is None else max(0.0, now - beat)
    started_age = None
    if status.get("started_at"):
        from datetime import datetime

        started_age = now - datetime.fromisoformat(status["started_at"]).timestamp()
    if not running:
        state = "ended" if status["status"] in ("finished", "failed", "stopped", "canceled") else "waiting"
    elif age is not None and age <= STALLED_AFTER_SECONDS:
        state = "alive"
    elif age is None and started_age is not None and started_age <= STALLED_AFTER_SECONDS:
        state = "alive"  # just started; the first beat is on its way
    else:
        state = "stalled"
    stop_at = _float(raw, "stop_requested_at")
    liveness = {
        "state": state,
        "heartbeat_at": _iso_ts(beat),
        "heartbeat_age": None if age is None else round(age, 3),
        "stop_requested_at": _iso_ts(stop_at),
        "stop_deadline": _iso_ts(_float(raw, "stop_deadline")),
        "worker": job.worker_name if job is not None else None,
    }
    return progress, liveness


def job_view(connection: redis.Redis, job: Job) -> dict[str, Any]:
    """The guide's status dictionary plus ``progress`` and ``liveness`` (API and CLI views)."""
    status = status_dict(job)
    progress, liveness = progress_and_liveness(status, live_state(connection, job.id), job)
    return {"job": status, "progress": progress, "liveness": liveness}


def _iso_ts(value: float | None) -> str | None:
    if value is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(value, UTC).isoformat()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
