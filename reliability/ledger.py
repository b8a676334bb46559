"""A ledger of side effects that lives outside Redis, so it survives whatever a scenario does
to Redis and to workers.

A job records its effect under a key unique to that job (``record(key)``); the scenario then
reads how many times each key was recorded. ``ran at least once`` is "every key present";
``effect at most once`` is "no key recorded twice".

The ledger is a plain file, one line per record (JSON: key, pid, Unix time), and ``record``
is a single ``write`` to it, opened with ``O_APPEND``:

* writers in several processes: the kernel finds the end of the file and writes there as one
  step, under the file's lock, so lines never overlap or interleave;
* a process SIGKILLed right after ``record`` returns has still recorded: the line is in the
  kernel's page cache, which outlives the process (a machine crash could lose it; no scenario
  simulates one, and the SQLite ledger before this did not sync its commits either);
* nothing is held or kept in the recording process between records, so no writer can stall
  another (killed, frozen by SIGSTOP or forked mid-write), and a child forked from a process
  that was recording records as any process does. That is why it is not SQLite: a worker forks
  ``isolation="fork"`` jobs on one thread while another runs quick jobs that record, and the
  SQLite library keeps the state of a file's locks and its own mutexes per process, which the
  child inherits as they were at the fork. A child forked in the middle of its parent's write
  then waited 30 s for a lock no process held and failed ("database is locked"), or hung on a
  mutex no thread of its would release, or saw its committed row deleted with the WAL that the
  parent checkpointed and removed as it closed its connection.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

#: Workers find the ledger through this variable (the scenario sets it in their environment).
ENV = "ATOMQ_LEDGER"


class Entry(NamedTuple):
    """One record: its key, the process that recorded it and when (Unix time)."""

    key: str
    pid: int
    at: float


def record(key: str, path: str | None = None) -> None:
    """Record one effect under ``key`` (called from inside a job)."""
    line = (json.dumps([key, os.getpid(), time.time()]) + "\n").encode()
    fd = os.open(path or os.environ[ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    # One write or none: a second write for the rest could land after another process's line.
    # Short writes to a local file come only from a full disk or a file-size limit.
    if written != len(line):
        raise OSError(f"the ledger took {written} of the {len(line)} bytes recording {key!r}")


class Ledger:
    """The scenario's side of the ledger: create it, point workers at it, read it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def env(self) -> dict[str, str]:
        return {ENV: str(self.path)}

    def entries(self) -> list[Entry]:
        """Every record, in the order they were written."""
        data = self.path.read_bytes()
        # A last line without its newline is still being written: its record() has not
        # returned yet, so it is not a record yet.
        complete = data[: data.rfind(b"\n") + 1]
        return [Entry(*json.loads(line)) for line in complete.splitlines()]

    def counts(self) -> Counter[str]:
        return Counter(entry.key for entry in self.entries())

    def missing(self, expected: Iterable[str]) -> list[str]:
        """Keys expected but never recorded (jobs that never ran)."""
        seen = self.counts()
        return [key for key in expected if key not in seen]

    def duplicates(self) -> dict[str, int]:
        """Keys recorded more than once (effects that happened twice)."""
        return {key: n for key, n in self.counts().items() if n > 1}
