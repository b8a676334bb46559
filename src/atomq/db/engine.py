"""Database engines and sessions built from settings (never at import time)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from atomq.core.errors import ConfigurationError, DatabaseUnavailableError
from atomq.core.settings import Settings
from atomq.core.text import loads as json_loads
from atomq.db.writer_lock import GatedConnection


def database_url(settings: Settings) -> str:
    """``DATABASE_URL``, normalised to SQLAlchemy's drivers, or the SQLite file under ``data_dir``."""
    url = settings.database_url
    if not url:
        path = (settings.data_dir / "atomq.db").resolve()
        return f"sqlite:///{path}"
    # Platforms hand out postgres:// and postgresql://; atomq talks psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(settings: Settings, **options: Any) -> Engine:
    """An Engine for the configured database, with SQLite tuned for several processes."""
    url = database_url(settings)
    # JSON columns read back a lone surrogate (stored as an escape) as visible text.
    options.setdefault("json_deserializer", json_loads)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("DATABASE_URL is not a valid database URL", field="DATABASE_URL") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # GatedConnection: writers of every atomq process line up on a lock file rather than
        # polling SQLite's lock (see atomq.db.writer_lock); timeout is SQLite's busy timeout.
        engine = create_engine(url, connect_args={"timeout": 30, "factory": GatedConnection}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    options.setdefault("pool_pre_ping", True)
    options.setdefault("pool_size", 5)
    options.setdefault("max_overflow", 10)
    return create_engine(url, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by _sqlite_begin, not by the driver (SQLAlchemy's recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: Execution option of a connection whose transactions only read (see Database.reading): on
#: SQLite they begin DEFERRED and take no write lock.
READ_ONLY = "atomq_read_only"


def _sqlite_begin(connection: Any) -> None:
    # Jobs run side by side in one worker (threads, and the event loop's database steps): two
    # SQLite transactions that both read, then both write, deadlock, and SQLite fails one at
    # once ("database is locked") instead of waiting its busy timeout. So every transaction
    # that may write takes the write lock at its start (BEGIN IMMEDIATE) and writers queue
    # behind each other; WAL readers are not held up. A connection opened for reads only
    # (Database.reading) begins DEFERRED and never waits for a writer.
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
        return
    dbapi_connection = connection.connection.dbapi_connection
    gated = isinstance(dbapi_connection, GatedConnection)
    if gated:
        dbapi_connection.hold_writer_lock()
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if gated:
            dbapi_connection.release_writer_lock()
        raise


class Database:
    """An engine and its session factory: what services receive instead of a global session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(make_engine(settings))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it takes no write lock, so it never waits for
        a writer (WAL). Writing in it is a bug (SQLite may refuse it as "locked")."""
        connection = self.engine.connect().execution_options(**{READ_ONLY: True})
        with connection, Session(bind=connection, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()

    def ping(self) -> None:
        """``SELECT 1``, or :class:`DatabaseUnavailableError` naming the database (not the password)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseUnavailableError(f"cannot reach the database at {where}: {reason}") from None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


_process_lock = threading.Lock()
_process_databases: dict[str, Database] = {}


def process_database(settings: Settings) -> Database:
    """This process's :class:`Database` for the settings' URL: one engine per process and URL,
    shared by every job the process runs (workers run jobs back to back, or several at once)."""
    key = database_url(settings)
    with _process_lock:
        found = _process_databases.get(key)
        if found is None:
            found = _process_databases[key] = Database.from_settings(settings)
        return found


def _after_fork_in_child() -> None:
    # A forked process (a job with isolation="fork", RQ's work-horse) keeps the engines, whose
    # dialects are initialised (no first-connect queries: ~80 ms on PostgreSQL), but must never
    # use the connections its parent pooled.
    for database in _process_databases.values():
        database.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)
