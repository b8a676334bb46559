"""Helpers of the worker-side scenarios: worker environments, a worker killer, and the checks
that nothing is left queued, started or claimed once the work is done."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq.job import Job
from rq.results import Result

from atomq.core import keys
from atomq.engine.scripts import decode
from reliability.ledger import Ledger
from testkit.support import worker_pids

#: What the worker processes of these scenarios import.
TASK_MODULES = "reliability.tasks_workers"


def worker_env(env: dict[str, str], ledger: Ledger, **extra: str) -> dict[str, str]:
    """``env`` (the suite's worker environment) with this part's tasks and the ledger."""
    return {**env, "ATOMQ_TASK_MODULES": TASK_MODULES, **ledger.env(), **extra}


@dataclass
class Killer:
    """SIGKILLs a random live worker of a supervisor every ``interval`` seconds, in a thread."""

    connection: redis.Redis
    supervisor_pid: int
    interval: float = 2.0
    seed: int = 7
    kills: list[tuple[float, int]] = field(default_factory=list)
    skipped: int = 0  # ticks when no worker was alive (all being restarted)
    started_at: float = 0.0
    stopped_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Killer:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="worker-killer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.stopped_at = time.monotonic()

    @property
    def expected_ticks(self) -> int:
        """Ticks its lifetime had room for."""
        return int((self.stopped_at - self.started_at) / self.interval)

    @property
    def ticks(self) -> int:
        """Kill attempts so far (kills plus ticks that found no live worker)."""
        return len(self.kills) + self.skipped

    def _loop(self) -> None:
        rng = random.Random(self.seed)  # noqa: S311 - chaos, not cryptography
        next_at = time.monotonic() + self.interval
        # A fixed cadence: the time spent finding a victim does not stretch the interval.
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            pids = worker_pids(self.connection, self.supervisor_pid)
            if not pids:
                self.skipped += 1
                continue
            victim = rng.choice(sorted(pids))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                self.kills.append((time.monotonic(), victim))


def leftovers(connection: redis.Redis, queues: list[str]) -> dict[str, int]:
    """Everything that still holds a job: queue lists, started and scheduled registries, the
    claimed lists of workers (live or dead). All zeros once the work is done."""
    found: Counter[str] = Counter()
    for queue in queues:
        found["queued"] += int(connection.llen(keys.queue_key(queue)))
        found["started"] += int(connection.zcard(f"rq:wip:{queue}"))
        found["scheduled"] += int(connection.zcard(keys.scheduled_key(queue)))
    for claimed in connection.scan_iter(match=keys.claimed_key("*"), count=1000):
        found["claimed"] += int(connection.llen(claimed))
    return {name: found[name] for name in ("queued", "started", "scheduled", "claimed")}


def statuses(connection: redis.Redis, job_ids: list[str]) -> Counter[str]:
    """How many of ``job_ids`` are in each status (``missing`` for a job hash that is gone)."""
    found: Counter[str] = Counter()
    for start in range(0, len(job_ids), 1000):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids[start : start + 1000]:
                pipe.hget(keys.job_key(job_id), "status")
            found.update(decode(status) if status else "missing" for status in pipe.execute())
    return found


def read_pids(path: Path) -> list[int]:
    """Pids a job wrote to ``path``, one a line (none when the file does not exist)."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive_pids(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies excluded)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def kill_if_alive(pids: list[int]) -> list[int]:
    """SIGKILL each of ``pids`` still running (a test cleaning up after a hostile job); returns
    the ones that were."""
    alive = alive_pids(pids)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def record_times(ledger: Ledger, key: str) -> list[float]:
    """Unix times at which ``key`` was recorded, oldest first (the ledger keeps them)."""
    return sorted(entry.at for entry in ledger.entries() if entry.key == key)


def attempt_seconds(job: Job) -> list[float]:
    """How long each failed attempt of ``job`` ran, from the worker's start of the attempt to
    the moment it recorded the failure (RQ keeps both in the job's results)."""
    out = []
    for result in reversed(Result.all(job)):  # newest first in RQ
        if result.execution_started_at and result.execution_ended_at:
            out.append((result.execution_ended_at - result.execution_started_at).total_seconds())
    return out
