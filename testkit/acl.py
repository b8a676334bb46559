"""A redis-server loaded with deploy/redis/users.acl (passwords filled in), for the ACL tests
in tests/ and reliability/."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.support import ROOT, RedisServer, free_port

ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
PASSWORDS = {"worker": "w-secret", "api": "a-secret", "backup": "b-secret", "admin": "admin-secret"}


def acl_with_passwords(directory: Path) -> Path:
    text = ACL_FILE.read_text()
    for user, password in PASSWORDS.items():
        placeholder = f"#REPLACE_WITH_SHA256_OF_THE_{user.upper()}_PASSWORD"
        assert placeholder in text
        text = text.replace(placeholder, "#" + hashlib.sha256(password.encode()).hexdigest())
    path = directory / "users.acl"
    path.write_text(text)
    return path


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", extra=["--aclfile", str(acl_with_passwords(tmp_path))])
    # RedisServer pings as the default user, which the file disables: start it by hand.
    server.extra.append("--port")
    yield _start(server)
    server.stop()


def _start(server: RedisServer) -> RedisServer:
    server.extra.pop()
    server.directory.mkdir(parents=True, exist_ok=True)
    server.port = free_port()
    server.process = subprocess.Popen(
        [
            shutil.which("redis-server"), "--port", str(server.port), "--bind", "127.0.0.1",
            "--dir", str(server.directory), "--save", "", "--appendonly", "no",
            "--logfile", "redis.log", "--repl-diskless-sync-delay", "0", *server.extra,
        ],
        start_new_session=True,
    )  # fmt: skip
    admin = redis.Redis(port=server.port, username="admin", password=PASSWORDS["admin"])
    deadline = time.monotonic() + 10
    while True:
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            assert server.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    admin.close()
    return server


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{server.port}/0"
