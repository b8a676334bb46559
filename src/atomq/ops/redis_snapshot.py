"""Redis snapshots for backups: take one over the network, read one back, copy it into a Redis.

Taking: ``redis-cli --rdb`` asks the server for a replication snapshot (the same fork-and-write
as ``BGSAVE``), so the file is one consistent moment of the whole dataset, and it streams to
the machine running the backup: Redis may be on another host, with TLS and an ACL user that
may ``SYNC``. Nothing is read from the Redis host's disk.

Restoring: the snapshot is loaded into a throw-away ``redis-server`` (on a private Unix
socket) and every key of the atomq database is copied to the target with ``DUMP``/``RESTORE``,
TTLs included. The target can be any reachable Redis, running with AOF as queues should, with
no restart and no access to its files. The same loader verifies a fresh backup and counts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis

from atomq.core.connection import parse_target
from atomq.core.errors import ConfigurationError, ConflictError, RedisUnavailableError
from atomq.core.settings import Settings
from atomq.engine.scripts import decode

#: Seconds ``redis-cli --rdb`` may take (a large dataset on a slow link takes a while).
SNAPSHOT_TIMEOUT_SECONDS = 3600

#: Seconds a loaded snapshot may take to become readable in the throw-away server.
LOAD_TIMEOUT_SECONDS = 600

#: Keys copied per round trip when restoring.
COPY_BATCH = 500

#: The first bytes of every RDB file.
RDB_MAGIC = b"REDIS"


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigurationError(f"{name} is not installed; backups and restores need it ({package})")
    return path


def _credentials(settings: Settings) -> tuple[str | None, str | None]:
    """User name and password, from REDIS_URL or the REDIS_* variables."""
    user, password = settings.redis_username, settings.redis_password
    if settings.redis_url:
        parsed = urlparse(settings.redis_url)
        if parsed.username:
            user = unquote(parsed.username)
        if parsed.password is not None:
            password = unquote(parsed.password)
    return user or None, password or None


def _master_address(settings: Settings) -> tuple[str, int]:
    target = parse_target(settings)
    if not settings.redis_sentinels:
        return target.host, target.port
    from redis.sentinel import Sentinel

    sentinels = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        sentinels.append((host or item, int(port) if host else 26379))
    options: dict[str, Any] = {"socket_timeout": 5.0}
    if settings.redis_password:
        options["password"] = settings.redis_password
    try:
        host, port = Sentinel(sentinels, sentinel_kwargs=options).discover_master(
            settings.redis_sentinel_master
        )
    except redis.RedisError as exc:
        raise RedisUnavailableError(
            f"no sentinel knows master {settings.redis_sentinel_master!r}: {exc}"
        ) from None
    return str(host), int(port)


def snapshot(settings: Settings, destination: Path) -> dict[str, Any]:
    """Write an RDB snapshot of the configured Redis to ``destination``; describe it.

    Needs ``redis-cli`` on this machine and, on the server, a user allowed ``SYNC`` (see the
    ``backup`` user in ``deploy/redis/users.acl``).
    """
    cli = _binary("redis-cli", "Debian: redis-tools; macOS: brew install redis")
    host, port = _master_address(settings)
    target = parse_target(settings)
    user, password = _credentials(settings)
    command = [cli, "-h", host, "-p", str(port), "--no-auth-warning"]
    if user:
        command += ["--user", user]
    if target.tls:
        command.append("--tls")
        if settings.redis_ssl_ca_certs:
            command += ["--cacert", settings.redis_ssl_ca_certs]
        if settings.redis_ssl_certfile:
            command += ["--cert", settings.redis_ssl_certfile]
        if settings.redis_ssl_keyfile:
            command += ["--key", settings.redis_ssl_keyfile]
    command += ["--rdb", str(destination)]
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if password:
        env["REDISCLI_AUTH"] = password  # not on the command line, where `ps` would show it
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=SNAPSHOT_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise RedisUnavailableError(
            f"the Redis snapshot from {target.describe()} took over {SNAPSHOT_TIMEOUT_SECONDS} s"
        ) from None
    detail = (done.stderr or done.stdout).strip().splitlines()
    if done.returncode != 0 or not destination.exists():
        reason = detail[-1] if detail else f"redis-cli exited {done.returncode}"
        hint = ""
        if "NOPERM" in reason or "no permissions" in reason:
            hint = "; the Redis user needs +sync +psync +replconf (the backup user in deploy/redis/users.acl)"
        raise RedisUnavailableError(f"could not take a snapshot of {target.describe()}: {reason}{hint}")
    with destination.open("rb") as handle:
        if handle.read(len(RDB_MAGIC)) != RDB_MAGIC:
            raise RedisUnavailableError(f"{target.describe()} sent something that is not an RDB file")
    return {
        "file": destination.name,
        "method": "redis-cli --rdb (replication snapshot)",
        "source": target.describe(),
        "db": target.db,
        "seconds": round(time.monotonic() - started, 3),
        **file_facts(destination),
    }


def file_facts(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (the manifest records both; restore checks them)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


class LoadedSnapshot:
    """A snapshot loaded into a throw-away server: hands out clients for its databases."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._clients: list[redis.Redis] = []

    def client(self, db: int = 0) -> redis.Redis:
        client = redis.Redis(unix_socket_path=str(self.socket_path), db=db, socket_timeout=60)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


@contextlib.contextmanager
def loaded(rdb: Path) -> Iterator[LoadedSnapshot]:
    """A throw-away redis-server holding the snapshot ``rdb``, reachable only by its Unix socket."""
    server = _binary("redis-server", "Debian: redis-server; macOS: brew install redis")
    with tempfile.TemporaryDirectory(prefix="atomq-restore-") as scratch:
        directory = Path(scratch)
        shutil.copyfile(rdb, directory / "dump.rdb")
        socket_path = directory / "redis.sock"
        process = subprocess.Popen(
            [
                server,
                "--port", "0",
                "--unixsocket", str(socket_path),
                "--unixsocketperm", "700",
                "--dir", str(directory),
                "--dbfilename", "dump.rdb",
                "--appendonly", "no",
                "--save", "",
                "--logfile", str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        snapshot = LoadedSnapshot(socket_path)
        try:
            _wait_loaded(snapshot.client(), process, directory)
            yield snapshot
        finally:
            snapshot.close()
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_loaded(client: redis.Redis, process: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            log = (directory / "redis.log").read_text(errors="replace").strip().splitlines()
            raise ConfigurationError(
                "redis-server could not load the snapshot: " + (log[-1] if log else "it exited at once")
            )
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise RedisUnavailableError("the snapshot did not load in time") from None
            time.sleep(0.05)


def keyspace(client: redis.Redis) -> dict[str, int]:
    """Keys per database index in a server: ``{"0": 1234}``."""
    info = client.info("keyspace")
    return {name.removeprefix("db"): int(value["keys"]) for name, value in info.items()}


@dataclass
class CopyReport:
    """What a restore copied."""

    keys: int = 0
    skipped_expired: int = 0


def copy_database(source: redis.Redis, target: redis.Redis, *, replace: bool = False) -> CopyReport:
    """Copy every key of ``source``'s database to ``target``'s, TTLs kept.

    The target must be empty unless ``replace``; then keys the snapshot has overwrite the
    target's, and other keys stay.
    """
    existing = int(target.dbsize())
    if existing and not replace:
        raise ConflictError(
            f"the target Redis database already holds {existing} key(s); restore into an empty one "
            "(or pass --force to overwrite the keys the backup has)"
        )
    report = CopyReport()
    cursor = 0
    while True:
        cursor, names = source.scan(cursor=cursor, count=COPY_BATCH)
        if names:
            with source.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.pttl(name)
                    pipe.dump(name)
                replies = pipe.execute()
            with target.pipeline(transaction=False) as pipe:
                for index, name in enumerate(names):
                    ttl, payload = replies[2 * index], replies[2 * index + 1]
                    if payload is None or ttl == -2:
                        report.skipped_expired += 1
                        continue
                    pipe.restore(name, max(int(ttl), 0), payload, replace=replace)
                    report.keys += 1
                pipe.execute()
        if int(cursor) == 0:
            break
    return report


def server_version(client: redis.Redis) -> str:
    return decode(client.info("server").get("redis_version", "?"))
