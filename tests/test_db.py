"""The records database: migrations on SQLite and PostgreSQL, the CLI, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from atomq.cli import exits
from atomq.core.errors import DatabaseUnavailableError
from atomq.core.settings import load_settings
from atomq.db.engine import Database, database_url
from atomq.db.migrate import current_revisions, head_revisions, is_current
from testkit.support import free_port


def test_migrations_reach_every_head(database):
    assert current_revisions(database) == head_revisions()
    assert is_current(database)


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path):
    settings = load_settings(data_dir=tmp_path / "var")
    assert database_url(settings) == f"sqlite:///{tmp_path / 'var' / 'atomq.db'}"
    assert database_url(load_settings(database_url="postgres://u:p@h/db")) == "postgresql+psycopg://u:p@h/db"


def test_unreachable_database_is_a_clear_error_without_password():
    settings = load_settings(database_url=f"postgresql://atomq:hunter2@127.0.0.1:{free_port()}/x")
    database = Database.from_settings(settings)
    try:
        with pytest.raises(DatabaseUnavailableError) as info:
            database.ping()
    finally:
        database.dispose()
    assert "127.0.0.1" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_db_cli_upgrades_and_reports(cli, env, tmp_path):
    from testkit.support import run_cli

    env = dict(env, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    before = run_cli(env, "db", "current")
    assert before.returncode == 1
    assert "applied:  none" in before.stdout
    upgraded = run_cli(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database is up to date" in upgraded.stdout
    after = run_cli(env, "db", "current")
    assert after.returncode == 0
    env = dict(env, DATABASE_URL=f"postgresql://x:secret@127.0.0.1:{free_port()}/nope")
    down = run_cli(env, "db", "upgrade")
    assert down.returncode == exits.UNAVAILABLE
    assert "secret" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1


#: A process that holds a SQLite write transaction on ``argv[1]`` for ``argv[2]`` seconds
#: (through atomq's engine), printing when it began and when its commit ended.
_HOLD_WRITE = """
import sys, time
from sqlalchemy import text
from atomq.core.settings import load_settings
from atomq.db.engine import make_engine
engine = make_engine(load_settings(database_url="sqlite:///" + sys.argv[1]))
with engine.begin() as connection:
    connection.execute(text("INSERT INTO t VALUES (1)"))
    print("began", flush=True)
    time.sleep(float(sys.argv[2]))
print("committed", time.time(), flush=True)
"""


def test_sqlite_writers_of_other_processes_are_let_in_the_moment_a_write_ends(tmp_path):
    # SQLite's busy handler polls a locked file with sleeps of up to 100 ms (1, 2, 5, 10, 15,
    # 20, 25, 25, 25, 50 ms...): a writer held up 150 ms would get in ~25 ms after the lock
    # came free. atomq's writers queue for a lock file and get in at once.
    import sqlite3
    from pathlib import Path

    from sqlalchemy import text

    from atomq.db.engine import make_engine
    from atomq.db.writer_lock import LOCK_SUFFIX

    path = tmp_path / "atomq.db"
    with sqlite3.connect(path) as plain:
        plain.execute("CREATE TABLE t (x)")
    engine = make_engine(load_settings(database_url=f"sqlite:///{path}"))
    gaps = []
    for _ in range(3):
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_WRITE, str(path), "0.15"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "began"
            with engine.begin() as connection:
                got_in = time.time()
                connection.execute(text("INSERT INTO t VALUES (2)"))
            out, _ = holder.communicate(timeout=30)
        finally:
            holder.kill()
            holder.wait()
        committed = float(out.split()[1])
        assert got_in >= committed  # it did wait for the other writer
        gaps.append(got_in - committed)
    assert min(gaps) < 0.010, gaps
    assert Path(f"{path}{LOCK_SUFFIX}").exists()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 6
    engine.dispose()


@pytest.mark.timeout(20)
def test_a_thread_that_writes_never_waits_for_itself_on_another_connection(tmp_path):
    # Two write transactions open at once in one thread can never both proceed: SQLite fails
    # the second after its busy timeout, as without the lock file, instead of waiting forever.
    import sqlite3

    from atomq.db.writer_lock import GatedConnection

    path = str(tmp_path / "atomq.db")
    first, second = (
        sqlite3.connect(path, timeout=0.2, isolation_level=None, factory=GatedConnection) for _ in range(2)
    )
    first.execute("CREATE TABLE t (x)")
    first.hold_writer_lock()
    first.execute("BEGIN IMMEDIATE")
    second.hold_writer_lock()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        second.execute("BEGIN IMMEDIATE")
    second.release_writer_lock()
    first.rollback()
    # Rolled back, the lock is free again for either connection, in this thread or another.
    second.hold_writer_lock()
    second.execute("BEGIN IMMEDIATE")
    second.execute("INSERT INTO t VALUES (1)")
    second.commit()
    first.close()
    second.close()
