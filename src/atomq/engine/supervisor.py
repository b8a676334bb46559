"""The supervisor behind ``atomq worker``: N worker processes and a scheduler, kept alive.

* A child that dies is restarted after a backoff (0.5 s doubling to 30 s, reset once it has
  run a minute, or once a fast worker has started a job: a worker killed while it worked is
  not failing to start, and must come back at once), and the jobs it held are recovered at
  once rather than after RQ's timeouts.
* SIGTERM or Ctrl-C asks every child for a warm shutdown: running jobs finish, nothing new
  starts; a second signal asks for a cold one (RQ kills the running work-horses).
* A child that exits 0 (``--burst`` with empty queues, ``--max-jobs`` reached, a shutdown
  command) is not restarted; the supervisor exits when every worker has.
* A fast worker publishes the deadline of its running job in shared memory; a job still
  running past it (stuck in C code, deaf to SIGALRM) gets its worker killed, and the job is
  retried or failed with that reason.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import redis

from atomq.core.connection import connect
from atomq.core.settings import Settings
from atomq.engine.fast import RUNNING_ID_BYTES, FastWorker, Shared
from atomq.engine.process import die_with_parent
from atomq.engine.recovery import recover_worker
from atomq.engine.rq_worker import Worker
from atomq.engine.scheduler import Scheduler

logger = logging.getLogger("atomq.supervisor")

#: Backoff before restarting a child that died: first delay, cap, and how long a child must
#: run before its backoff resets.
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
RESTART_RESET_AFTER = 60.0

_fork = multiprocessing.get_context("fork")


@dataclass
class WorkerOptions:
    """How each worker child runs (the ``atomq worker`` flags)."""

    queues: list[str]
    name: str | None = None
    burst: bool = False
    max_jobs: int | None = None
    default_timeout: int | None = None
    log_level: str = "INFO"
    worker_class: str = "fast"  # "fast" (in-process, default) or "rq" (RQ's fork-per-job worker)


@dataclass
class Slot:
    """One supervised child: its role, stable name and restart bookkeeping."""

    role: str  # "worker" or "scheduler"
    name: str
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    done: bool = False
    exits: list[int | None] = field(default_factory=list)
    shared: Shared | None = None  # what the fast worker shares: running job id and deadline
    kill_reason: str | None = None


class Supervisor:
    """Start, watch, restart and stop the worker and scheduler processes."""

    def __init__(
        self,
        settings: Settings,
        options: WorkerOptions,
        *,
        count: int = 1,
        with_scheduler: bool = True,
    ) -> None:
        self.settings = settings
        self.options = options
        self.with_scheduler = with_scheduler
        base = options.name or f"{socket.gethostname()}.{os.getpid()}"
        names = (
            [options.name] if (count == 1 and options.name) else [f"{base}-{i}" for i in range(1, count + 1)]
        )
        self.slots = [Slot("worker", name, shared=_shared_memory()) for name in names]
        if with_scheduler:
            self.slots.append(Slot("scheduler", f"{base}-scheduler"))
        self.stopping = False
        self._signals = 0
        self._connection: redis.Redis | None = None

    @property
    def connection(self) -> redis.Redis:
        if self._connection is None:
            self._connection = connect(self.settings, check=False)
        return self._connection

    def run(self) -> int:
        """Supervise until stopped or, in burst mode, until the queues are drained. Returns 0."""
        connect(self.settings)  # fail fast, with one clear line, when Redis is not there
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.options.burst and self.with_scheduler:
            # Jobs already due run in this burst; later ones wait for a scheduler.
            Scheduler(self.connection, queues=self.options.queues, settings=self.settings).run(burst=True)
        for slot in self.slots:
            if slot.role == "worker" or not self.options.burst:
                self._start(slot)
            else:
                slot.done = True
        logger.info(
            "supervising %d worker(s) on %s%s",
            sum(1 for s in self.slots if s.role == "worker"),
            ", ".join(self.options.queues),
            " with a scheduler" if self.with_scheduler and not self.options.burst else "",
        )
        while True:
            self._wait()
            self._enforce_deadlines()
            self._reap_exited()
            workers_left = [s for s in self.slots if s.role == "worker" and not s.done]
            if not workers_left and not self.stopping:
                self._stop_children(signal.SIGTERM)
                self.stopping = True
            if self.stopping and not any(s.process is not None for s in self.slots):
                break
            if not self.stopping:
                self._restart_due()
        logger.info("supervisor exiting")
        return 0

    # -- children ---------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        target = _scheduler_main if slot.role == "scheduler" else _worker_main
        if slot.shared is not None:
            slot.shared.clear()
            slot.shared.jobs.value = 0
        slot.kill_reason = None
        process = _fork.Process(
            target=target, args=(self.settings, self.options, slot.name, slot.shared), name=slot.name
        )
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()
        slot.restart_at = None
        logger.info("started %s %s (pid %s)", slot.role, slot.name, process.pid)

    def _wait(self) -> None:
        sentinels = [s.process.sentinel for s in self.slots if s.process is not None]
        timeout = 0.5
        pending = [s.restart_at for s in self.slots if s.restart_at is not None]
        if pending:
            timeout = max(0.0, min(timeout, min(pending) - time.monotonic()))
        if sentinels:
            multiprocessing.connection.wait(sentinels, timeout=timeout)
        else:
            time.sleep(timeout)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            deadline = slot.shared.deadline.value if slot.shared is not None else 0.0
            if slot.process is None or not deadline or now < deadline or slot.kill_reason:
                continue
            slot.kill_reason = (
                "the job outlived its time limit without stopping (stuck in C code?); its worker was killed"
            )
            logger.error("worker %s: %s", slot.name, slot.kill_reason)
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid or 0, signal.SIGKILL)

    def _reap_exited(self) -> None:
        for slot in self.slots:
            process = slot.process
            if process is None or process.is_alive():
                continue
            process.join()
            code = process.exitcode
            slot.process = None
            slot.exits.append(code)
            ran_for = time.monotonic() - slot.started_at
            if code == 0 or self.stopping:
                if code != 0:
                    logger.warning(
                        "%s %s exited with %s during shutdown", slot.role, slot.name, _describe(code)
                    )
                slot.done = True
                if slot.role == "worker":
                    self._recover(slot, "it stopped")
                continue
            logger.error("%s %s died (%s) after %.1f s", slot.role, slot.name, _describe(code), ran_for)
            if slot.role == "worker":
                self._recover(slot, slot.kill_reason or f"worker process {_describe(code)}")
            # Backoff is for children that cannot start (a bad import, Redis refusing them); one
            # that got as far as running a job was killed at work (OOM killer, an operator, a
            # poison job, whose retries are bounded) and restarts after the first delay.
            worked = slot.shared is not None and slot.shared.jobs.value > 0
            slot.failures = 1 if ran_for >= RESTART_RESET_AFTER or worked else slot.failures + 1
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY_FIRST * 2 ** (slot.failures - 1))
            slot.restart_at = time.monotonic() + delay
            logger.info("restarting %s %s in %.1f s", slot.role, slot.name, delay)

    def _recover(self, slot: Slot, reason: str) -> None:
        running: str | None = None
        if slot.shared is not None and self.options.worker_class == "fast":
            # The fast worker tells us which job ran when it died: only that one counts as
            # attempted; the rest of its batch goes back to the queue as if never claimed.
            running = slot.shared.running.value.decode()
        try:
            recover_worker(self.connection, slot.name, reason, running=running)
        except redis.RedisError as exc:
            # The scheduler's reaper will finish the job once Redis is reachable again.
            logger.error("could not recover jobs of %s now (%s); the reaper will", slot.name, exc)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if (
                slot.process is None
                and not slot.done
                and slot.restart_at is not None
                and slot.restart_at <= now
            ):
                self._start(slot)

    def _stop_children(self, sig: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self.stopping = True
        if self._signals == 1:
            logger.info("%s received: warm shutdown (running jobs finish)", signal.Signals(signum).name)
            self._stop_children(signal.SIGTERM)
        else:
            logger.warning("second signal: cold shutdown (running jobs are killed)")
            # RQ ignores a repeat within a second of the first; make sure this one counts.
            time.sleep(1.1)
            self._stop_children(signal.SIGTERM)


def _describe(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _child_setup() -> None:
    # Children must not run the supervisor's handlers (inherited through fork).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    die_with_parent(signal.SIGTERM)


def _shared_memory() -> Shared:
    return Shared(
        deadline=_fork.Value("d", 0.0, lock=False),
        running=_fork.Array("c", RUNNING_ID_BYTES, lock=False),
        jobs=_fork.Value("l", 0, lock=False),
    )


def _worker_main(settings: Settings, options: WorkerOptions, name: str, shared: Shared | None) -> None:
    _child_setup()
    connection = connect(settings, check=False)
    if options.worker_class == "rq":
        Worker(
            options.queues,
            connection=connection,
            settings=settings,
            name=name,
            default_timeout=options.default_timeout,
        ).work(burst=options.burst, max_jobs=options.max_jobs, logging_level=options.log_level)
        return

    FastWorker(
        options.queues,
        connection=connection,
        settings=settings,
        name=name,
        default_timeout=options.default_timeout,
        shared=shared,
    ).work(burst=options.burst, max_jobs=options.max_jobs)


def _scheduler_main(
    settings: Settings, options: WorkerOptions, name: str, shared: Shared | None = None
) -> None:
    _child_setup()
    connection = connect(settings, check=False)
    scheduler = Scheduler(connection, name=name, queues=list(settings.queues), settings=settings)

    def stop(signum: int, frame: Any) -> None:
        scheduler.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.run()
