"""Fixtures: one real redis-server per test session (flushed before each test), settings
and a task queue bound to it, CLI runs and worker processes that tests start and stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import redis

from atomq.core.settings import Settings, load_settings
from atomq.db.base import Base
from atomq.db.engine import Database
from atomq.db.migrate import upgrade
from atomq.engine import plugins
from atomq.engine.task_queue import TaskQueue
from testkit.support import (
    PostgresDatabase,
    Processes,
    RedisServer,
    cli_env,
    postgres_available,
    run_cli,
)

#: Tokens the API tests use, one per scope.
TOKENS = {"read": "atq_test_read_token", "write": "atq_test_write_token", "admin": "atq_test_admin_token"}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(redis_url=redis_url, task_modules=["tests.jobs"], data_dir=tmp_path / "var")


@pytest.fixture
def tq(settings: Settings, connection: redis.Redis) -> TaskQueue:
    return TaskQueue(settings=settings, connection=connection)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(redis_url, tmp_path / "var")


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., CompletedProcess[str]]:
    def run(*args: str, input: str | None = None, timeout: float = 60) -> CompletedProcess[str]:
        return run_cli(env, *args, input=input, timeout=timeout)

    return run


@pytest.fixture
def procs(env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(env, tmp_path / "logs")
    yield processes
    processes.stop_all()


@pytest.fixture
def burst(cli: Callable[..., CompletedProcess[str]]) -> Callable[..., CompletedProcess[str]]:
    """Run a burst worker (all queues unless given) until the queues are empty."""

    def run(*args: str, timeout: float = 60) -> CompletedProcess[str]:
        result = cli("worker", "--burst", *args, timeout=timeout)
        assert result.returncode == 0, result.stderr
        return result

    return run


# -- databases ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A fresh PostgreSQL database for the session, migrated; None when PostgreSQL is absent."""
    if not postgres_available():
        yield None
        return
    db = PostgresDatabase().create()
    database = Database.from_settings(load_settings(database_url=db.url))
    upgrade(database)
    database.dispose()
    yield db.url
    db.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL (skipped if unreachable)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'atomq.db'}"
    url = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip("PostgreSQL is not reachable (set ATOMQ_TEST_POSTGRES)")
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated, empty database."""
    import sqlalchemy

    db = Database.from_settings(load_settings(database_url=database_url))
    if db.dialect == "sqlite":
        upgrade(db)
    else:
        plugins.load("models")
        with db.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(sqlalchemy.text(f'DELETE FROM "{table.name}"'))
    yield db
    db.dispose()


# -- the HTTP API -------------------------------------------------------------------------


class ApiClient:
    """A TestClient bound to a real Redis and database, with helpers for auth headers."""

    def __init__(self, client: object) -> None:
        self.client = client

    @staticmethod
    def auth(scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[scope]}"}

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)


@pytest.fixture
def api_settings(settings: Settings, database: Database) -> Settings:
    from atomq.api.auth import entry_for

    entries = [entry_for(f"test-{scope}", scope, token) for scope, token in TOKENS.items()]
    return settings.model_copy(
        update={
            "api_tokens": entries,
            "database_url": str(database.engine.url.render_as_string(hide_password=False)),
        }
    )


@pytest.fixture
def api(api_settings: Settings, connection: redis.Redis, database: Database) -> Iterator[ApiClient]:
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app

    app = create_app(api_settings, redis_client=connection, database=database)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiClient(client)
