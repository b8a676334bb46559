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
So this pool keeps each origin's idle connections on a stack and finds one in constant time;
the connections themselves (HTTP/1.1 over h11, TLS, timeouts, the guarded connect) are
httpcore's own ``AsyncHTTPConnection``.

It subclasses httpcore's pool only so that httpx's transport, which holds an
``AsyncConnectionPool``, can hold it; the parent's request queue and connection list are
unused.
"""

from __future__ import annotations

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
        self._idle: dict[Origin, list[httpcore.AsyncHTTPConnection]] = {}
        self._idle_count = 0
        #: Every connection open or opening, idle or in use: what ``aclose`` closes.
        self._open: set[httpcore.AsyncHTTPConnection] = set()
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
            connection = self._new(request)
        try:
            response = await connection.handle_async_request(request)
        except httpcore.ConnectionNotAvailable:
            # The idle connection closed between the look and the send: nothing was sent on
            # it, so the request goes once on a new connection.
            await self._discard(connection)
            connection = self._new(request)
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

    def _new(self, request: httpcore.Request) -> httpcore.AsyncHTTPConnection:
        connection = httpcore.AsyncHTTPConnection(
            origin=request.url.origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._network_backend,
        )
        self._open.add(connection)
        return connection

    async def _send_new(
        self, connection: httpcore.AsyncHTTPConnection, request: httpcore.Request
    ) -> httpcore.Response:
        try:
            return await connection.handle_async_request(request)
        except BaseException:
            await self._discard(connection)
            raise

    async def _take_idle(self, origin: Origin) -> httpcore.AsyncHTTPConnection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            self._idle_count -= 1
            if connection.is_idle() and not connection.has_expired():
                return connection
            await self._discard(connection)
        return None

    async def _release(self, origin: Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        """A response was closed: keep its connection for the next request, or close it."""
        if self._closed or not connection.is_idle() or self._idle_count >= self._max_keepalive_connections:
            await self._discard(connection)
            return
        self._idle.setdefault(origin, []).append(connection)
        self._idle_count += 1

    async def _sweep(self) -> None:
        """Close idle connections that expired or whose server hung up."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        stale: list[httpcore.AsyncHTTPConnection] = []
        for origin, stack in list(self._idle.items()):
            keep: list[httpcore.AsyncHTTPConnection] = []
            for connection in stack:
                (stale if connection.has_expired() else keep).append(connection)
            self._idle_count -= len(stack) - len(keep)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        for connection in stale:
            await self._discard(connection)

    async def _discard(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self._open.discard(connection)
        await _close_quietly(connection)


async def _close_quietly(connection: httpcore.AsyncHTTPConnection) -> None:
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
        connection: httpcore.AsyncHTTPConnection,
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
