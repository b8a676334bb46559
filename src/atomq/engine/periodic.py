"""Periodic work done by the leading scheduler only: reconcilers, resumers, reapers.

Domain packages register functions with :func:`periodic`; the scheduler that holds the
leader lease runs each one every ``interval`` seconds in a thread of its own, so a slow
reconciler never delays the moving of due jobs. A function that raises is logged and tried
again at its next interval.

::

    @periodic("posts.reconcile", interval=10)
    def reconcile_posts(ctx: PeriodicContext) -> None:
        with ctx.database.session() as session: ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis

from atomq.core.logging import log_context
from atomq.core.settings import Settings
from atomq.engine import stats

if TYPE_CHECKING:
    from atomq.db.engine import Database

logger = logging.getLogger("atomq.periodic")

#: Longest pause of the runner thread between two looks at what is due.
RUNNER_TICK_SECONDS = 0.5


@dataclass
class PeriodicContext:
    """What a periodic function gets: settings, a Redis connection, the database on demand."""

    settings: Settings
    connection: redis.Redis

    @cached_property
    def database(self) -> Database:
        from atomq.db.engine import Database

        return Database.from_settings(self.settings)

    def close(self) -> None:
        if "database" in self.__dict__:
            self.database.dispose()


@dataclass(frozen=True)
class Periodic:
    """A registered periodic function."""

    name: str
    func: Callable[[PeriodicContext], object]
    interval: float


_registry: dict[str, Periodic] = {}

#: Modules registering atomq's own periodic functions. They are imported only where a
#: scheduler runs (they pull in SQLAlchemy and the domain models), never into workers.
PERIODIC_MODULES: tuple[str, ...] = ("atomq.features.posts.reconciler", "atomq.features.workflows.reconcile")


def load_periodic_modules() -> None:
    """Import :data:`PERIODIC_MODULES` so their functions register (idempotent)."""
    import importlib

    for module in PERIODIC_MODULES:
        importlib.import_module(module)


def periodic(
    name: str, *, interval: float
) -> Callable[[Callable[[PeriodicContext], object]], Callable[[PeriodicContext], object]]:
    """Register ``func`` to run every ``interval`` seconds on the leading scheduler."""
    if interval <= 0:
        raise ValueError("interval must be positive")

    def decorate(func: Callable[[PeriodicContext], object]) -> Callable[[PeriodicContext], object]:
        _registry[name] = Periodic(name, func, interval)
        return func

    return decorate


def registered() -> list[Periodic]:
    """Every registered periodic function, by name."""
    return [_registry[name] for name in sorted(_registry)]


def _with_builtins() -> list[Periodic]:
    load_periodic_modules()
    return registered()


@dataclass
class PeriodicRunner:
    """Runs registered periodic functions in a thread while ``is_leader()`` says so."""

    context: PeriodicContext
    is_leader: Callable[[], bool]
    jobs: list[Periodic] = field(default_factory=_with_builtins)
    _last: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.jobs:
            return
        self._thread = threading.Thread(target=self._loop, name="atomq-periodic", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.context.close()

    def run_due(self) -> None:
        """Run every job whose interval has elapsed (also used directly by tests and burst runs)."""
        now = time.monotonic()
        for job in self.jobs:
            if now - self._last.get(job.name, float("-inf")) < job.interval:
                continue
            self._last[job.name] = now
            started = time.perf_counter()
            try:
                with log_context(periodic=job.name):
                    job.func(self.context)
            except Exception:
                logger.exception("periodic %s failed; will try again in %.0f s", job.name, job.interval)
                stats.record_periodic_run(self.context.connection, job.name, ok=False)
            else:
                stats.record_periodic_run(self.context.connection, job.name, ok=True)
                logger.debug("periodic %s took %.1f ms", job.name, (time.perf_counter() - started) * 1000)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.is_leader():
                self.run_due()
            self._stop.wait(RUNNER_TICK_SECONDS)
