"""SQLite writers queue in the kernel for a lock file, instead of polling SQLite's lock.

SQLite lets one writer at a time into a database file. A writer that finds the file locked
(``BEGIN IMMEDIATE`` while another connection, thread or process writes) is put to sleep by
SQLite's busy handler for 1, 2, 5, 10, 15, 20, 25... ms between tries, however soon the lock
comes free. Writes here take a fraction of a millisecond, so under a burst (a worker's
database threads and the other worker processes all recording publishes) those sleeps were
most of the wait: measured in a 400-post burst (``bench/bench_posts.py --burst``), each worker
process spent about 1 s sleeping in ``BEGIN IMMEDIATE``, p99 54 ms per begin, for 400 writes
of well under a millisecond each.

So every connection atomq opens on a SQLite file takes an exclusive ``flock`` on a lock file
beside it (``<database>-atomq-writer``) before ``BEGIN IMMEDIATE`` and lets go after its
``COMMIT`` or ``ROLLBACK``. A writer waiting for it sleeps in the kernel and is woken the
moment the one before it ends. SQLite's own lock still decides who writes: the file lock only
lines atomq's writers up, so a writer that does not take it (the ``sqlite3`` shell, another
program) is waited for through the busy timeout as before.

Never the database file itself: closing any descriptor of that file drops every POSIX lock
SQLite holds on it in this process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from typing import Any

logger = logging.getLogger("atomq.db")

#: Appended to the database file's path to name its lock file.
LOCK_SUFFIX = "-atomq-writer"

#: How many writer locks each thread holds now: a thread that already writes on one
#: connection and begins on another must not wait for itself; it falls back to SQLite's busy
#: handler, as without the lock.
_threads = threading.local()

_warned: set[str] = set()


def lock_path(database: str) -> str | None:
    """The lock file of ``database`` (a path as sqlite3.connect takes it); None for an
    in-memory database or a URI, which have no file to sit beside."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + LOCK_SUFFIX


def _held_by_this_thread() -> list[int]:
    count: list[int] | None = getattr(_threads, "count", None)
    if count is None:
        count = _threads.count = [0]
    return count


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's writer lock file from
    :meth:`hold_writer_lock` (just before ``BEGIN IMMEDIATE``) until its transaction ends.

    Pass it as ``factory`` to ``sqlite3.connect`` (:func:`atomq.db.engine.make_engine` does).
    """

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_path = lock_path(os.fspath(database)) if isinstance(database, str | os.PathLike) else None
        self._lock_fd = -1
        #: The holding thread's count while this connection holds the lock, else None.
        self._held: list[int] | None = None

    def hold_writer_lock(self) -> None:
        """Wait for, then take, the writer lock (a no-op without a lock file, or when this
        thread already holds one)."""
        held_here = _held_by_this_thread()
        if self._held or self._lock_path is None or held_here[0]:
            return
        if self._lock_fd < 0:
            try:
                # Read-only is enough to flock, and lets processes of other users that share
                # the database (an API and a worker) open a file the other created.
                self._lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if self._lock_path not in _warned:
                    _warned.add(self._lock_path)
                    logger.warning(
                        "cannot open %s (%s): SQLite writers wait by polling", self._lock_path, exc
                    )
                self._lock_path = None
                return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        self._held = held_here
        held_here[0] += 1

    def release_writer_lock(self) -> None:
        """Let the next writer in (after the transaction ended, or when it failed to begin)."""
        if not self._held:
            return
        # The count of the thread that took it (a pool may close a connection elsewhere).
        self._held[0] -= 1
        self._held = None
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
