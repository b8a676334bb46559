"""The allowlist at connect time, for the sync and the async guarded transports alike.

Names are answered by a stand-in ``getaddrinfo`` (the resolver a hostile DNS server would be);
the servers are real local ones. Only 127.0.0.1 is allowed: 127.0.0.2 stands for an internal
service, and a name that first resolved to 127.0.0.1 and now to 127.0.0.2 is DNS rebinding.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from atomq.features.posts.netguard import AsyncGuardedTransport, GuardedTransport, HostPolicy, blocked
from testkit.certs import issue_server_cert, make_ca
from testkit.fakes.server import FakeServer, Recorded
from testkit.fakes.webhook import FakeWebhookReceiver

POLICY = HostPolicy.parse(["127.0.0.1"])


def get(kind: str, url: str) -> int:
    """GET ``url`` through a fresh guarded client of ``kind``; the status code."""
    if kind == "sync":
        with httpx.Client(transport=GuardedTransport(POLICY), timeout=5) as client:
            return client.get(url).status_code

    async def fetch() -> int:
        async with httpx.AsyncClient(transport=AsyncGuardedTransport(POLICY), timeout=5) as client:
            return (await client.get(url)).status_code

    return asyncio.run(fetch())


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names resolved from this table (what the test changes between two connections)."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host], int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def servers() -> Iterator[tuple[FakeWebhookReceiver, FakeWebhookReceiver]]:
    """A receiver on the allowed 127.0.0.1 and one on the internal 127.0.0.2, same port."""
    allowed = FakeWebhookReceiver().start()
    internal = FakeWebhookReceiver()
    internal.host, internal.port = "127.0.0.2", allowed.port
    internal.start()
    yield allowed, internal
    allowed.stop()
    internal.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_internal_address_is_never_connected_to(kind, servers):
    allowed, internal = servers
    assert get(kind, f"http://127.0.0.1:{allowed.port}/ok") == 401  # reached (unsigned: refused)
    with pytest.raises(httpx.ConnectError) as info:
        get(kind, f"http://127.0.0.2:{internal.port}/secret")
    assert blocked(info.value)
    assert "ATOMQ_POSTS_ALLOWED_HOSTS does not allow" in str(info.value)
    assert internal.requests == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_name_rebound_to_an_internal_address_is_refused_when_connecting(kind, servers, answers):
    allowed, internal = servers
    answers["rebind.test"] = "127.0.0.1"
    assert get(kind, f"http://rebind.test:{allowed.port}/first") == 401
    answers["rebind.test"] = "127.0.0.2"  # the next connection resolves again
    with pytest.raises(httpx.ConnectError) as info:
        get(kind, f"http://rebind.test:{allowed.port}/second")
    assert blocked(info.value)
    assert "rebind.test resolves to 127.0.0.2" in str(info.value)
    assert [r.path for r in allowed.requests] == ["/first"]
    assert internal.requests == []


def test_an_idle_connection_the_platform_closed_is_seen_as_expired_and_replaced():
    # httpcore asks each idle connection whether it is readable: an idle keep-alive connection
    # that reads is one the server wrote to or closed, and must not carry the next request.
    from atomq.features.posts.netguard import _open

    async def scenario() -> list[bool]:
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put(writer)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        seen = []
        try:
            stream = await _open(ipaddress.ip_address("127.0.0.1"), port, 5, None, None)
            theirs = await accepted.get()
            seen.append(stream.get_extra_info("is_readable"))  # idle and open: reusable
            theirs.write(b"x")
            await asyncio.sleep(0.2)
            seen.append(stream.get_extra_info("is_readable"))
            assert await stream.read(10, 1) == b"x"
            seen.append(stream.get_extra_info("is_readable"))
            theirs.close()
            await asyncio.sleep(0.2)
            seen.append(stream.get_extra_info("is_readable"))  # closed by the other side: expired
            assert await stream.read(10, 1) == b""
            await stream.aclose()
        finally:
            server.close()
            await server.wait_closed()
        return seen

    assert asyncio.run(scenario()) == [False, True, False, True]


def test_a_silent_platform_times_out_and_a_large_answer_arrives_whole():
    from atomq.features.posts.netguard import _open

    body = b"y" * (3 * 1024 * 1024)  # past the read buffer's limit: reading pauses and resumes

    async def scenario() -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if await reader.readline() == b"big\n":
                    writer.write(body)
                    await writer.drain()
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            silent = await _open(ipaddress.ip_address("127.0.0.1"), port, 5, None, None)
            waited = time.monotonic()
            with pytest.raises(httpcore.ReadTimeout):
                await silent.read(100, 0.2)
            assert 0.15 < time.monotonic() - waited < 2
            await silent.aclose()
            loud = await _open(ipaddress.ip_address("127.0.0.1"), port, 5, None, None)
            await loud.write(b"big\n", 5)
            got = bytearray()
            while chunk := await loud.read(65536, 5):
                got += chunk
                await asyncio.sleep(0)
            assert bytes(got) == body
            await loud.aclose()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_platform_that_stops_reading_is_a_write_timeout():
    """A write returns at once while the connection's buffer has room (no deadline is set up
    then); once the peer stops reading and the buffers fill, the write's timeout holds."""
    from atomq.features.posts.netguard import _open

    async def scenario() -> None:
        done = asyncio.Event()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await done.wait()  # never reads: its buffer fills, then the sockets'
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, limit=1024)
        port = server.sockets[0].getsockname()[1]
        stream = await _open(ipaddress.ip_address("127.0.0.1"), port, 5, None, None)
        try:
            chunk, sent = b"z" * (1024 * 1024), 0
            started = time.monotonic()

            async def write_until_stuck() -> None:
                nonlocal sent
                while sent < 64:  # far more than loopback's socket buffers hold
                    await stream.write(chunk, 0.3)
                    sent += 1

            with pytest.raises(httpcore.WriteTimeout):
                await write_until_stuck()
            assert time.monotonic() - started < 10
            assert sent >= 1  # the first writes went through without waiting
        finally:
            done.set()
            await stream.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_closed_port_is_a_connect_error_and_https_verifies_the_certificate(tmp_path):
    from atomq.features.posts.netguard import _open

    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]

    async def refused() -> None:
        with pytest.raises(httpcore.ConnectError):
            await _open(ipaddress.ip_address("127.0.0.1"), closed_port, 5, None, None)

    asyncio.run(refused())

    ca = make_ca(tmp_path, "publisher-test-ca")
    cert, key = issue_server_cert(ca, tmp_path, ["localhost"], ips=["127.0.0.1"])
    server = _TlsEcho(cert, key).start()
    try:
        trusting = ssl.create_default_context(cafile=str(ca.cert_path))

        async def fetch(context: ssl.SSLContext) -> tuple[int, str]:
            transport = AsyncGuardedTransport(POLICY, ssl_context=context)
            async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                first = await client.post(f"https://127.0.0.1:{server.port}/a", content=b"one")
                second = await client.post(f"https://127.0.0.1:{server.port}/b", content=b"two")
                return second.status_code, first.text + second.text

        assert asyncio.run(fetch(trusting)) == (200, "onetwo")
        assert len(set(server.peers)) == 1  # both requests on one kept-alive TLS connection
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            asyncio.run(fetch(ssl.create_default_context()))  # not signed by a trusted CA
    finally:
        server.stop()


class _TlsEcho:
    """An HTTPS server (HTTP/1.1, keep-alive) in a thread that answers each POST with its body."""

    def __init__(self, cert: Path, key: Path) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        peers = self.peers = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                peers.append(self.client_address)
                data = self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> _TlsEcho:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _SetsCookies(FakeServer):
    """A platform that sets a session cookie on every answer."""

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        return 200, {"Set-Cookie": "session=account-a; Path=/"}, {"ok": True}


@pytest.mark.parametrize("client_kind", ["publisher", "plain httpx"])
def test_a_cookie_one_account_got_never_rides_on_the_next_request(client_kind):
    # One client serves many accounts' posts to the same host: a cookie set in answer to one
    # account's publish must not be sent with another's.
    from atomq.features.posts.publishers.http import make_client

    server = _SetsCookies().start()

    async def post_twice() -> None:
        client = make_client(POLICY, 5) if client_kind == "publisher" else httpx.AsyncClient(timeout=5)
        async with client:
            for account in ("a", "b"):
                (await client.post(f"{server.url}/hook", json={"account": account})).raise_for_status()

    try:
        asyncio.run(post_twice())
        sent = [request.headers.get("cookie") for request in server.requests]
    finally:
        server.stop()
    # Plain httpx keeps the cookie (which is what shows the platform's cookie is a real one).
    assert sent == ([None, None] if client_kind == "publisher" else [None, "session=account-a"])
