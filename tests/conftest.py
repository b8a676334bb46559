"""Fixtures: one real redis-server per test session (flushed before each test), settings
and a task queue bound to it, CLI runs and worker processes that tests start and stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import redis

from atomq.settings import Settings, load_settings
from atomq.task_queue import TaskQueue
from tests.support import Processes, RedisServer, cli_env, run_cli


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
