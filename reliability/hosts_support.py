"""Plumbing of the host-loss scenario (9): a lab of simulated hosts around one Redis, and the
readings the scenario takes afterwards (ledger attempts, recorded outcomes, host logs).

Only the ``atomq`` command and atomq's public API are used, plus what RQ's data layout makes
public: ``rq:workers`` (registered workers) and ``rq:results:<job id>`` (one stream entry per
recorded outcome, its id the Redis time it was written).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from cryptography.fernet import Fernet

from atomq import TaskQueue
from reliability.hosts import Host, Network, atomq_command
from reliability.ledger import Ledger
from reliability.tasks_hosts import HOST_ENV
from testkit.fakes.mastodon import FakeMastodon
from testkit.fakes.server import Recorded
from testkit.support import RedisServer, cli_env, wait_for

#: What every host's workers import.
TASK_MODULES = "reliability.tasks_hosts"


@dataclass
class Lab:
    """One Redis in the root namespace, a ledger, and the hosts of a scenario.

    :meth:`cleanup` stops and removes everything (hosts first, by PID and namespace, then
    Redis and the bridge); scenarios call it from a fixture finalizer, and it is safe to call
    twice.
    """

    root: Path
    network: Network
    redis: RedisServer
    ledger: Ledger
    client: redis.Redis
    tq: TaskQueue
    hosts: dict[str, Host] = field(default_factory=dict)
    supervisors: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    closers: list[Callable[[], object]] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path) -> Lab:
        network = Network.create()
        server = RedisServer(root / "redis")
        try:
            # Redis answers on loopback (the test) and on the bridge (the hosts), nowhere else.
            server.extra = ["--bind", "127.0.0.1", network.gateway, "--protected-mode", "no"]
            server.start()
        except BaseException:
            server.stop()
            network.destroy()
            raise
        client = redis.Redis(port=server.port, socket_timeout=10)
        return cls(
            root,
            network,
            server,
            Ledger(root / "ledger.jsonl"),
            client,
            TaskQueue(connection=client),
            hosts={},
        )

    @property
    def host_redis_url(self) -> str:
        """Redis as the hosts reach it: across the simulated network."""
        return f"redis://{self.network.gateway}:{self.redis.port}/0"

    @property
    def local_redis_url(self) -> str:
        """Redis as the test process (root namespace) reaches it."""
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def cli(self, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
        """Run ``atomq ARGS`` from the root namespace; returns the completed process."""
        return subprocess.run(
            [*atomq_command(), *args],
            env={**cli_env(self.local_redis_url, self.root / "var" / "cli"), **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def env(self, host: str, **extra: str) -> dict[str, str]:
        return cli_env(
            self.host_redis_url,
            self.root / "var" / host,
            ATOMQ_TASK_MODULES=TASK_MODULES,
            ATOMQ_LOG_FORMAT="json",
            **{
                # One job per worker process unless told otherwise: the scenarios steer which
                # host holds which job by the order of their queues.
                "ATOMQ_WORKER_CONCURRENCY": "1",
                HOST_ENV: host,
                **self.ledger.env(),
                **extra,
            },
        )

    def start_host(self, name: str, count: int, *queues: str, **env: str) -> Host:
        """A new host running ``atomq worker --count COUNT --name host-NAME [QUEUES]``."""
        host = self.network.host(name)
        self.hosts[name] = host
        host.create()
        self.supervisors[name] = host.worker(
            count, self.env(name, **env), self.root / "logs" / f"host-{name}.log", *queues
        )
        return host

    def wait_registered(self, name: str, count: int, timeout: float = 60) -> None:
        """Wait until the host's ``count`` workers are in RQ's ``rq:workers``."""
        wanted = [f"rq:worker:host-{name}-{i}" for i in range(1, count + 1)]

        def registered() -> bool:
            process = self.supervisors[name]
            assert process.poll() is None, f"host {name}'s supervisor exited:\n{Host.log(process)[-3000:]}"
            members = {m.decode() for m in self.client.smembers("rq:workers")}
            return all(w in members for w in wanted)

        wait_for(registered, timeout, 0.1, f"host {name}'s {count} workers")

    def registered_workers(self, name: str) -> list[str]:
        prefix = f"rq:worker:host-{name}-"
        return sorted(m.decode() for m in self.client.smembers("rq:workers") if m.decode().startswith(prefix))

    def cleanup(self) -> None:
        """Stop every host and remove its namespace and link, then Redis and the bridge."""
        errors: list[BaseException] = []
        for host in self.hosts.values():
            try:
                host.cleanup()
            except Exception as exc:  # keep going: the rest must go too
                errors.append(exc)
        while self.closers:
            try:
                self.closers.pop()()
            except Exception as exc:
                errors.append(exc)
        with contextlib.suppress(Exception):
            self.client.close()
        self.redis.stop()
        self.network.destroy()
        if errors:
            raise errors[0]


class Posts:
    """Scheduled posts on a fake Mastodon that listens on the simulated network.

    The database is a SQLite file every host reaches (the machine's disk); accounts and posts
    are made with the ``atomq`` command, as an operator would. The fake keeps one status per
    ``Idempotency-Key``, as Mastodon does, and every post has its own text, so two statuses
    with one text are a post published twice.
    """

    #: Seconds a publish may take (the fake's slow answers stay under it); an attempt's lease
    #: in the database is about twice this plus a margin.
    PUBLISH_TIMEOUT = 5

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.fake = FakeMastodon()
        self.fake.host = lab.network.gateway  # reachable from every host, not only loopback
        self.fake.start()
        lab.closers.append(self.fake.stop)
        self.env = {
            "DATABASE_URL": f"sqlite:///{lab.root / 'posts.sqlite3'}",
            "ATOMQ_POSTS_ALLOWED_HOSTS": lab.network.gateway,
            "ATOMQ_CREDENTIALS_KEY": Fernet.generate_key().decode(),
            "ATOMQ_POSTS_PUBLISH_TIMEOUT": str(self.PUBLISH_TIMEOUT),
            "ATOMQ_POSTS_RECONCILE_INTERVAL": "1",
        }
        self._json("db", "upgrade", expect_json=False)
        account = self._json(
            "accounts",
            "add",
            "mastodon",
            "@hosts@fake.social",
            "--url",
            self.fake.url,
            "--credentials-stdin",
            "--json",
            input=json.dumps({"access_token": self.fake.token}),
        )
        self.account: str = account["id"]
        self.contents: dict[str, str] = {}  # post id -> its text

    def _json(self, *args: str, input: str | None = None, expect_json: bool = True) -> Any:
        result = self.lab.cli(*args, env=self.env, input=input)
        assert result.returncode == 0, f"atomq {' '.join(args)}: {result.stderr[-2000:]}"
        return json.loads(result.stdout) if expect_json else None

    def create(self, content: str, at: datetime) -> dict[str, Any]:
        """``atomq posts create``: the post's view (``id``, ``job_id``, ``scheduled_for``...)."""
        view: dict[str, Any] = self._json(
            "posts",
            "create",
            "--account",
            self.account,
            "--content",
            content,
            "--at",
            at.isoformat(),
            "--json",
        )
        self.contents[view["id"]] = content
        return view

    def show(self, post_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self._json("posts", "show", post_id, "--json")
        return view

    def requests_for(self, content: str) -> list[Recorded]:
        """Publish requests the fake received for the post with ``content``."""
        return [
            r
            for r in list(self.fake.requests)
            if r.path == "/api/v1/statuses" and r.method == "POST" and r.json().get("status") == content
        ]

    def statuses_for(self, content: str) -> int:
        """Statuses the fake holds with ``content`` (more than one: published twice)."""
        return sum(1 for status in list(self.fake.statuses) if status["content"] == content)


# -- readings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One ledger record of a host job: ``start`` or ``done`` of ``key`` on ``host``."""

    kind: str
    key: str
    host: str
    at: float  # Unix time


def ledger_records(ledger: Ledger) -> list[Record]:
    """Every ``start:``/``done:`` record of the host tasks, oldest first (as written, on a tie)."""
    out = []
    for entry in sorted(ledger.entries(), key=lambda entry: entry.at):
        kind, _, rest = entry.key.partition(":")
        key, _, host = rest.rpartition(":")
        out.append(Record(kind, key, host, entry.at))
    return out


@dataclass(frozen=True)
class Outcome:
    """One recorded outcome of a job (an entry of ``rq:results:<id>``)."""

    type: int  # RQ's Result.Type: 1 successful, 2 failed, 3 stopped, 4 retried...
    worker: str
    recorded_at: float  # Redis's clock when it was written (the entry id)
    started_at: float | None  # when the attempt started, by the worker's clock (Unix time)


def outcomes(client: redis.Redis, job_id: str) -> list[Outcome]:
    entries = client.xrange(f"rq:results:{job_id}")
    out = []
    for entry_id, fields in entries:
        millis = int(entry_id.decode().split("-")[0])
        started = fields.get(b"execution_started_at")
        out.append(
            Outcome(
                int(fields.get(b"type", b"0")),
                fields.get(b"worker_name", b"").decode(),
                millis / 1000.0,
                _epoch(started.decode()) if started else None,
            )
        )
    return out


def _epoch(value: str) -> float | None:
    """An ``execution_started_at`` as Unix time: atomq's fast worker writes epoch seconds, RQ's
    own worker an ISO time."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (with few samples, p99 is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class LogLine:
    at: float
    level: str
    logger: str
    message: str


def log_lines(path: Path, since: float = 0.0) -> list[LogLine]:
    """The JSON log lines of a host written at or after ``since`` (Unix time)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["time"]).timestamp()
        except (ValueError, KeyError):
            continue
        if at >= since:
            out.append(LogLine(at, entry.get("level", ""), entry.get("logger", ""), entry.get("message", "")))
    return out


_VARYING = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[a-z]+_[0-9a-f]{16,}\b|\d+(?:\.\d+)?"
)


def message_shape(message: str, limit: int = 140) -> str:
    """A log message with ids and numbers blanked, cut to its first line: lines that say the
    same thing about different jobs count together."""
    first = message.splitlines()[0] if message else ""
    return _VARYING.sub("#", first)[:limit]


def warnings_by_shape(lines: list[LogLine]) -> dict[str, int]:
    """How often each WARNING-or-worse message (by shape) appears."""
    found = Counter(
        message_shape(line.message) for line in lines if line.level in ("WARNING", "ERROR", "CRITICAL")
    )
    return dict(found.most_common())


def job_worker(client: redis.Redis, job_id: str) -> str:
    """The worker that claimed the job last (RQ's ``worker_name`` field; "" when none)."""
    value = client.hget(f"rq:job:{job_id}", "worker_name")
    return value.decode() if value else ""


class ClaimWatcher:
    """Notes, from a thread, when each watched job is first claimed by a worker not named
    ``host-<host>-*`` (polls RQ's job hash every ``interval`` seconds)."""

    def __init__(self, client: redis.Redis, job_ids: list[str], host: str, interval: float = 0.05) -> None:
        self.client = client
        self.job_ids = list(job_ids)
        self.prefix = f"host-{host}-"
        self.interval = interval
        self.claimed: dict[str, tuple[float, str]] = {}  # job id -> (Unix time, worker)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-watcher", daemon=True)

    def start(self) -> ClaimWatcher:
        self._thread.start()
        return self

    def stop(self) -> dict[str, tuple[float, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.claimed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for job_id in self.job_ids:
                if job_id in self.claimed:
                    continue
                with contextlib.suppress(redis.RedisError):
                    worker = job_worker(self.client, job_id)
                    if worker and not worker.startswith(self.prefix):
                        self.claimed[job_id] = (time.time(), worker)
