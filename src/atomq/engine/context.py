"""The job a piece of code runs for, in context variables: right with N jobs in flight.

A worker runs many jobs at once: ``async def`` tasks on one event loop, plain ones on a pool
of threads. Per-job state therefore lives in :mod:`contextvars` (each asyncio task and each
job a thread runs gets its own context), never in thread-globals: the log fields of a job
(:mod:`atomq.core.logging`), the :class:`Running` record below, and RQ's own current job (so
``rq.get_current_job()`` keeps working inside tasks).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rq import job as rq_job

if TYPE_CHECKING:
    import asyncio

    from atomq.engine.jobs import AtomqJob


class StopFlag:
    """Whether a job must stop: ``set()`` / ``is_set()``, like :class:`threading.Event` but
    without its lock and condition (a worker makes one per job; nothing waits on it)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(eq=False)
class Running:
    """One job a worker has started: where it runs, until when, and whether it must stop."""

    job: AtomqJob
    queue: str
    #: The worker's slot shared with its supervisor (see :mod:`atomq.engine.slots`).
    slot: int = -1
    #: When the task started (UTC, for the records) and its monotonic twin (for limits).
    started: datetime | None = None
    started_mono: float = 0.0
    #: Monotonic time the task must end by (its timeout); the supervisor kills past it + grace.
    deadline: float = 0.0
    #: Set when the job must stop: a stop request, its time limit, a cold shutdown.
    stop: StopFlag = field(default_factory=StopFlag)
    stop_reason: str | None = None
    #: Where it runs: a thread's ident, or the asyncio task.
    thread_id: int | None = None
    task: asyncio.Task[Any] | None = None
    #: "waiting" (claimed, not started), "task" (its code runs), "done".
    phase: str = "waiting"
    #: A forked child running it (``isolation="fork"``).
    child_pid: int | None = None
    #: Monotonic time a stop was asked (0: never), and whether the worker gave up waiting for
    #: it and recorded its end itself (then whatever the run reports later is ignored).
    stop_at: float = 0.0
    abandoned: bool = False
    #: Monotonic time it began to wait for a free lane (claimed beyond what could start).
    queued_at: float = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since the task started (0 before it does)."""
        return time.monotonic() - self.started_mono if self.started_mono else 0.0


_running: contextvars.ContextVar[Running | None] = contextvars.ContextVar("atomq_running", default=None)


def current() -> Running | None:
    """The job the calling code runs for, or ``None`` outside a job."""
    return _running.get()


def enter(running: Running) -> None:
    """Make ``running`` the current job of the current context (and RQ's current job)."""
    _running.set(running)
    # RQ keeps its current job in a context variable too; setting it keeps
    # rq.get_current_job() right for async tasks, which RQ's Job.perform does not run.
    rq_job._current_job.set(running.job)


def stop_requested() -> bool:
    """Whether the current job was asked to stop (a stop request, its time limit, shutdown)."""
    running = _running.get()
    return running is not None and running.stop.is_set()


# The runs of this process by job id: a heartbeat thread (long jobs) that learns of a stop
# request finds the run to flag here. Written by the thread that starts and ends each run.
_by_id: dict[str, Running] = {}


def started(running: Running) -> None:
    """``running`` started in this process."""
    _by_id[running.job.id] = running


def ended(running: Running) -> None:
    """``running`` ended."""
    if _by_id.get(running.job.id) is running:
        del _by_id[running.job.id]


def running_job(job_id: str) -> Running | None:
    """This process's run of ``job_id``, if it runs here now."""
    return _by_id.get(job_id)
