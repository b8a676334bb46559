"""Plumbing shared by the Redis-fault scenarios (2, 3, 4): a steady stream of enqueues that
remembers which were acknowledged and when, worker/API process environments, a migrated
SQLite database, and an ``atomq serve`` process with a token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from atomq.core.settings import Settings, load_settings
from atomq.db.engine import Database
from atomq.db.migrate import upgrade
from atomq.engine.task_queue import TaskQueue
from reliability.ledger import Ledger
from reliability.tasks_redis import RECORD
from testkit.posts import CREDENTIALS_KEY, POSTS_OVERRIDES
from testkit.support import Processes, cli_env, free_port, wait_for

#: The module workers import for the scenarios' task.
TASK_MODULES = "reliability.tasks_redis"

#: The API token the scenarios use (admin scope), and its ATOMQ_API_TOKENS entry.
API_TOKEN = "atq_reliability_redis_token"  # noqa: S105 - a test token


def sqlite_database(path: Path) -> Database:
    """A migrated SQLite database at ``path`` (the posts records live here)."""
    database = Database.from_settings(load_settings(database_url=f"sqlite:///{path}"))
    upgrade(database)
    return database


def scenario_settings(
    redis_url: str, data_dir: Path, database_url: str | None = None, **extra: Any
) -> Settings:
    """Settings of the test process: this Redis, the scenario's task, the posts fakes allowed."""
    values: dict[str, Any] = {"redis_url": redis_url, "task_modules": [TASK_MODULES], "data_dir": data_dir}
    if database_url:
        values.update(POSTS_OVERRIDES, database_url=database_url)
    values.update(extra)
    return load_settings(**values)


def process_env(
    redis_url: str | None, data_dir: Path, ledger: Ledger, database_url: str | None = None, **extra: str
) -> dict[str, str]:
    """Environment of worker and API processes (``redis_url`` None: set Sentinel in ``extra``)."""
    env = cli_env(redis_url or "", data_dir, ATOMQ_TASK_MODULES=TASK_MODULES, **ledger.env())
    if redis_url is None:
        env.pop("REDIS_URL")
    if database_url:
        env.update(
            DATABASE_URL=database_url,
            ATOMQ_POSTS_ALLOWED_HOSTS="127.0.0.1",
            ATOMQ_CREDENTIALS_KEY=CREDENTIALS_KEY,
            ATOMQ_POSTS_PUBLISH_TIMEOUT="1",
            ATOMQ_POSTS_RECONCILE_INTERVAL="1",
        )
    env.update(extra)
    return env


def task_queue(settings: Settings, url: str) -> TaskQueue:
    """A TaskQueue for the test process, on its own client (short timeouts: a dead Redis must
    not stall the enqueue loop for long)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    return TaskQueue(settings=settings, connection=client)


@dataclass
class SteadyStream:
    """Calls ``submit(key)`` ``rate`` times a second from a thread; remembers when each call
    was acknowledged (returned).

    A refused call (Redis down) is counted and not retried: the caller was told it failed, so
    losing it is not a broken promise. After a stall the loop does not burst to catch up.
    """

    submit: Callable[[str], Any]
    rate: float
    prefix: str
    acked: dict[str, float] = field(default_factory=dict)  # key -> time.time() of the ack
    refused: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SteadyStream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            key = f"{self.prefix}-{self.sent}"
            self.sent += 1
            try:
                self.submit(key)
                self.acked[key] = time.time()
            except Exception:  # noqa: BLE001 - any refusal counts; the scenario reads the figures
                self.refused.append(key)
                self._stop.wait(0.05)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.5:
                next_at = time.monotonic()  # fell behind (an outage): carry on at the rate, no burst

    def acked_before(self, moment: float) -> list[str]:
        return [key for key, at in self.acked.items() if at < moment]

    def acked_between(self, start: float, end: float) -> list[str]:
        return [key for key, at in self.acked.items() if start <= at < end]


def enqueuer(tq: TaskQueue, rate: float, prefix: str) -> SteadyStream:
    """A stream of the scenarios' ledger-recording job."""
    return SteadyStream(lambda key: tq.enqueue(RECORD, key), rate, prefix)


def ledger_times(ledger: Ledger) -> dict[str, float]:
    """Each key's first recording, as a Unix time."""
    first: dict[str, float] = {}
    for entry in ledger.entries():
        first[entry.key] = min(entry.at, first.get(entry.key, entry.at))
    return first


def wait_all_recorded(ledger: Ledger, keys: list[str], timeout: float) -> list[str]:
    """Wait until every key is in the ledger or ``timeout`` passes; returns those still missing."""
    deadline = time.monotonic() + timeout
    missing = ledger.missing(keys)
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = ledger.missing(missing)
    return missing


class ApiServer:
    """``atomq serve`` in its own process (uvicorn), stopped by the test."""

    def __init__(self, procs: Processes, env: dict[str, str]) -> None:
        from atomq.api.auth import entry_for

        self.port = free_port()
        self.env = dict(env, ATOMQ_API_TOKENS=entry_for("reliability", "admin", API_TOKEN))
        self.procs = procs
        self.process = procs.start("serve", "--port", str(self.port), env=self.env, name="api")
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=30,
        )
        wait_for(self._up, 30, 0.1, "atomq serve to answer")

    def _up(self) -> bool:
        assert self.process.poll() is None, Processes.log(self.process)
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def enqueue(self, key: str, seconds: float = 0.0, **options: Any) -> httpx.Response:
        """POST /api/v1/tasks/jobs for the ledger task (``options``: at_front, queue...)."""
        return self.http.post(
            "/api/v1/tasks/jobs",
            json={"task": RECORD, "kwargs": {"key": key, "seconds": seconds}, **options},
        )

    def close(self) -> None:
        self.http.close()
        self.procs.stop(self.process)
