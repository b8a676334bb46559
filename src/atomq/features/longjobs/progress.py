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
* ``stop_requested_at``/``stop_deadline``: set by :func:`atomq.features.longjobs.stopping.stop_job`; the same
  thread notices them and :func:`job_stopping` turns true.

The guide's status dictionary is left exactly as it is; :func:`job_view` returns it with
``progress`` and ``liveness`` next to it for the API and the CLI.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.job import Job, get_current_job

from atomq.core import keys
from atomq.core.errors import InvalidInputError, JobStopped
from atomq.engine import context
from atomq.engine.jobs import status_dict

logger = logging.getLogger("atomq.features.longjobs.progress")

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


def live_key(job_id: str) -> str:
    """The hash holding a job's progress, heartbeat and stop request."""
    return f"{keys.PREFIX}:live:{job_id}"


@dataclass
class _JobState:
    """What the process running one job knows about it."""

    job_id: str
    last_beat: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    pending: dict[Any, Any] | None = None
    last_write: float = 0.0


class _Beater:
    """One thread per process: beats for every job the process runs, once each has run for
    :data:`HEARTBEAT_SECONDS`, so short jobs cost nothing (no thread start, no Redis write).
    A worker may run many jobs at once; their beats share one round trip."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.lock = threading.Lock()
        self.states: dict[str, _JobState] = {}
        self.thread = threading.Thread(target=self._loop, name="atomq-heartbeat-jobs", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS / 4)
            now = time.monotonic()
            with self.lock:
                due = [s for s in self.states.values() if now - s.last_beat >= HEARTBEAT_SECONDS]
            if not due:
                continue
            try:
                self.beat(due)
            except redis.RedisError as exc:
                logger.warning("heartbeat of %d job(s) failed (%s)", len(due), exc)

    def beat(self, states: list[_JobState]) -> None:
        """Write the heartbeats (and any coalesced progress); look for stop requests."""
        now = repr(time.time())
        with self.connection.pipeline(transaction=False) as pipe:
            for state in states:
                fields: dict[Any, Any] = {"heartbeat_at": now}
                with self.lock:
                    state.last_beat = time.monotonic()
                    if state.pending:
                        fields.update(state.pending)
                        state.pending = None
                        state.last_write = time.monotonic()
                key = live_key(state.job_id)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, LIVE_TTL_SECONDS)
                pipe.hget(key, "stop_requested_at")
            replies = pipe.execute()
        for state, stop in zip(states, replies[2::3], strict=True):
            if stop:
                state.stop.set()
                _stop_engine_run(state.job_id)


def _stop_engine_run(job_id: str) -> None:
    """Tell the engine's record of the run (if it is this process's) that a stop was asked."""
    running = context.running_job(job_id)
    if running is not None and not running.stop.is_set():
        running.stop_reason = "stop requested"
        running.stop.set()


_beaters: dict[int, _Beater] = {}
_beaters_lock = threading.Lock()


def job_started(job_id: str, connection: redis.Redis) -> None:
    """The worker calls this in the process that runs the job, right before the task runs."""
    pid = os.getpid()
    beater = _beaters.get(pid)
    if beater is None:
        # A forked process has a copy of its parent's beater but not its thread: make its own.
        with _beaters_lock:
            beater = _beaters.get(pid)
            if beater is None:
                beater = _beaters[pid] = _Beater(connection)
    with beater.lock:
        beater.states[job_id] = _JobState(job_id)


def job_finished(job_id: str) -> None:
    """The task returned or raised: stop beating for it."""
    beater = _beaters.get(os.getpid())
    if beater is not None:
        with beater.lock:
            beater.states.pop(job_id, None)


def _current() -> tuple[_Beater, _JobState] | None:
    beater = _beaters.get(os.getpid())
    if beater is None:
        return None
    running = context.current()
    job = running.job if running is not None else get_current_job()
    if job is None:
        return None
    state = beater.states.get(job.id)
    return (beater, state) if state is not None else None


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
    found = _current()
    if found is None:
        return
    beater, state = found
    fields: dict[Any, Any] = {
        "fraction": repr(float(fraction)),
        "message": (message or "")[:MAX_MESSAGE_CHARS],
        "progress_at": repr(time.time()),
    }
    now = time.monotonic()
    with beater.lock:
        if now - state.last_write < PROGRESS_MIN_INTERVAL and fraction < 1:
            state.pending = fields
            return
        state.pending = None
        state.last_write = now
    key = live_key(state.job_id)
    fields["heartbeat_at"] = fields["progress_at"]
    with beater.connection.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, LIVE_TTL_SECONDS)
        pipe.execute()


def job_stopping() -> bool:
    """True once someone asked to stop the running job: finish up and return soon.

    The job is killed when the grace period given with the stop request runs out. Outside a
    worker it is always false.
    """
    if context.stop_requested():  # a stop request, the job's time limit, a cold shutdown
        return True
    found = _current()
    return found is not None and found[1].stop.is_set()


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
    # Bytes that are not UTF-8 (written by hand) are shown escaped, never a 500.
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
