"""TLS to Redis: with a CA and server certificate made here, ``rediss://`` connects only when the
certificate verifies against the configured CA (ATOMQ_REDIS_SSL_CA_CERTS) and names the host;
a wrong CA or a wrong host name is a one-line error and a non-zero exit, never a silent
unverified connection. Workers (both classes), the CLI and the API all go through it."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomq.core.connection import connect
from atomq.core.errors import RedisUnavailableError
from atomq.core.settings import load_settings
from atomq.engine.task_queue import TaskQueue
from reliability.report import report
from reliability.security_support import TlsRedis
from testkit.certs import issue_server_cert, make_ca
from testkit.support import cli_env, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsRedis, Path]]:
    """A TLS-only redis-server whose certificate names ``localhost`` only (no IP), and a
    second, unrelated CA."""
    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(base / "ca", "atomq-test-ca")
    other = make_ca(base / "other", "someone-elses-ca")
    cert, key = issue_server_cert(ca, base / "ca", ["localhost"])
    server = TlsRedis(base / "redis", cert, key, ca.cert_path).start()
    try:
        yield server, other.cert_path
    finally:
        server.stop()


@pytest.fixture(scope="module")
def misnamed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS redis-server on loopback whose (validly signed) certificate names another host."""
    base = tmp_path_factory.mktemp("tls-misnamed")
    ca = make_ca(base / "ca", "atomq-test-ca")
    cert, key = issue_server_cert(ca, base / "ca", ["redis.example.internal"])
    server = TlsRedis(base / "redis", cert, key, ca.cert_path).start(check_host=False)
    try:
        yield server
    finally:
        server.stop()


def _env(tmp_path: Path, url: str, ca: Path | None) -> dict[str, str]:
    extra = {"ATOMQ_REDIS_SSL_CA_CERTS": str(ca)} if ca else {}
    return cli_env(url, tmp_path / "var", **extra)


def test_rediss_connects_with_verification_and_a_worker_runs_jobs_over_it(tls, tmp_path):
    server, _ = tls
    settings = load_settings(
        redis_url=server.url(), redis_ssl_ca_certs=str(server.ca), task_modules=["tests.jobs"]
    )
    client = connect(settings)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert kwargs["ssl_check_hostname"] is True
    client.flushall()
    tq = TaskQueue(settings=settings, connection=client)
    env = _env(tmp_path, server.url(), server.ca)
    timings = {}
    for wclass in ("fast", "rq"):
        job = tq.enqueue("add", a=20, b=22)
        started = time.monotonic()
        done = run_cli(env, "worker", "--burst", "--worker-class", wclass, timeout=60)
        timings[wclass] = round(time.monotonic() - started, 2)
        assert done.returncode == 0, done.stderr
        status = tq.get_job_status(job.id)
        assert status["status"] == "finished" and status["result"] == 42, status
    # The CLI reads the same server over TLS.
    info = run_cli(env, "info")
    assert info.returncode == 0, info.stderr
    assert "default" in info.stdout
    # The plain protocol on the TLS port gets nowhere: the server only speaks TLS.
    plain = run_cli(_env(tmp_path, f"redis://127.0.0.1:{server.port}/0", None), "info", timeout=30)
    assert plain.returncode != 0
    client.close()
    report("security_tls", worker_burst_seconds=timings, verified=True)


def test_the_api_reaches_redis_over_tls(tls, tmp_path):
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app

    server, other_ca = tls
    for ca, expected in ((server.ca, 200), (other_ca, 503)):
        settings = load_settings(
            redis_url=server.url(),
            redis_ssl_ca_certs=str(ca),
            task_modules=["tests.jobs"],
            database_url=f"sqlite:///{tmp_path / 'api.db'}",
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            ready = api.get("/ready")
            assert ready.status_code == expected, ready.text


@pytest.mark.parametrize(
    ("case", "host", "reason"),
    [
        ("wrong CA", "localhost", "self-signed certificate in certificate chain"),
        ("no CA (system CAs only)", "localhost", "self-signed certificate in certificate chain"),
        ("IP not in the certificate", "127.0.0.1", "IP address mismatch"),
        ("host name not in the certificate", "localhost", "Hostname mismatch"),
    ],
)
def test_a_wrong_ca_or_host_name_is_refused_with_one_clear_line(tls, misnamed, tmp_path, case, host, reason):
    server, other_ca = tls
    if case == "host name not in the certificate":
        server = misnamed
    ca = {"wrong CA": other_ca, "no CA (system CAs only)": None}.get(case, server.ca)
    env = _env(tmp_path, server.url(host), ca)
    for command in (("info",), ("worker", "--burst")):
        done = run_cli(env, *command, timeout=60)
        assert done.returncode != 0, (case, command, done.stdout)
        error_lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(error_lines) == 1, (case, command, done.stderr)
        assert "Traceback" not in done.stderr
        line = error_lines[0]
        assert "certificate verify failed" in line and reason in line, line
        assert f"rediss://{host}:{server.port}" in line and "ATOMQ_REDIS_SSL_CA_CERTS" in line, line
    # The library says the same (what an embedding web application sees).
    settings = load_settings(redis_url=server.url(host), redis_ssl_ca_certs=str(ca) if ca else None)
    with pytest.raises(RedisUnavailableError, match=reason):
        connect(settings)
