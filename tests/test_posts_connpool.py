"""The publishers' connection pool (``connpool.OriginPool``) and the lean POST of bytes
(``CookielessClient.post_bytes``), against real local servers: which connection carries each
request, what is kept, what is closed, and that the lean POST sends and raises what httpx's
``post`` does."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpcore
import httpx
import pytest

from atomq.features.posts.connpool import Http11Connection, OriginPool
from atomq.features.posts.netguard import HostPolicy, blocked
from atomq.features.posts.publishers.base import NotSent, OutcomeUnknown, Rejected
from atomq.features.posts.publishers.http import CookielessClient, make_client, send
from testkit.fakes.server import FakeServer, Plan, Recorded
from testkit.support import free_port

POLICY = HostPolicy.parse(["127.0.0.1"])


class Echo(FakeServer):
    """Answers each request with what it received, after the plan's delay and with its headers."""

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        plan = self.next_plan()
        if plan.delay:
            self.wait(plan.delay)
        if isinstance(plan.body, bytes):
            return plan.status, plan.headers, plan.body
        return plan.status, plan.headers, {"path": request.path, "body": request.body.decode()}


@pytest.fixture
def echo() -> Any:
    server = Echo().start()
    yield server
    server.stop()


def pool_of(client: httpx.AsyncClient) -> OriginPool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, OriginPool)
    return pool


def peers(server: FakeServer) -> list[str]:
    return [request.peer for request in server.requests]


def test_one_connection_carries_sequential_requests_and_more_open_only_for_requests_in_flight(echo):
    async def scenario() -> None:
        async with make_client(POLICY, 5) as client:
            for n in range(3):
                assert (await client.post(f"{echo.url}/seq", content=str(n).encode())).status_code == 200
            assert len(set(peers(echo))) == 1
            echo.plan(*[Plan(delay=0.3) for _ in range(4)])
            await asyncio.gather(*(client.post(f"{echo.url}/together", content=b"x") for _ in range(4)))
            together = peers(echo)[3:]
            assert len(set(together)) == 4  # one connection per request in flight
            await client.post(f"{echo.url}/after", content=b"x")
            assert peers(echo)[-1] in together  # an idle one is reused, none opened
            assert len(pool_of(client).connections) == 4

    asyncio.run(scenario())


def test_a_connection_the_server_closes_is_not_reused():
    # One answer per connection, then the server hangs up without saying so beforehand (no
    # "Connection: close"): the next request must go out on a new connection and succeed.
    async def scenario() -> None:
        connections = 0

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        try:
            async with make_client(POLICY, 5) as client:
                for _ in range(3):
                    response = await send(client, url, content=b"{}", headers={})
                    assert response.text == "ok"
                    await asyncio.sleep(0.2)  # the server has hung up meanwhile
                assert connections == 3
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_idle_connections_expire_and_at_most_the_cap_are_kept(echo):
    async def scenario() -> None:
        async with make_client(POLICY, 5) as client:
            pool = pool_of(client)
            pool._keepalive_expiry = 0.2
            pool._max_keepalive_connections = 2
            echo.plan(*[Plan(delay=0.3) for _ in range(4)])
            await asyncio.gather(*(client.post(f"{echo.url}/x", content=b"x") for _ in range(4)))
            assert len(pool.connections) == 2  # two of the four were closed, not kept
            kept = set(peers(echo))
            await asyncio.sleep(1.3)  # past the expiry, and past the next sweep
            # A request to another origin closes them too (the sweep), not only the next
            # request to theirs.
            await client.post(f"{other.url}/y", content=b"y")
            assert len(pool.connections) == 1
            await client.post(f"{echo.url}/y", content=b"y")
            assert peers(echo)[-1] not in kept
            assert len(pool.connections) == 2

    other = Echo().start()
    try:
        asyncio.run(scenario())
    finally:
        other.stop()


def test_a_request_cancelled_mid_answer_closes_its_connection(echo):
    async def scenario() -> None:
        async with make_client(POLICY, 5) as client:
            pool = pool_of(client)
            echo.plan(Plan(delay=2))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # a job's time limit
                    await client.post(f"{echo.url}/slow", content=b"x")
            assert pool.connections == []
            assert (await client.post(f"{echo.url}/next", content=b"x")).status_code == 200
            assert peers(echo)[0] != peers(echo)[1]

    asyncio.run(scenario())


def test_closing_the_client_closes_every_connection_and_refuses_more(echo):
    async def scenario() -> None:
        client = make_client(POLICY, 5)
        pool = pool_of(client)
        await client.post(f"{echo.url}/x", content=b"x")
        assert len(pool.connections) == 1
        await client.aclose()
        assert pool.connections == []
        with pytest.raises(RuntimeError):
            await client.post(f"{echo.url}/x", content=b"x")

    asyncio.run(scenario())


def test_post_bytes_sends_what_post_sends(echo):
    async def scenario() -> None:
        async with make_client(POLICY, 5) as client:
            assert isinstance(client, CookielessClient)
            headers = {"Content-Type": "application/json", "X-Signature": "sha256=abc"}
            slow = await client.post(f"{echo.url}/hook?k=1", content=b'{"a":1}', headers=headers)
            lean = await client.post_bytes(f"{echo.url}/hook?k=1", b'{"a":1}', headers)
            assert (lean.status_code, lean.json()) == (slow.status_code, slow.json())
            assert lean.json() == {"path": "/hook?k=1", "body": '{"a":1}'}
            first, second = echo.requests
            assert (second.method, second.path, second.body) == (first.method, first.path, first.body)
            for name in ("host", "content-length", "content-type", "x-signature", "user-agent", "accept"):
                assert second.headers[name] == first.headers[name], name
            assert first.peer == second.peer  # the same pool, the same connection

    asyncio.run(scenario())


def test_post_bytes_decodes_a_compressed_answer_and_send_encodes_json_as_httpx(echo):
    async def scenario() -> None:
        async with make_client(POLICY, 5) as client:
            echo.plan(Plan(body=gzip.compress(b'{"id": "7"}'), headers={"Content-Encoding": "gzip"}))
            assert (await client.post_bytes(f"{echo.url}/z", b"", {})).json() == {"id": "7"}
            await send(client, f"{echo.url}/j", json={"status": "héllo"}, headers={"X": "1"})
            httpx_way = httpx.Request("POST", echo.url, json={"status": "héllo"})
            assert echo.requests[-1].body == httpx_way.read()
            assert echo.requests[-1].headers["content-type"] == "application/json"
            assert json.loads(echo.requests[-1].body) == {"status": "héllo"}

    asyncio.run(scenario())


async def raised(call: Any) -> Exception:
    """The error ``call`` (an awaitable) raised; fails the test if it raised none."""
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


def test_post_bytes_raises_what_post_raises_and_send_maps_it_to_outcomes(echo):
    async def scenario() -> None:
        closed = f"http://127.0.0.1:{free_port()}/hook"
        internal = "http://127.0.0.2:9/internal"
        async with make_client(POLICY, 0.3) as client:
            echo.plan(Plan(delay=1), Plan(delay=1))  # the two slow requests below
            for url, kind in (
                (closed, httpx.ConnectError),
                (f"{echo.url}/slow", httpx.ReadTimeout),
                (internal, httpx.ConnectError),
            ):
                lean = await raised(client.post_bytes(url, b"x", {}))
                full = await raised(client.post(url, content=b"x"))
                assert type(lean) is type(full) is kind, (url, lean, full)
                assert blocked(lean) == blocked(full) == (url == internal)
            with pytest.raises(NotSent):
                await send(client, closed, content=b"x", headers={})
            echo.plan(Plan(delay=1))
            with pytest.raises(OutcomeUnknown):
                await send(client, f"{echo.url}/slow", content=b"x", headers={})
            with pytest.raises(Rejected):
                await send(client, internal, content=b"x", headers={})
            with pytest.raises(httpx.UnsupportedProtocol):
                await client.post_bytes("ftp://127.0.0.1/x", b"x", {})
            echo.plan(Plan(status=422, body=b'{"error": "too long"}'))
            with pytest.raises(Rejected, match="422: too long"):
                await send(client, f"{echo.url}/hook", content=b"x", headers={})

    asyncio.run(scenario())


def test_connections_guard_their_state_with_an_asyncio_lock_in_place_of_httpcores():
    """``Http11Connection`` replaces httpcore's private ``_state_lock`` (an AnyIO lock that
    yields to the loop on every acquire). This fails when an httpcore upgrade renames it, which
    would otherwise quietly bring the cost back; the pool's connections are ours."""
    origin = httpcore.Origin(b"http", b"127.0.0.1", 80)
    stock = httpcore.AsyncHTTP11Connection(origin=origin, stream=None)  # type: ignore[arg-type]
    assert type(vars(stock)["_state_lock"]).__name__ == "AsyncLock"
    ours = Http11Connection(origin, None, None)  # type: ignore[arg-type]
    assert isinstance(vars(ours)["_state_lock"], asyncio.Lock)

    async def scenario() -> None:
        server = Echo().start()
        try:
            async with make_client(POLICY, 5) as client:
                for _ in range(2):
                    assert (await client.post(f"{server.url}/x", content=b"1")).status_code == 200
                (connection,) = pool_of(client).connections
                assert isinstance(connection, Http11Connection) and connection.is_idle()
        finally:
            server.stop()

    asyncio.run(scenario())
