"""Keep-alive HTTP/1.1 connections for the publishers' async clients, kept per origin.

httpcore's ``AsyncConnectionPool`` looks over every connection it holds each time a request
starts and again when one ends (which is free, which has expired, which to close), and does it
under AnyIO locks and cancel-shield scopes. With posts in flight by the hundred that look was
most of a publish's CPU: ``bench/bench_http_pool.py``, 150 requests in flight over 8 clients,
measured 0.89 ms of CPU per request through httpx with httpcore's pool and 0.38 ms with this
one (0.43x), same run.

A publisher needs much less than a general pool: no HTTP/2 (nothing negotiates it), no
proxies, and no queue of waiting requests, as the requests in flight are bounded by the
worker's concurrency (one publish in flight per account, one request in flight per publish).
So this pool keeps each origin's idle connections on a stack and finds one in constant time.
It opens connections itself (TCP through the guarded network backend, then TLS for https, as
httpcore's ``AsyncHTTPConnection`` does, which would add a lock and a layer to every request)
and speaks HTTP/1.1 over them with httpcore's own ``AsyncHTTP11Connection`` (h11, timeouts).

It subclasses httpcore's pool only so that httpx's transport, which holds an
``AsyncConnectionPool``, can hold it; the parent's request queue and connection list are
unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import httpcore

#: An origin: scheme, host and port, as httpcore spells them.
Origin = tuple[bytes, bytes, int | None]

#: Seconds between looks for idle connections that expired or that the server closed.
SWEEP_INTERVAL = 1.0


class Http11Connection(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection, its state guarded by an asyncio lock.

    httpcore guards a connection's state with an AnyIO lock, taken twice per request (as it
    starts and as its response is closed), and AnyIO's lock yields to the event loop even when
    nobody holds it: a cancel-shielded checkpoint, two extra passes through the loop per
    request. An asyncio lock excludes the same way and yields only when it must wait. With 150
    requests in flight, that was about a tenth of a request's CPU (``bench/bench_http_pool.py``).
    The lock is replaced through a private attribute: ``tests/test_posts_connpool.py`` checks
    that httpcore still has it, so an upgrade that renames it fails there instead of quietly
    costing the CPU again (it would still work).
    """

    def __init__(
        self, origin: httpcore.Origin, stream: httpcore.AsyncNetworkStream, keepalive_expiry: float | None
    ) -> None:
        super().__init__(origin=origin, stream=stream, keepalive_expiry=keepalive_expiry)
        self._state_lock = asyncio.Lock()  # type: ignore[assignment]


class OriginPool(httpcore.AsyncConnectionPool):
    """Idle connections per origin (the most recently used first), at most
    ``max_keepalive_connections`` idle in all, each closed once idle longer than
    ``keepalive_expiry`` seconds or once its server hangs up."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        network_backend: httpcore.AsyncNetworkBackend,
        max_keepalive_connections: int,
        keepalive_expiry: float,
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=network_backend,
        )
        # HTTP/1.1 only, as httpcore's connection offers it (nothing here speaks HTTP/2).
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._tls = ssl_context
        self._idle: dict[Origin, list[Http11Connection]] = {}
        self._idle_count = 0
        #: Every connection open, idle or in use: what ``aclose`` closes.
        self._open: set[Http11Connection] = set()
        self._next_sweep = 0.0
        self._closed = False

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        return list(self._open)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on an idle connection to its origin, or on a new one."""
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        url = request.url
        scheme = url.scheme.lower()
        if scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode(errors='replace')!r}")
        origin: Origin = (scheme, url.host.lower(), url.port)
        if time.monotonic() >= self._next_sweep:
            await self._sweep()
        connection = await self._take_idle(origin)
        if connection is None:
            connection = await self._connect(request)
        try:
            response = await connection.handle_async_request(request)
        except httpcore.ConnectionNotAvailable:
            # The idle connection closed between the look and the send: nothing was sent on
            # it, so the request goes once on a new connection.
            await self._discard(connection)
            connection = await self._connect(request)
            response = await self._send_new(connection, request)
        except BaseException:
            await self._discard(connection)
            raise
        stream = response.stream
        assert isinstance(stream, AsyncIterable), "an async connection answers with an async stream"
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReleasingStream(stream, self, origin, connection),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        open_connections = list(self._open)
        self._open.clear()
        self._idle.clear()
        self._idle_count = 0
        for connection in open_connections:
            await _close_quietly(connection)

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def _connect(self, request: httpcore.Request) -> Http11Connection:
        """A new connection to the request's origin, within its connect timeout."""
        origin = request.url.origin
        timeout = request.extensions.get("timeout", {}).get("connect")
        host = origin.host.decode("ascii")
        stream = await self._network_backend.connect_tcp(host=host, port=origin.port, timeout=timeout)
        if origin.scheme == b"https":
            server_hostname = request.extensions.get("sni_hostname") or host
            stream = await stream.start_tls(self._tls, server_hostname=server_hostname, timeout=timeout)
        connection = Http11Connection(origin, stream, self._keepalive_expiry)
        self._open.add(connection)
        return connection

    async def _send_new(self, connection: Http11Connection, request: httpcore.Request) -> httpcore.Response:
        try:
            return await connection.handle_async_request(request)
        except BaseException:
            await self._discard(connection)
            raise

    async def _take_idle(self, origin: Origin) -> Http11Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            self._idle_count -= 1
            if connection.is_idle() and not connection.has_expired():
                return connection
            await self._discard(connection)
        return None

    async def _release(self, origin: Origin, connection: Http11Connection) -> None:
        """A response was closed: keep its connection for the next request, or close it."""
        if self._closed or not connection.is_idle() or self._idle_count >= self._max_keepalive_connections:
            await self._discard(connection)
            return
        self._idle.setdefault(origin, []).append(connection)
        self._idle_count += 1

    async def _sweep(self) -> None:
        """Close idle connections that expired or whose server hung up."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        stale: list[Http11Connection] = []
        for origin, stack in list(self._idle.items()):
            keep: list[Http11Connection] = []
            for connection in stack:
                (stale if connection.has_expired() else keep).append(connection)
            self._idle_count -= len(stack) - len(keep)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        for connection in stale:
            await self._discard(connection)

    async def _discard(self, connection: Http11Connection) -> None:
        self._open.discard(connection)
        await _close_quietly(connection)


async def _close_quietly(connection: Http11Connection) -> None:
    # A connection being dropped has failed or is no longer wanted: an error while closing
    # it says nothing the caller could act on.
    with contextlib.suppress(Exception):
        await connection.aclose()


class _ReleasingStream:
    """A response body that gives its connection back to the pool when it is closed."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: OriginPool,
        origin: Origin,
        connection: Http11Connection,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
        except BaseException:
            # Cancelled mid-close (a job's time limit) or failed: the connection may be left
            # half-way through the exchange, so it is closed rather than kept.
            await self._pool._discard(self._connection)
            raise
        await self._pool._release(self._origin, self._connection)
