"""Periodic work done by the leading scheduler only: reconcilers, resumers, reapers.

Features register functions with :func:`atomq.engine.plugins.periodic`; the scheduler that holds the
leader lease runs each one every ``interval`` seconds in a thread of its own, so a slow
reconciler never delays the moving of due jobs. A function that raises is logged and tried
again at its next interval.

::

    @periodic("posts.reconcile", interval=10)
    def reconcile_posts(ctx: Context) -> None:
        with ctx.database.session() as session: ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atomq.core.logging import log_context
from atomq.engine import plugins, stats
from atomq.engine.plugins import Context, Periodic, registry

logger = logging.getLogger("atomq.periodic")

#: Longest pause of the runner thread between two looks at what is due.
RUNNER_TICK_SECONDS = 0.5


def registered() -> list[Periodic]:
    """Every registered periodic duty, by name (the features' ``periodic`` modules imported first)."""
    plugins.load("periodic")
    return [registry.periodic[name] for name in sorted(registry.periodic)]


@dataclass
class PeriodicRunner:
    """Runs registered periodic functions in a thread while ``is_leader()`` says so."""

    context: Context
    is_leader: Callable[[], bool]
    jobs: list[Periodic] = field(default_factory=registered)
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
