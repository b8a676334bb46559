"""The records database: migrations on SQLite and PostgreSQL, the CLI, clear errors."""

from __future__ import annotations

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
