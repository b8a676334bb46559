"""The supervisor behind ``atomq worker``: N worker processes and a scheduler, kept alive.

* A child that dies is restarted after a backoff (0.5 s doubling to 30 s, reset once it has
  run a minute, or once a fast worker has started a job: a worker killed while it worked is
  not failing to start, and must come back at once), and the jobs it held are recovered at
  once rather than after RQ's timeouts.
* SIGTERM or Ctrl-C asks every child for a warm shutdown: running jobs finish, nothing new
  starts; a second signal asks for a cold one (RQ kills the running work-horses).
* A child that exits 0 (``--burst`` with empty queues, ``--max-jobs`` reached, a shutdown
  command) is not restarted; the supervisor exits when every worker has.
* A fast worker publishes the jobs it runs and their kill times in shared memory
  (:mod:`atomq.engine.slots`); a job still running past its kill time (stuck in C code, or an
  async job blocking the event loop) gets its worker killed: that job is retried or failed
  with the reason, the other jobs the worker ran are handed back without using an attempt.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import redis

from atomq.core import keys
from atomq.core.connection import connect
from atomq.core.settings import Settings
from atomq.engine.fast import FastWorker
from atomq.engine.leases import RENEW_SECONDS, Leases
from atomq.engine.process import die_with_parent
from atomq.engine.recovery import recover_worker
from atomq.engine.rq_worker import Worker
from atomq.engine.scheduler import Scheduler
from atomq.engine.scripts import decode
from atomq.engine.slots import Slots

logger = logging.getLogger("atomq.supervisor")

#: Exit code of a worker that found its lease lost (it is restarted, not taken as finished).
EXIT_LEASE_LOST = 75

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
    concurrency: int | None = None  # jobs per fast worker process (None: ATOMQ_WORKER_CONCURRENCY)


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
    shared: Slots | None = None  # what the fast worker shares: running jobs and their kill times
    kill_reason: str | None = None
    #: Jobs that outlived their kill time when the supervisor killed the worker.
    overdue: list[str] = field(default_factory=list)


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
        concurrency = options.concurrency or settings.worker_concurrency
        self.slots = [Slot("worker", name, shared=Slots.create(concurrency)) for name in names]
        if with_scheduler:
            self.slots.append(Slot("scheduler", f"{base}-scheduler"))
        self.stopping = False
        self._signals = 0
        self._connection: redis.Redis | None = None
        self._leases: Leases | None = None
        self._lease_tick_at = 0.0
        self._published: dict[str, frozenset[str]] = {}

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
            self._tend_leases()
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
            slot.shared.reset()
        slot.kill_reason = None
        slot.overdue = []
        if slot.role == "worker":
            # The lease exists before the worker does, so no renewal can take a worker that is
            # still starting for one declared dead (it also takes it itself when it registers).
            with contextlib.suppress(redis.RedisError):
                self._lease_scripts().join(slot.name)
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
            if slot.process is None or slot.shared is None or slot.kill_reason:
                continue
            overdue = slot.shared.overdue(now)
            if not overdue:
                continue
            slot.overdue = overdue
            slot.kill_reason = (
                "the job outlived its time limit without stopping (stuck in C code, or blocking the "
                "event loop?); its worker was killed"
            )
            logger.error("worker %s: job(s) %s: %s", slot.name, ", ".join(overdue), slot.kill_reason)
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid or 0, signal.SIGKILL)

    def _tend_leases(self) -> None:
        """Every RENEW_SECONDS: renew this host's workers' leases and publish what each runs;
        restart a worker whose lease was lost; recover any host's worker whose lease ran out
        (see :mod:`atomq.engine.leases`)."""
        now = time.monotonic()
        if now < self._lease_tick_at:
            return
        self._lease_tick_at = now + RENEW_SECONDS
        leases = self._lease_scripts()
        workers = [
            s for s in self.slots if s.role == "worker" and s.process is not None and s.process.is_alive()
        ]
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for slot in workers:
                    if slot.shared is None:
                        continue
                    running = frozenset(job_id for job_id, _ in slot.shared.running())
                    if self._published.get(slot.name) != running:
                        leases.publish_running(pipe, slot.name, running)
                        self._published[slot.name] = running
                if len(pipe):
                    pipe.execute()
            lost = set(leases.renew(s.name for s in workers))
            for slot in workers:
                if slot.name in lost and not slot.kill_reason and slot.process is not None:
                    slot.kill_reason = (
                        "its lease was lost (this host was cut off or frozen long enough to be taken "
                        "for dead, and its jobs were handed to other workers); started afresh"
                    )
                    logger.error("worker %s: %s", slot.name, slot.kill_reason)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid or 0, signal.SIGKILL)
            mine = {s.name for s in self.slots}
            for name in leases.take_expired():
                self._recover_vanished(name, ours=name in mine)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.debug("could not tend leases (%s)", exc)

    def _lease_scripts(self) -> Leases:
        if self._leases is None:
            self._leases = Leases(self.connection, self.settings.worker_lease_seconds)
        return self._leases

    def _recover_vanished(self, name: str, *, ours: bool) -> None:
        """A worker whose lease ran out: its host stopped, froze or was cut off. Its running jobs
        count as attempted; the others it held go back untouched."""
        if ours:
            return  # one of ours that outlived its lease: its restart recovers it
        running = {decode(job_id) for job_id in self.connection.smembers(keys.running_key(name))}
        report = recover_worker(
            self.connection,
            name,
            "its host stopped renewing its lease (stopped, frozen or cut off)",
            attempted=running,
        )
        logger.warning(
            "worker %s (another host) lost its lease: %d job(s) retried, %d failed, %d requeued untouched",
            name,
            len(report.retried),
            len(report.failed),
            report.requeued,
        )

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
            worked = slot.shared is not None and slot.shared.started.value > 0
            slot.failures = 1 if ran_for >= RESTART_RESET_AFTER or worked else slot.failures + 1
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY_FIRST * 2 ** (slot.failures - 1))
            slot.restart_at = time.monotonic() + delay
            if slot.failures == 1:
                logger.info("restarting %s %s in %.1f s", slot.role, slot.name, delay)
            else:
                # Say why it waits longer: the operator sees a child that cannot get to work.
                logger.info(
                    "restarting %s %s in %.1f s (died %d times in a row before running a job)",
                    slot.role,
                    slot.name,
                    delay,
                    slot.failures,
                )

    def _recover(self, slot: Slot, reason: str) -> None:
        attempted: set[str] | None = None
        suspects: set[str] = set()
        if slot.shared is not None and self.options.worker_class == "fast":
            # The fast worker tells us which jobs ran when it died. Killed for one deaf to its
            # time limit, only that one counts as attempted and the others it ran go back
            # untouched. Died otherwise (a crash in C, the OOM killer) while running one job,
            # that job counts; while running several, nobody knows which did it: they all go
            # back untouched, marked to run in processes of their own next time. Jobs it had
            # claimed but not started go back to their queues as if never claimed.
            running = {job_id for job_id, _ in slot.shared.running()}
            if slot.overdue:
                attempted = set(slot.overdue)
            elif len(running) <= 1:
                attempted = running
            else:
                attempted, suspects = set(), running
                logger.warning(
                    "worker %s died with %d jobs running; each goes back and runs alone next time: %s",
                    slot.name,
                    len(running),
                    ", ".join(sorted(running)[:20]),
                )
            spared = sorted(running - attempted - suspects)
            if spared:
                logger.warning(
                    "worker %s: %d job(s) it ran beside the one killed are handed back without using "
                    "an attempt: %s",
                    slot.name,
                    len(spared),
                    ", ".join(spared[:20]),
                )
        try:
            recover_worker(self.connection, slot.name, reason, attempted=attempted, suspects=suspects)
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


def _worker_main(settings: Settings, options: WorkerOptions, name: str, shared: Slots | None) -> None:
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

    worker = FastWorker(
        options.queues,
        connection=connection,
        settings=settings,
        name=name,
        default_timeout=options.default_timeout,
        concurrency=options.concurrency,
        slots=shared,
    )
    worker.work(burst=options.burst, max_jobs=options.max_jobs)
    if worker.lease_lost:
        raise SystemExit(EXIT_LEASE_LOST)  # not a clean stop: the supervisor starts it afresh


def _scheduler_main(
    settings: Settings, options: WorkerOptions, name: str, shared: Slots | None = None
) -> None:
    _child_setup()
    connection = connect(settings, check=False)
    scheduler = Scheduler(connection, name=name, queues=list(settings.queues), settings=settings)

    stop = _stops_once(scheduler)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.run()


def _stops_once(scheduler: Scheduler) -> Callable[[int, Any], None]:
    """The scheduler process's SIGTERM/SIGINT handler: stop, leaving at once the first time.

    Ctrl-C in a terminal reaches every process of the group, then the supervisor passes on a
    SIGTERM: a second ``SystemExit`` raised while the first unwinds would break off the
    clean-up it runs through (closing a database connection logged a traceback).
    """
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        scheduler.stop()
        if stopping:
            return
        stopping = True
        raise SystemExit(0)

    return stop
