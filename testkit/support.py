"""Helpers for tests: a real redis-server on a free port, CLI runs, worker processes.

Every process a test starts is stopped by the test itself, by PID (process groups are used
so a supervisor's children go too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from atomq.core import keys
from atomq.engine.scripts import decode

ROOT = Path(__file__).resolve().parent.parent

#: The keys of get_job_status(), in the guide's order.
GUIDE_STATUS_KEYS = [
    "job_id",
    "status",
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "result",
    "error",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def answers(client: redis.Redis) -> bool:
    """Whether ``client``'s Redis answers a PING (any Redis error is a no); closes the client."""
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class RedisServer:
    """A redis-server process owned by a test or session."""

    directory: Path
    port: int = 0
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the tests (scripts/bootstrap installs it)"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            "redis.log",
            *self.extra,
        ]
        self.process = subprocess.Popen(command, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                assert self.process is not None and self.process.poll() is None, "redis-server exited"
                return False

        wait_for(ready, 10, what=f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cli_env(redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for atomq subprocesses: this Redis, the test tasks importable."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith(("ATOMQ_", "REDIS_")))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "ATOMQ_TASK_MODULES": "tests.jobs",
            "ATOMQ_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m atomq ARGS`` and return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "atomq", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Processes:
    """Starts atomq processes for a test and stops every one of them at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        return self.program(sys.executable, "-m", "atomq", *args, env=env, name=name)

    def program(
        self, *argv: str, env: dict[str, str] | None = None, name: str = "proc"
    ) -> subprocess.Popen[bytes]:
        """Start any program (an example app under uvicorn...), stopped with the others."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                list(argv),
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = str(log_path)  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def worker(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.start("worker", *args, name="worker", **kwargs)

    @staticmethod
    def log(process: subprocess.Popen[bytes]) -> str:
        return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Anything the process left in its group (children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.returncode

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def _live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process (zombies excluded), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out.append((int(entry.name), int(fields[1]), int(fields[2])))
    return out


def group_pids(pgid: int) -> list[int]:
    """PIDs of live processes in process group ``pgid``."""
    return [pid for pid, _, pgrp in _live_processes() if pgrp == pgid]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    return [child for child, parent, _ in _live_processes() if parent == pid]


def worker_pids(connection: redis.Redis, supervisor_pid: int) -> list[int]:
    """Pids of the supervisor's live worker processes (its scheduler excluded).

    A worker registers its pid in its ``rq:worker:<name>`` hash; only pids that are also live
    children of the supervisor count (a registration may outlive its process for a moment).
    """
    children = set(children_of(supervisor_pid))
    pids = []
    for name in connection.smembers(keys.WORKERS_SET):
        pid = connection.hget(keys.worker_key(decode(name)), "pid")
        if pid is not None and int(pid) in children:
            pids.append(int(pid))
    return pids


POSTGRES_ADMIN_URL = os.environ.get(
    "ATOMQ_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_available() -> bool:
    """Whether the PostgreSQL the tests may use answers (it does on this machine and in CI)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


class PostgresDatabase:
    """A throw-away PostgreSQL database created for a test session and dropped after it."""

    def __init__(self) -> None:
        import uuid

        self.name = f"atomq_test_{uuid.uuid4().hex[:12]}"
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def _admin(self, statement: str) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
        engine.dispose()

    def create(self) -> PostgresDatabase:
        self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
