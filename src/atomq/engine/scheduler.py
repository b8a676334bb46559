"""The scheduler: moves scheduled jobs onto their queues when they fall due.

Where RQ's scheduler polls once a second, reads due jobs and removes them in separate steps
(so two schedulers can enqueue a job twice) and truncates due times to whole seconds, this one:

* moves due jobs with one Lua script per queue, by Redis's clock, so any number of schedulers
  can run at once and each job is still enqueued exactly once, never before it is due;
* sleeps until the next due time, and is woken early when a sooner job is scheduled;
* elects a leader with an expiring lease so normally one scheduler does the work and the
  others stand by (the script keeps things exact even when two believe they lead);
* as leader, reaps workers whose heartbeat expired and recovers their jobs, and runs the
  registered periodic functions (reconcilers; see :mod:`atomq.engine.periodic`) in a thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis
from rq.utils import utcformat

from atomq.core import keys
from atomq.core.connection import blocking_timeout
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.engine import groups  # noqa: F401 - registers the engine's own periodic sweep
from atomq.engine.periodic import PeriodicRunner
from atomq.engine.plugins import Context
from atomq.engine.queues import WAKE_TOKENS_KEPT
from atomq.engine.recovery import find_dead_workers, recover_worker
from atomq.engine.scripts import Scripts, decode

logger = logging.getLogger("atomq.scheduler")

#: How long the leader's lease lasts without renewal (ms). A paused or dead leader is
#: replaced after at most this long.
LEASE_MS = 15_000

#: Longest sleep between two looks at the schedule; also how often the lease is renewed.
MAX_SLEEP_SECONDS = 5.0

#: Due jobs moved per queue in one script call (keeps each call short).
MOVE_BATCH = 500

#: Seconds between two sweeps for dead workers.
REAP_INTERVAL_SECONDS = 5.0

#: Within this many seconds of the next due time the scheduler stops blocking on Redis and
#: sleeps locally, which is more precise.
FINE_SLEEP_SECONDS = 0.05


@dataclass
class TickResult:
    """What one pass over the scheduled registries did."""

    moved: int
    next_due: float | None


class Scheduler:
    """Moves due jobs from RQ's scheduled registries onto their queues."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        name: str | None = None,
        queues: list[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.connection = connection
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.extra_queues = list(queues or [])
        self.scripts = Scripts(connection)
        self.is_leader = False
        self.runner = (
            PeriodicRunner(Context(settings, connection), lambda: self.is_leader) if settings else None
        )
        self._stop = threading.Event()
        self._last_reap = 0.0
        self._leased_at = 0.0

    # -- one pass ---------------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Every queue RQ knows of (``rq:queues``) plus the configured ones."""
        prefix = keys.QUEUE_KEY_PREFIX
        known = {decode(key)[len(prefix) :] for key in self.connection.smembers(keys.QUEUES_SET)}
        return sorted(known | set(self.extra_queues))

    def tick(self) -> TickResult:
        """Move every due job now; return how many moved and when the next one is due."""
        names = self.queue_names()
        total = 0
        next_due: float | None = None
        while names:
            stamp = utcformat(utcnow())
            with self.connection.pipeline(transaction=False) as pipe:
                for name in names:
                    self.scripts.move_due(
                        keys=[keys.scheduled_key(name), keys.queue_key(name), keys.wake_key(name)],
                        args=[keys.JOB_KEY_PREFIX, MOVE_BATCH, stamp, WAKE_TOKENS_KEPT],
                        client=pipe,
                    )
                replies = pipe.execute()
            again = []
            next_due = None
            for name, (moved_raw, due, _now) in zip(names, replies, strict=True):
                moved = int(moved_raw)
                total += moved
                if moved >= MOVE_BATCH:
                    again.append(name)
                if due:
                    score = float(decode(due))
                    next_due = score if next_due is None else min(next_due, score)
                if moved:
                    logger.debug("moved %d due job(s) onto %s", moved, name)
            names = again
        return TickResult(total, next_due)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Run until :meth:`stop` (or one pass with ``burst``)."""
        self._register()
        if burst:
            self._burst()
            return
        logger.info("scheduler %s started", self.name)
        if self.runner is not None:
            self.runner.start()
        try:
            while not self._stop.is_set():
                try:
                    # The wait is a BLPOP too: a Redis that dies while we wait must not end
                    # the scheduler (it would leave the jobs due meanwhile unmoved).
                    self._sleep(self._step())
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    logger.error("scheduler %s: Redis unreachable (%s); retrying in 2 s", self.name, exc)
                    self.is_leader = False
                    self._stop.wait(2)
        finally:
            if self.runner is not None:
                self.runner.stop()
            self._deregister()
            logger.info("scheduler %s stopped", self.name)

    def _burst(self) -> None:
        """One pass: move what is due (whoever leads: the move is atomic) and, as leader,
        run the periodic functions once."""
        try:
            self.is_leader = bool(
                self.scripts.lease(keys=[keys.SCHEDULER_LEADER], args=[self.name, LEASE_MS])
            )
            self.tick()
            if self.is_leader:
                self.reap()
                if self.runner is not None:
                    self.runner.run_due()
        finally:
            if self.runner is not None:
                self.runner.context.close()
            self._deregister()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()

    def _step(self) -> float:
        """Renew or take the lease, do the leader's work, return seconds until the next look."""
        was_leader = self.is_leader
        now = time.monotonic()
        # Renewing costs a round trip: do it a few times per lease, not on every wake-up.
        if not self.is_leader or now - self._leased_at >= LEASE_MS / 3000:
            self.is_leader = bool(
                self.scripts.lease(keys=[keys.SCHEDULER_LEADER], args=[self.name, LEASE_MS])
            )
            self._leased_at = now
        if self.is_leader and not was_leader:
            logger.info("scheduler %s is now the leader", self.name)
        elif was_leader and not self.is_leader:
            logger.warning("scheduler %s lost the lead to another scheduler", self.name)
        if not self.is_leader:
            return MAX_SLEEP_SECONDS
        result = self.tick()
        if result.moved:
            logger.info("enqueued %d due job(s)", result.moved)
        now = time.time()
        if now - self._last_reap >= REAP_INTERVAL_SECONDS:
            self._last_reap = now
            self.reap()
        if result.next_due is None:
            return MAX_SLEEP_SECONDS
        return max(0.0, min(MAX_SLEEP_SECONDS, result.next_due - time.time()))

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a job is scheduled (wake token) or stop is asked."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        coarse = seconds - FINE_SLEEP_SECONDS
        if coarse > 0.001 and self.is_leader:
            # Redis accepts fractional timeouts; 0 would block forever, hence the guard above.
            token = self.connection.blpop(
                [keys.SCHEDULER_WAKE], timeout=blocking_timeout(self.connection, coarse)
            )
            if token is not None:
                return
        elif coarse > 0.001:
            self._stop.wait(coarse)
            return
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._stop.wait(remaining)

    def reap(self) -> None:
        """Recover the jobs of workers whose registration expired (their host or process vanished)."""
        for name in find_dead_workers(self.connection):
            recover_worker(self.connection, name, "its heartbeat expired")

    # -- registration -----------------------------------------------------------------------

    def _register(self) -> None:
        info = f"{socket.gethostname()} {os.getpid()} {utcformat(utcnow())}"
        try:
            self.connection.hset(keys.SCHEDULERS, self.name, info)
        except redis.RedisError as exc:
            logger.warning("scheduler %s could not register (%s)", self.name, exc)

    def _deregister(self) -> None:
        try:
            self.connection.hdel(keys.SCHEDULERS, self.name)
            self.scripts.release(keys=[keys.SCHEDULER_LEADER], args=[self.name])
        except redis.RedisError as exc:
            logger.warning("scheduler %s could not deregister (%s)", self.name, exc)


def leader(connection: redis.Redis) -> str | None:
    """Name of the scheduler holding the lease, if any."""
    value = connection.get(keys.SCHEDULER_LEADER)
    return decode(value) if value is not None else None
