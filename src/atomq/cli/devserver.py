"""``atomq up``: the whole system on one machine, started and stopped with one command.

When ``REDIS_URL`` is unset it runs a private ``redis-server`` (AOF on, data under
``./var/redis``, a free loopback port); it brings the database schema up to date, then starts
the HTTP API and the worker supervisor (workers plus the scheduler), and prints where
everything is, with a local admin token. Ctrl-C or SIGTERM stops the API and the workers
first (running jobs finish), then Redis, so nothing is left running and, thanks to the AOF,
the next ``atomq up`` finds every job again.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis

from atomq.core.errors import ConfigurationError, RedisUnavailableError
from atomq.core.settings import Settings
from atomq.engine.process import die_with_parent

logger = logging.getLogger("atomq.up")

#: Seconds to wait for redis-server to answer after starting it.
REDIS_START_TIMEOUT = 15.0

#: Seconds children get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 60.0


def _die_with_parent() -> None:

    die_with_parent(signal.SIGTERM)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server owned by this process, persisted with AOF under ``data_dir``."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = os.environ.get("ATOMQ_REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise ConfigurationError(
                "redis-server is not installed: install it (Debian/Ubuntu: apt-get install redis-server; "
                "macOS: brew install redis) or point REDIS_URL at a running Redis"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        # A session of its own: Ctrl-C in the terminal must not stop Redis before the workers.
        try:
            self.process = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads yet
        except OSError as exc:
            raise ConfigurationError(f"cannot run redis-server ({binary}): {exc.strerror}") from None
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            try:
                # Loading a large AOF answers LOADING errors until done.
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.data_dir / "redis.log"
                    raise RedisUnavailableError(
                        f"redis-server did not start on 127.0.0.1:{self.port}; see {log}"
                    ) from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM makes Redis fsync the AOF and exit cleanly.
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Service:
    """A child process ``atomq up`` runs and stops."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class DevServer:
    """Runs Redis (unless REDIS_URL is set), workers and the scheduler until told to stop."""

    settings: Settings
    workers: int = 2
    redis: PrivateRedis | None = None
    services: list[Service] = field(default_factory=list)
    api_url: str = ""
    token: str = ""
    outbox_account: str = ""
    _stopping: bool = False

    def run(self) -> int:
        env = dict(os.environ)
        data_dir = self.settings.data_dir
        if not (env.get("REDIS_URL") or env.get("ATOMQ_REDIS_URL")):
            self.redis = PrivateRedis(data_dir / "redis").start()
            env["REDIS_URL"] = self.redis.url
        redis_url = env["REDIS_URL"] if "REDIS_URL" in env else env.get("ATOMQ_REDIS_URL", "")
        # The children read their logging options from the environment (`--log-file` etc.).
        env["ATOMQ_LOG_LEVEL"] = self.settings.log_level
        env["ATOMQ_LOG_FORMAT"] = self.settings.log_format
        if self.settings.log_file:
            env["ATOMQ_LOG_FILE"] = str(Path(self.settings.log_file).resolve())
        data_dir.mkdir(parents=True, exist_ok=True)
        self._migrate()
        token = self._local_token(env)
        api_port = self.settings.api_port if _port_free(self.settings.api_port) else free_port()
        # `export` so that `source var/atomq.env` reaches the atomq commands run afterwards,
        # not just the shell's own variables.
        (data_dir / "atomq.env").write_text(f"export REDIS_URL={redis_url}\nexport ATOMQ_API_TOKEN={token}\n")
        atomq = [sys.executable, "-m", "atomq"]
        self.services = [
            Service("api", [*atomq, "serve", "--host", "127.0.0.1", "--port", str(api_port)]),
            Service("workers", [*atomq, "worker", "--count", str(self.workers)]),
        ]
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.token = token
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            for service in self.services:
                # Own session: the terminal's Ctrl-C reaches only `atomq up`, which then asks
                # each service exactly once to stop (a second Ctrl-C asks again, harder).
                service.process = subprocess.Popen(
                    service.command,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet
                )
            self._wait_for_api()
            self._banner(redis_url)
            self._watch()
        finally:
            self._stop_services()
            if self.redis is not None:
                self.redis.stop()
            print("atomq up: stopped; nothing left running.", flush=True)
        return 0

    def _banner(self, redis_url: str) -> None:
        # Deferred: loads httpx only when this runs.
        from atomq.features.posts.publishers import outbox_path

        where = "private redis-server, data in " + str(self.redis.data_dir) if self.redis else "REDIS_URL"
        lines = [
            "",
            "atomq is up",
            f"  Redis     {redis_url}  ({where})",
            f"  API       {self.api_url}  (OpenAPI: {self.api_url}/docs)",
            f"  Dashboard {self.api_url}/dashboard  (log in with the token)",
            f"  Token     {self.token}  (admin; also in {self.settings.data_dir / 'api-token'})",
            f"  Workers   {self.workers} process(es) + scheduler, queues: {', '.join(self.settings.queues)}",
            f"  Env       source {self.settings.data_dir / 'atomq.env'}  (then: atomq info, atomq doctor)",
            f"  Outbox    account {self.outbox_account}, posts go to {outbox_path(self.settings)}",
            f'  Try       curl -H "Authorization: Bearer {self.token}" {self.api_url}/api/v1/tasks/queues',
            "  Stop      Ctrl-C (running jobs finish first)",
            "",
        ]
        print("\n".join(lines), flush=True)

    def _migrate(self) -> None:
        # Deferred: loads SQLAlchemy only when this runs.
        from atomq.db.engine import Database
        from atomq.db.migrate import upgrade

        database = Database.from_settings(self.settings)
        try:
            upgrade(database)
            # Posts need an account; the local outbox lets them be "published" with none anywhere.
            from atomq.features.posts.accounts import ensure_outbox_account

            self.outbox_account = ensure_outbox_account(database, self.settings).id
        finally:
            database.dispose()

    def _local_token(self, env: dict[str, str]) -> str:
        """The local admin token (made once, kept in var/api-token), added to the API's tokens."""
        # Deferred: loads FastAPI, httpx only when this runs.
        from atomq.api.auth import entry_for, generate_token

        path = self.settings.data_dir / "api-token"
        if path.exists():
            token = path.read_text().strip()
        else:
            token = generate_token()
            path.write_text(token + "\n")
            path.chmod(0o600)
        entries = [e for e in env.get("ATOMQ_API_TOKENS", "").split(",") if e.strip()]
        entries.append(entry_for("local-admin", "admin", token))
        env["ATOMQ_API_TOKENS"] = ",".join(entries)
        return token

    def _wait_for_api(self) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self._stopping:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if any(s.process is not None and s.process.poll() is not None for s in self.services):
                return  # _watch reports which one died
            time.sleep(0.1)

    def _watch(self) -> None:
        while not self._stopping:
            for service in self.services:
                assert service.process is not None
                code = service.process.poll()
                if code is not None and not self._stopping:
                    print(
                        f"atomq up: {service.name} exited with code {code}; stopping everything", flush=True
                    )
                    self._stopping = True
            time.sleep(0.2)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            print("\natomq up: stopping now (running jobs are killed)...", flush=True)
            self._signal_services()
            return
        print("\natomq up: stopping (running jobs finish first; Ctrl-C again to kill them)...", flush=True)
        self._stopping = True

    def _signal_services(self) -> None:
        for service in reversed(self.services):
            process = service.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def _stop_services(self) -> None:
        self._signal_services()
        for service in reversed(self.services):
            process = service.process
            if process is None:
                continue
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
