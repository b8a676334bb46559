"""A ledger of side effects that lives outside Redis, so it survives whatever a scenario does
to Redis and to workers.

A job records its effect under a key unique to that job (``record(key)``); the scenario then
reads how many times each key was recorded. ``ran at least once`` is "every key present";
``effect at most once`` is "no key recorded twice". SQLite in WAL mode takes concurrent writers
from several worker processes; every write is its own committed transaction, so a worker killed
right after ``record`` returns has still recorded it.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: Workers find the ledger through this variable (the scenario sets it in their environment).
ENV = "ATOMQ_LEDGER"


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY, key TEXT NOT NULL, "
        "pid INTEGER NOT NULL, at REAL NOT NULL DEFAULT (julianday('now')))"
    )
    return connection


def record(key: str, path: str | None = None) -> None:
    """Record one effect under ``key`` (called from inside a job)."""
    target = path or os.environ[ENV]
    connection = _connect(target)
    try:
        connection.execute("INSERT INTO effects (key, pid) VALUES (?, ?)", (key, os.getpid()))
    finally:
        connection.close()


class Ledger:
    """The scenario's side of the ledger: create it, point workers at it, read it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _connect(path).close()

    def env(self) -> dict[str, str]:
        return {ENV: str(self.path)}

    def counts(self) -> Counter[str]:
        connection = _connect(self.path)
        try:
            return Counter(key for (key,) in connection.execute("SELECT key FROM effects"))
        finally:
            connection.close()

    def missing(self, expected: Iterable[str]) -> list[str]:
        """Keys expected but never recorded (jobs that never ran)."""
        seen = self.counts()
        return [key for key in expected if key not in seen]

    def duplicates(self) -> dict[str, int]:
        """Keys recorded more than once (effects that happened twice)."""
        return {key: n for key, n in self.counts().items() if n > 1}
