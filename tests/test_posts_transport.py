"""The allowlist at connect time, for the sync and the async guarded transports alike.

Names are answered by a stand-in ``getaddrinfo`` (the resolver a hostile DNS server would be);
the servers are real local ones. Only 127.0.0.1 is allowed: 127.0.0.2 stands for an internal
service, and a name that first resolved to 127.0.0.1 and now to 127.0.0.2 is DNS rebinding.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from atomq.features.posts.netguard import AsyncGuardedTransport, GuardedTransport, HostPolicy, blocked
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
    # httpcore asks each idle connection whether its socket is readable: an idle keep-alive
    # socket that reads is one the server closed, and must not carry the next request.
    from atomq.features.posts.netguard import _readable

    ours, theirs = socket.socketpair()
    try:
        assert not _readable(ours)  # idle and open: reusable
        theirs.sendall(b"x")
        assert _readable(ours)
        ours.recv(1)
        assert not _readable(ours)
        theirs.close()
        assert _readable(ours)  # closed by the other side: expired
    finally:
        ours.close()
        theirs.close()
    assert _readable(ours)  # our own socket closed


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
