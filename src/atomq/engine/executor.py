"""Where a worker's jobs run: ``async def`` tasks on one event loop, plain ones on threads.

One event loop per worker process runs every ``async def`` task, so task code may keep
clients (an ``httpx.AsyncClient``, a database pool) across jobs; a pool of threads, grown on
demand up to the worker's concurrency, runs plain functions. Threads take *run lists*: a
thread runs the jobs of its list one after the other, so a burst of quick jobs costs one
hand-over, not one per job, while jobs that wait each get a thread of their own (the worker
decides, see :mod:`atomq.engine.fast`).

Time limits hold for every job:

* an async job is cancelled at its limit (``asyncio.timeout``);
* a thread job gets its stop flag set (``raise_if_stopping()`` turns true) and a
  ``JobTimeoutException`` raised inside it at the next Python instruction. A job stuck in C
  code outlives both: its slot's kill time (:mod:`atomq.engine.slots`) then passes and the
  supervisor kills the process; the other jobs it ran are handed back without using an attempt;
* a forked job (``isolation="fork"``) is killed with its process group.

The per-job state (current job, log fields, stop flag) lives in context variables
(:mod:`atomq.engine.context`), one context per job.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq.timeouts import JobTimeoutException

from atomq.core.errors import JobStopped
from atomq.core.logging import current_log_fields, job_log_fields, log_context
from atomq.core.timeutil import utcnow
from atomq.engine import context, hooks
from atomq.engine.context import Running
from atomq.engine.isolation import kill_child, run_forked
from atomq.engine.slots import Slots

logger = logging.getLogger("atomq.worker")

#: Seconds past a job's time limit after which the supervisor kills a worker whose job did not
#: stop (stuck in C code, or an async job blocking the event loop).
HARD_KILL_GRACE = 5.0

#: How long an idle pool thread waits for work before it ends (threads are made on demand).
IDLE_THREAD_SECONDS = 60.0


@dataclass
class Completion:
    """How one run ended: ``ok`` with the return value, or ``failed``/``stopped`` with the
    exception and its traceback text."""

    running: Running
    outcome: str
    value: Any
    ended: Any
    duration: float
    cpu: float = 0.0
    #: The job's log fields as it ended (with what the task bound), for lines logged about it
    #: later by the worker's dispatcher.
    log_fields: dict[str, Any] = field(default_factory=dict)


class _TimeLimit(JobTimeoutException):
    """Raised inside a thread job that outlived its time limit (raised by type, no message)."""


class _StopNow(JobStopped):
    """Raised inside a thread job stopped on request or by a cold shutdown."""


class RunList:
    """Jobs a thread runs one after the other; the worker may take back those not started."""

    def __init__(self, items: list[Running], *, cpu: bool = False, learning: str | None = None) -> None:
        self.items = deque(items)
        self.lock = threading.Lock()
        self.current: Running | None = None
        self.closed = False
        #: The process's CPU lane (jobs that compute), rather than a waiting job's own thread.
        self.cpu = cpu
        #: The task whose first runs here tell what it is (its jobs wait here until they do).
        self.learning = learning

    def next(self) -> Running | None:
        """The next job to run, or None (and the list is closed: nothing more is added)."""
        with self.lock:
            self.current = self.items.popleft() if self.items else None
            if self.current is None:
                self.closed = True
            return self.current

    def append(self, running: Running) -> bool:
        """Queue one more job; False when the list has ended (make a new one)."""
        with self.lock:
            if self.closed:
                return False
            self.items.append(running)
            return True

    def take_waiting(self) -> list[Running]:
        """Remove and return the jobs not started yet."""
        with self.lock:
            waiting = list(self.items)
            self.items.clear()
            return waiting

    def __len__(self) -> int:
        return len(self.items)


class Executor:
    """Runs jobs and reports each end to ``on_done`` (from the thread that ran it)."""

    def __init__(
        self,
        *,
        connection: redis.Redis,
        slots: Slots,
        default_timeout: float,
        memory_limit_mb: int | None,
        on_done: Callable[[Completion], None],
        on_run_list_done: Callable[[RunList], None],
    ) -> None:
        self.connection = connection
        self.slots = slots
        self.default_timeout = default_timeout
        self.memory_limit_mb = memory_limit_mb
        self.on_done = on_done
        self.on_run_list_done = on_run_list_done
        self._work: queue.SimpleQueue[RunList | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()  # guards _idle/_threads and every job's phase changes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_ready = threading.Event()

    # -- threads --------------------------------------------------------------------------

    def submit(self, run_list: RunList) -> None:
        """Run ``run_list`` on a pool thread (a new one when none is idle)."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            thread = threading.Thread(target=self._thread_main, name="atomq-job", daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()
        self._work.put(run_list)

    def _thread_main(self) -> None:
        first = True
        while True:
            if not first:
                with self._lock:
                    self._idle += 1
            first = False
            try:
                run_list = self._work.get(timeout=IDLE_THREAD_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._work.empty():
                        self._idle -= 1
                        self._threads.remove(threading.current_thread())
                        return
                continue
            if run_list is None:
                return
            while (running := run_list.next()) is not None:
                # A fresh context per job: nothing one job sets (log fields, its current job)
                # leaks into the next one this thread runs.
                try:
                    completion = contextvars.Context().run(self._run_in_thread, running)
                except BaseException as exc:  # the worker's own bookkeeping failed: never lose the job
                    logger.exception("job %s: the worker failed around it", running.job.id)
                    completion = Completion(running, *_failure(running, exc, 0.0), utcnow(), 0.0)
                self.on_done(completion)
            self.on_run_list_done(run_list)

    def _run_in_thread(self, running: Running) -> Completion:
        job = running.job
        timeout = float(job.timeout or self.default_timeout)
        context.enter(running)
        with log_context(**job_log_fields(job, running.queue)):
            self._start(running, timeout)
            running.thread_id = threading.get_ident()
            clock, cpu = time.perf_counter(), time.thread_time()
            try:
                hooks.running(job, self.connection)
                with self._lock:
                    running.phase = "task"
                if job.spec.isolation == "fork" or job.suspect:
                    outcome, value = run_forked(running, job, timeout, self.memory_limit_mb)
                else:
                    outcome, value = "ok", job.perform()
            except BaseException as exc:  # a job's SystemExit must not end the worker
                outcome, value = _failure(running, exc, timeout)
            finally:
                self._leave_task(running)
            duration = time.perf_counter() - clock
            completion = Completion(
                running, outcome, value, utcnow(), duration, time.thread_time() - cpu, current_log_fields()
            )
            hooks.returned(job)
            if outcome == "ok":
                _log_ok(running, duration)
        self._end(running)
        return completion

    def _leave_task(self, running: Running) -> None:
        """The task returned: from now on nothing may be raised inside this thread for it."""
        while True:
            try:
                with self._lock:
                    running.phase = "done"
                    if running.thread_id is not None:
                        _clear_async_exception(running.thread_id)
                return
            except (_TimeLimit, _StopNow):  # raised for it just as it returned: it is over
                continue

    # -- the event loop -------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop (started on first use, in a thread of its own)."""
        if self._loop is None:
            self._loop_thread = threading.Thread(target=self._loop_main, name="atomq-loop", daemon=True)
            self._loop_thread.start()
            self._loop_ready.wait()
        assert self._loop is not None
        return self._loop

    def _loop_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._loop_ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit_async(self, running: Running) -> None:
        """Run ``running``'s ``async def`` task on the worker's event loop."""
        loop = self.loop
        loop.call_soon_threadsafe(self._start_task, running)

    def _start_task(self, running: Running) -> None:
        # A fresh context per job, as for threads: its own current job and log fields.
        context_ = contextvars.Context()
        task = self.loop.create_task(self._run_async(running), context=context_)
        running.task = task

    async def _run_async(self, running: Running) -> None:
        job = running.job
        timeout = float(job.timeout or self.default_timeout)
        context.enter(running)
        with log_context(**job_log_fields(job, running.queue)):
            self._start(running, timeout)
            clock = time.perf_counter()
            limit: asyncio.Timeout | None = None
            try:
                hooks.running(job, self.connection)
                running.phase = "task"
                async with asyncio.timeout(timeout) as limit:
                    value = await job.func(*job.args, **job.kwargs)
                outcome: str = "ok"
            except BaseException as exc:  # a job's SystemExit must not end the worker
                error: BaseException = exc
                if limit is not None and limit.expired():
                    error = JobTimeoutException(f"Task exceeded maximum timeout value ({timeout:g} seconds)")
                elif isinstance(exc, asyncio.CancelledError) and running.stop.is_set():
                    error = JobStopped(f"job {job.id} stopped ({running.stop_reason or 'on request'})")
                outcome, value = _failure(running, error, timeout)
            running.phase = "done"
            completion = Completion(
                running, outcome, value, utcnow(), time.perf_counter() - clock, 0.0, current_log_fields()
            )
            hooks.returned(job)
            if outcome == "ok":
                _log_ok(running, completion.duration)
        self._end(running)
        self.on_done(completion)

    # -- both -----------------------------------------------------------------------------

    def _start(self, running: Running, timeout: float) -> None:
        running.started = utcnow()
        running.started_mono = time.monotonic()
        running.deadline = running.started_mono + timeout
        running.slot = self.slots.take(running.job.id, running.deadline + HARD_KILL_GRACE)
        context.started(running)

    def _end(self, running: Running) -> None:
        context.ended(running)
        if running.slot >= 0:
            self.slots.release(running.slot)
            running.slot = -1

    def stop(self, running: Running, reason: str, *, timed_out: bool = False) -> None:
        """Make ``running`` stop: its stop flag is set, and an exception is raised inside it
        (a thread job), its task cancelled (an async job) or its process killed (forked)."""
        running.stop_reason = reason
        running.stop_at = running.stop_at or time.monotonic()
        running.stop.set()
        if running.child_pid is not None:
            if not timed_out:  # a forked job enforces its own time limit
                kill_child(running.child_pid)
            return
        if running.task is not None:
            if timed_out:
                return  # asyncio.timeout cancels it, and says why
            task = running.task
            self.loop.call_soon_threadsafe(task.cancel)
            return
        with self._lock:
            if running.phase == "task" and running.thread_id is not None:
                _raise_in_thread(running.thread_id, _TimeLimit if timed_out else _StopNow)

    def shutdown(self, wait: float = 5.0) -> None:
        """Stop the threads and the loop (after the jobs ended)."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(max(0.1, deadline - time.monotonic()))


def _log_ok(running: Running, duration: float) -> None:
    """The success line, written in the job's log context (its ids on the line)."""
    job = running.job
    logger.info("%s: Job OK: %s in %.3f s (%s)", running.queue, job.description, duration, job.id)


def _failure(running: Running, exc: BaseException, timeout: float) -> tuple[str, tuple[BaseException, str]]:
    """The outcome of a run that raised ``exc``."""
    error: BaseException = exc
    if isinstance(exc, _TimeLimit):
        error = JobTimeoutException(f"Task exceeded maximum timeout value ({timeout:g} seconds)")
    elif isinstance(exc, _StopNow):
        error = JobStopped(f"job {running.job.id} stopped ({running.stop_reason or 'on request'})")
    outcome = "stopped" if isinstance(error, JobStopped) else "failed"
    return outcome, (error, "".join(traceback.format_exception(error)))


# CPython's way to raise an exception in another thread: it lands at that thread's next
# bytecode (a thread blocked inside C code sees it only when it returns to Python). dramatiq
# enforces its time limits the same way.
def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


def _clear_async_exception(thread_id: int) -> None:
    # NULL clears an exception set for the thread but not raised yet.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
