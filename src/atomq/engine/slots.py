"""What a worker process shares with its supervisor: the jobs it runs, and until when.

One slot per job the worker may run at once (``--concurrency``). A slot holds the id of the
job running in it and the monotonic time past which the supervisor kills the worker (the
job's time limit plus a grace period: a job deaf to its limit, stuck in C code or blocking
the event loop). When a worker dies the supervisor reads the slots to know which jobs were
*running* (only those count as attempted; jobs it had claimed but not started go back to
their queues untouched) and, after a kill for an overdue job, which one was to blame (the
others it ran are handed back without using up an attempt).

Memory comes from :mod:`multiprocessing` (shared after fork, no locks: each slot has one
writer, the worker, and the supervisor only reads).
"""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import dataclass
from typing import Any

#: Bytes per job id (job ids are at most 128 characters).
ID_BYTES = 160

_fork = multiprocessing.get_context("fork")


@dataclass
class Slots:
    """``size`` slots in shared memory (or plain memory, for a worker without a supervisor)."""

    size: int
    deadlines: Any  # c_double array: monotonic kill time per slot (0: free)
    ids: Any  # c_char array: ID_BYTES per slot
    started: Any  # c_long: jobs started since the process started (the supervisor resets it)

    @classmethod
    def create(cls, size: int) -> Slots:
        """Slots in memory a forked child shares with its parent."""
        return cls(
            size=size,
            deadlines=_fork.Array("d", size, lock=False),
            ids=_fork.Array("c", size * ID_BYTES, lock=False),
            started=_fork.Value("l", 0, lock=False),
        )

    def __post_init__(self) -> None:
        self._free = list(range(self.size - 1, -1, -1))
        self._lock = threading.Lock()

    # -- the worker's side ----------------------------------------------------------------

    def take(self, job_id: str, kill_at: float) -> int:
        """Put ``job_id`` in a free slot, to be killed at ``kill_at``; return the slot (-1 when
        none is free: the job then runs unwatched by the supervisor, which must not happen)."""
        with self._lock:
            if not self._free:
                return -1
            slot = self._free.pop()
        raw = job_id.encode()[: ID_BYTES - 1]
        start = slot * ID_BYTES
        self.ids[start : start + ID_BYTES] = raw + b"\0" * (ID_BYTES - len(raw))
        self.deadlines[slot] = kill_at
        self.started.value += 1
        return slot

    def release(self, slot: int) -> None:
        """The job in ``slot`` ended."""
        self.deadlines[slot] = 0.0
        start = slot * ID_BYTES
        self.ids[start] = b"\0"
        with self._lock:
            self._free.append(slot)

    def expire(self, slot: int) -> None:
        """Ask the supervisor to kill this process now: the job in ``slot`` will not stop (its
        outcome is recorded already; the process is the only way to get its thread back)."""
        self.deadlines[slot] = 1e-9

    def free(self) -> int:
        """Slots not in use."""
        with self._lock:
            return len(self._free)

    # -- the supervisor's side ------------------------------------------------------------

    def reset(self) -> None:
        """Before a (re)start: nothing runs."""
        for slot in range(self.size):
            self.deadlines[slot] = 0.0
            self.ids[slot * ID_BYTES] = b"\0"
        self.started.value = 0
        self.__post_init__()

    def running(self) -> list[tuple[str, float]]:
        """``(job id, kill time)`` of every job running now."""
        out = []
        for slot in range(self.size):
            deadline = self.deadlines[slot]
            if not deadline:
                continue
            start = slot * ID_BYTES
            job_id = bytes(self.ids[start : start + ID_BYTES]).split(b"\0", 1)[0].decode(errors="replace")
            if job_id:
                out.append((job_id, deadline))
        return out

    def overdue(self, now: float) -> list[str]:
        """Ids of the jobs still running past their kill time."""
        return [job_id for job_id, deadline in self.running() if deadline <= now]
