"""Helpers for the security tests: a TLS-only redis-server made by the test itself (its
certificates come from :mod:`testkit.certs`)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from testkit.support import answers, free_port, wait_for


@dataclass
class TlsRedis:
    """A redis-server that only listens on a TLS port (the plain port is off)."""

    directory: Path
    cert: Path
    key: Path
    ca: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "localhost") -> str:
        return f"rediss://{host}:{self.port}/0"

    def start(self, check_host: bool = True) -> TlsRedis:
        """Start it; readiness is checked by a verifying client (host name check optional, for a
        certificate that deliberately names another host)."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the tests"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
            "--dir", str(self.directory), "--save", "", "--appendonly", "no", "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, start_new_session=True)
        wait_for(lambda: self._ready(check_host), 10, what=f"TLS redis-server on port {self.port}")
        return self

    def client(self, check_host: bool = True) -> redis.Redis:
        """A verifying client on ``localhost`` (the test's own view of the data)."""
        return redis.Redis.from_url(
            self.url(),
            ssl_ca_certs=str(self.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            ssl_check_hostname=check_host,
        )

    def _ready(self, check_host: bool) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            "redis-server exited: " + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        )
        return answers(self.client(check_host))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
