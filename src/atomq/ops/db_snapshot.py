"""Database snapshots for backups: SQLite's online backup API, PostgreSQL's ``pg_dump``.

Both copies are consistent while the application keeps writing: SQLite's backup API copies a
transaction-consistent image; ``pg_dump`` reads one MVCC snapshot. For PostgreSQL the row
counts in the manifest are read inside that very snapshot (exported with
``pg_export_snapshot()`` and handed to ``pg_dump --snapshot``), so they match the dump exactly.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from atomq.core.errors import ConfigurationError, ConflictError, DatabaseUnavailableError

#: Seconds ``pg_dump``/``pg_restore`` may take.
PG_TIMEOUT_SECONDS = 3600

#: Files a backup folder holds for each dialect.
SQLITE_FILE = "database.sqlite3"
POSTGRES_FILE = "database.pgdump"


def dialect_of(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except Exception:
        raise ConfigurationError("DATABASE_URL is not a valid database URL", field="DATABASE_URL") from None


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# -- SQLite --------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigurationError("an in-memory SQLite database cannot be backed up", field="DATABASE_URL")
    return Path(database)


def _sqlite_counts(connection: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    # Names come from sqlite_master itself, quoted: nothing from outside reaches this SQL.
    return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}  # noqa: S608


def sqlite_backup(url: str, destination: Path) -> dict[str, Any]:
    """Copy the SQLite database with the online backup API; return its row counts."""
    source_path = _sqlite_path(url)
    if not source_path.exists():
        raise DatabaseUnavailableError(f"the SQLite database {source_path} does not exist")
    with (
        closing(sqlite3.connect(source_path, timeout=30)) as source,
        closing(sqlite3.connect(destination)) as copy,
    ):
        source.backup(copy)
        tables = _sqlite_counts(copy)
    return {"file": destination.name, "tables": tables}


def sqlite_restore(backup: Path, url: str, *, replace: bool) -> dict[str, int]:
    """Write the backup into the SQLite database at ``url`` (which must be empty unless ``replace``)."""
    target_path = _sqlite_path(url)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(target_path, timeout=30)) as target:
        existing = _sqlite_counts(target)
        if existing and not replace:
            raise ConflictError(
                f"the target database {target_path} already has tables ({', '.join(sorted(existing))}); "
                "restore into a new one (or pass --force to replace it)"
            )
        with closing(sqlite3.connect(backup)) as source:
            source.backup(target)
        return _sqlite_counts(target)


# -- PostgreSQL ----------------------------------------------------------------------------


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment carrying it (PGPASSWORD)."""
    parsed: URL = make_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


@contextmanager
def _pg(url: str) -> Iterator[Any]:
    import psycopg

    conninfo, env = _libpq(url)
    try:
        connection = psycopg.connect(conninfo, password=env.get("PGPASSWORD"), connect_timeout=10)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailableError(f"cannot reach the database at {redacted(url)}: {reason}") from None
    try:
        yield connection
    finally:
        connection.close()


def _pg_counts(cursor: Any) -> dict[str, int]:
    cursor.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    names = [row[0] for row in cursor.fetchall()]
    counts = {}
    for name in names:
        # Table names come from the catalogue; quote_ident-style quoting keeps odd names safe.
        quoted = '"' + name.replace('"', '""') + '"'
        cursor.execute(f"SELECT count(*) FROM {quoted}")  # noqa: S608
        counts[name] = int(cursor.fetchone()[0])
    return counts


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise DatabaseUnavailableError(f"{what} took over {PG_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise DatabaseUnavailableError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigurationError(
            f"{name} is not installed; PostgreSQL backups need it (Debian: postgresql-client, "
            "of the server's major version or newer)"
        )
    return path


def postgres_backup(url: str, destination: Path) -> dict[str, Any]:
    """``pg_dump`` (custom format) of the database; row counts read in the dump's own snapshot."""
    import psycopg

    pg_dump = _tool("pg_dump")
    conninfo, env = _libpq(url)
    with _pg(url) as connection:
        # REPEATABLE READ: every statement of the transaction, and pg_dump, sees one snapshot.
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot(), current_setting('server_version')")
            snapshot_id, server = cursor.fetchone()
            tables = _pg_counts(cursor)
            # The snapshot lives as long as this transaction: pg_dump runs inside it.
            _run(
                [
                    pg_dump,
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot_id}",
                    f"--file={destination}",
                    f"--dbname={conninfo}",
                ],
                env,
                "pg_dump",
            )
        connection.rollback()
    return {"file": destination.name, "tables": tables, "server_version": server}


def postgres_restore(backup: Path, url: str, *, replace: bool) -> dict[str, int]:
    """``pg_restore`` into the database at ``url``, which must hold no tables unless ``replace``."""
    pg_restore = _tool("pg_restore")
    conninfo, env = _libpq(url)
    with _pg(url) as connection, connection.cursor() as cursor:
        existing = _pg_counts(cursor)
    if existing and not replace:
        raise ConflictError(
            f"the target database {redacted(url)} already has tables ({', '.join(sorted(existing)[:5])}); "
            "restore into a new one (or pass --force to replace them)"
        )
    command = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    if replace:
        command += ["--clean", "--if-exists"]
    _run([*command, f"--dbname={conninfo}", str(backup)], env, "pg_restore")
    with _pg(url) as connection, connection.cursor() as cursor:
        return _pg_counts(cursor)


def alembic_revisions(url: str) -> list[str]:
    """Schema revisions recorded in the database (empty when it was never migrated)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(_sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return []
            return sorted(
                row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))
            )
    finally:
        engine.dispose()


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
