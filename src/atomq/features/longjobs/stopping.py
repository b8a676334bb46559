"""Stop a running job cleanly: ask it first, kill it after a grace period.

RQ's ``stop-job`` command kills the work-horse at once, so a job cannot finish the item it
is on or leave things tidy. :func:`stop_job` instead

1. records the request in the job's live hash (``atomq:live:<id>``), where the job's
   heartbeat thread sees it within a second and :func:`atomq.job_stopping` turns true;
2. sends the worker running it an ``atomq-stop-job`` command carrying the grace period;
   the worker arms a timer and, if the same execution is still running when it fires, stops
   it the way RQ does (the job ends as ``stopped``).

A job that returns during the grace period ends as it chose (``finished``); one that calls
:func:`atomq.raise_if_stopping` ends as ``stopped``. A queued or scheduled job is simply
canceled.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from rq.command import send_command
from rq.job import JobStatus

from atomq.core.errors import InvalidInputError, JobStateError
from atomq.engine.hooks import JobHooks, Running, StopNow
from atomq.engine.jobs import TERMINAL_STATUSES
from atomq.features.longjobs.progress import LIVE_TTL_SECONDS, job_view, live_key

if TYPE_CHECKING:
    from atomq.engine.task_queue import TaskQueue

logger = logging.getLogger("atomq.features.longjobs.stopping")

#: The worker command that carries a grace period (RQ's own ``stop-job`` has none).
STOP_COMMAND = "atomq-stop-job"

#: Longest grace period accepted (a stop that waits longer is not a stop).
MAX_GRACE_SECONDS = 3600.0


def stop_job(tq: TaskQueue, job_id: str, *, grace: float | None = None, wait: float = 0.0) -> dict[str, Any]:
    """Stop ``job_id``: cancel it if it has not started, else ask it to stop and kill it after
    ``grace`` seconds (``ATOMQ_STOP_GRACE_SECONDS`` by default; 0 kills at once).

    With ``wait`` the call waits up to that many seconds for the job to end. Returns the job
    view (status dictionary, progress, liveness). A job that already ended raises
    :class:`JobStateError`.
    """
    if grace is None:
        grace = tq.settings.stop_grace_seconds
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise InvalidInputError(
            f"grace must be from 0 to {MAX_GRACE_SECONDS:.0f} seconds, got {grace!r}", field="grace"
        )
    job = tq.fetch_job(job_id)
    status = job.get_status(refresh=True)
    if status in TERMINAL_STATUSES:
        raise JobStateError(f"job {job_id} has already ended ({status.value}); nothing to stop")
    if status != JobStatus.STARTED:
        tq.cancel_job(job_id)
        return job_view(tq.connection, tq.fetch_job(job_id))
    now = time.time()
    key = live_key(job_id)
    with tq.connection.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={"stop_requested_at": repr(now), "stop_deadline": repr(now + grace)})
        pipe.expire(key, LIVE_TTL_SECONDS)
        pipe.execute()
    if job.worker_name:
        if grace > 0:
            send_command(tq.connection, job.worker_name, STOP_COMMAND, job_id=job_id, grace=grace)
        else:
            send_command(tq.connection, job.worker_name, "stop-job", job_id=job_id)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if job.get_status(refresh=True) in TERMINAL_STATUSES:
            break
        time.sleep(0.05)
    return job_view(tq.connection, tq.fetch_job(job_id))


# -- worker side ---------------------------------------------------------------------------


def handle_worker_command(worker: Any, payload: dict[str, Any], running: Running, stop_now: StopNow) -> bool:
    """Handle ``atomq-stop-job`` in a worker's command thread; False for other commands.

    ``running(job_id)`` gives the job's id and a token for this run of it when it runs in the
    worker (RQ's worker: its execution); ``stop_now(job_id)`` stops it at once.
    """
    if payload.get("command") != STOP_COMMAND:
        return False
    job_id = payload.get("job_id")
    try:
        grace = min(max(float(payload.get("grace", 0)), 0.0), MAX_GRACE_SECONDS)
    except (TypeError, ValueError):
        grace = 0.0
    if not job_id:
        return True
    current, token = running(job_id)
    if current != job_id:
        # Claimed but not running yet (a worker that claims in batches): it never starts.
        stop_now(job_id)
        return True
    logger.info("worker %s: job %s asked to stop; killing it in %.1f s", worker.name, job_id, grace)
    finish = stop_now

    def kill_if_still_running() -> None:
        now_running, now_token = running(job_id)
        if now_running == job_id and now_token == token:
            finish(job_id)

    timer = threading.Timer(grace, kill_if_still_running)
    timer.daemon = True
    timer.start()
    return True


class StopHooks(JobHooks):
    """Workers hand ``atomq-stop-job`` commands to :func:`handle_worker_command`."""

    def command(self, worker: Any, payload: dict[str, Any], running: Running, stop_now: StopNow) -> bool:
        return handle_worker_command(worker, payload, running, stop_now)
