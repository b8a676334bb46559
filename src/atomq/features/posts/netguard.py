"""Which hosts publishers may call, checked when an account is saved *and* at connect time.

``ATOMQ_POSTS_ALLOWED_HOSTS`` lists host names (``hooks.example.com``), domain wildcards
(``*.example.com``), IP addresses and CIDR blocks; ``*`` admits any *public* address.
Loopback, private, link-local (cloud metadata at 169.254.169.254), multicast and reserved
addresses are refused unless a non-``*`` entry names them, and so are names that resolve to
them. Without this, anyone allowed to add a webhook account could make workers call
internal services.

Checking the URL when the account is saved is not enough (DNS can answer differently later),
so :class:`GuardedTransport` (sync clients) and :class:`AsyncGuardedTransport` (async
clients) resolve the name themselves each time they open a connection, check every address and
connect to a checked one; TLS still verifies the certificate against the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpcore
import httpx

from atomq.core.errors import InvalidInputError
from atomq.features.posts.connpool import OriginPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddressError(httpcore.ConnectError):
    """A connection was refused by the allowlist (raised inside the transport)."""


@dataclass(frozen=True)
class HostPolicy:
    """The parsed allowlist."""

    any_public: bool
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostPolicy:
        any_public = False
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry == "*":
                any_public = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    names.add(entry)
        return cls(any_public, frozenset(names), tuple(suffixes), tuple(networks))

    def names_host(self, host: str) -> bool:
        """Whether a non-wildcard entry names ``host`` (which then may be private)."""
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def admits(self, host: str, address: IPAddress) -> bool:
        """Whether connecting to ``address`` (which ``host`` resolved to) is allowed."""
        if self.names_host(host):
            return True
        # An entry may name the IPv6 address or the IPv4 address it carries.
        candidates = (address, *embedded_ipv4(address))
        if any(candidate in network for candidate in candidates for network in self.networks):
            return True
        return self.any_public and is_public(address)

    def describe(self) -> str:
        parts = (["*"] if self.any_public else []) + sorted(self.names) + [f"*{s}" for s in self.suffixes]
        parts += [str(n) for n in self.networks]
        return ", ".join(parts) or "nothing"


#: IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-compatible (``::a.b.c.d``,
#: RFC 4291, deprecated but still routed by some stacks), IPv4-translated (``::ffff:0:a.b.c.d``,
#: RFC 2765) and the NAT64 well-known prefix (``64:ff9b::a.b.c.d``, RFC 6052). A translator or
#: a host stack may deliver a packet for them to the IPv4 address, so that address is judged.
_LOW32_FORMS = tuple(ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"))

#: NAT64 local-use prefix (RFC 8215): never global, and the IPv4 address may sit at any of
#: RFC 6052's positions, so each candidate is decoded (for explicit allowlist entries).
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")

#: Where RFC 6052 puts the IPv4 address for each prefix length: (bit offset, bits) pieces,
#: skipping bits 64-71 (the reserved "u" octet).
_RFC6052_PIECES = {
    48: ((48, 16), (72, 16)),
    56: ((56, 8), (72, 24)),
    64: ((72, 32),),
    96: ((96, 32),),
}


def _rfc6052(address: ipaddress.IPv6Address, pieces: tuple[tuple[int, int], ...]) -> ipaddress.IPv4Address:
    value = 0
    for offset, bits in pieces:
        value = (value << bits) | ((int(address) >> (128 - offset - bits)) & ((1 << bits) - 1))
    return ipaddress.IPv4Address(value)


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``address`` carries: IPv4-mapped, IPv4-compatible, IPv4-translated,
    NAT64 (64:ff9b::/96 and 64:ff9b:1::/48), 6to4 (2002::/16), and Teredo's server and client
    (2001::/32). Connecting to such an IPv6 address may reach the IPv4 one (through a NAT64
    gateway, a 6to4 or Teredo relay, or the host's own stack), so it is judged as that address."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    # '::' and '::1' are themselves (unspecified, loopback), not IPv4-compatible forms.
    if int(address) > 1 and any(address in form for form in _LOW32_FORMS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _NAT64_LOCAL:
        found.extend(_rfc6052(address, pieces) for pieces in _RFC6052_PIECES.values())
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client), the client already un-obfuscated
    return list(dict.fromkeys(found))


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address. An IPv6 address that carries an IPv4 address
    (:func:`embedded_ipv4`) is public only when every IPv4 address it carries is; NAT64's
    local-use prefix never is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        embedded = embedded_ipv4(address)
        if embedded:
            return all(is_public(inner) for inner in embedded)
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    return seen


def check_url(url: str, policy: HostPolicy, *, field: str) -> str:
    """Validate a publisher URL for saving: http(s), a host, no user info, an allowed target.

    Raises :class:`InvalidInputError` naming ``field`` and the reason.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInputError(f"{url!r} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"{url!r} must be an http:// or https:// URL with a host", field=field)
    if parts.username or parts.password:
        raise InvalidInputError(
            "the URL must not carry a user name or password; put secrets in credentials", field=field
        )
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        raise InvalidInputError(f"cannot resolve {host!r}: {exc.strerror or exc}", field=field) from None
    refused = [a for a in addresses if not policy.admits(host, a)]
    if refused or not addresses:
        raise InvalidInputError(
            f"{host} ({', '.join(str(a) for a in refused) or 'no address'}) is not an allowed target: "
            f"private, loopback and link-local addresses need an explicit entry in "
            f"ATOMQ_POSTS_ALLOWED_HOSTS (now: {policy.describe()})",
            field=field,
        )
    return url


#: Connections one guarded pool keeps: in total, and idle for reuse (per pool, all hosts).
#: httpcore 1.0's sync pool closes an idle connection whenever it holds more than
#: ``max_keepalive_connections`` connections in all (idle or not). The async pool is atomq's
#: :class:`~atomq.features.posts.connpool.OriginPool`, which caps only idle connections and
#: leaves the number in use to the worker's concurrency (``max_connections`` is not used).
SYNC_POOL_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5, keepalive_expiry=30.0)
ASYNC_POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0)


def _admitted(policy: HostPolicy, host: str, addresses: list[IPAddress]) -> list[IPAddress]:
    """The addresses of ``host`` the policy allows, or :class:`BlockedAddressError` if none."""
    allowed = [a for a in addresses if policy.admits(host, a)]
    if not allowed:
        raise BlockedAddressError(
            f"{host} resolves to {', '.join(map(str, addresses))}, which ATOMQ_POSTS_ALLOWED_HOSTS "
            "does not allow"
        )
    return allowed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, resolving names itself and connecting only to allowed addresses."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for address in _admitted(self.policy, host, addresses):
            try:
                return self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise BlockedAddressError("unix sockets are not a publisher target")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _Reading(asyncio.Protocol):
    """What a connection received and whether it ended, for :class:`_AsyncioStream`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self._readable: asyncio.Future[bool] | None = None
        self._drained: asyncio.Future[None] | None = None
        #: Done once the connection is closed and its socket released.
        self.lost: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # the reader catches up first
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake_reader()
        return False  # close our side too: HTTP/1.1 has nothing to send after the peer's end

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake_reader()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def readable(self, timeout: float | None = None) -> bool:
        """Wait until there is data or the connection ended (True), or ``timeout`` seconds
        passed (False).

        The deadline is a timer that ends the wait, which costs a fraction of an
        ``asyncio.timeout`` scope: a publish waits here once per response.
        """
        if self.buffer or self.ended:
            return True
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[bool] = loop.create_future()
        self._readable = readable
        timer = loop.call_later(timeout, _expire, readable) if timeout is not None else None
        try:
            return await readable
        finally:
            self._readable = None
            if timer is not None:
                timer.cancel()

    @property
    def writing_paused(self) -> bool:
        """Whether the transport's write buffer is over its high-water mark."""
        return self._drained is not None

    async def drained(self) -> None:
        """Until the transport's write buffer is below its high-water mark again."""
        if self._drained is not None:
            await asyncio.shield(self._drained)

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(True)


def _expire(waiting: asyncio.Future[bool]) -> None:
    if not waiting.done():
        waiting.set_result(False)


#: Bytes a connection buffers before it stops reading from its socket until they are read.
_READ_BUFFER_LIMIT = 256 * 1024

#: Seconds a closing connection waits for its peer (TLS close_notify) before it is cut off.
_CLOSE_WAIT_SECONDS = 1.0

#: httpcore's names for a stream's details -> asyncio's names for them on a transport.
_TRANSPORT_INFO = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection for httpcore on asyncio's own transports, in place of its AnyIO stream.

    httpcore takes any network backend; its AnyIO one wraps every read and write in a cancel
    scope with a deadline, behind several layers of typed streams, and answers "is this idle
    connection readable?" (which httpcore's pool asks of every connection it holds, at every
    request start and end) through AnyIO's typed attributes, which rebuild a dictionary per
    question. Together that was about a fifth of a publish's time on the event loop. Here a
    read is a look at a buffer (or one future to wait for), a deadline is ``asyncio.timeout``,
    and readable means "data or end-of-stream has arrived", which the transport, reading all
    the time, already knows.
    """

    def __init__(self, transport: asyncio.Transport, reading: _Reading) -> None:
        self.transport = transport
        self.reading = reading

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        reading = self.reading
        if not reading.buffer and not reading.ended and not await reading.readable(timeout):
            raise httpcore.ReadTimeout(f"nothing received in {timeout:g} s")
        if not reading.buffer:
            if reading.error is not None:
                raise httpcore.ReadError(str(reading.error) or type(reading.error).__name__)
            return b""  # the peer closed the connection
        data = bytes(reading.buffer[:max_bytes])
        del reading.buffer[:max_bytes]
        if reading.reading_paused and len(reading.buffer) <= _READ_BUFFER_LIMIT // 2:
            reading.reading_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self.transport.is_closing():
            raise httpcore.WriteError(
                str(self.reading.error) if self.reading.error else "the connection is closed"
            )
        self.transport.write(buffer)
        if not self.reading.writing_paused:
            return  # the usual case: below the high-water mark, no deadline worth setting up
        try:
            async with asyncio.timeout(timeout):
                await self.reading.drained()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout:g} s") from None

    async def aclose(self) -> None:
        # Wait for the close to finish (a TLS close sends close_notify first), so the socket
        # is released before the loop may end; a peer that does not answer is cut off.
        self.transport.close()
        lost = self.reading.lost
        if lost is None or lost.done():
            return
        try:
            async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
                await asyncio.shield(lost)
        except TimeoutError:
            self.transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self.transport, self.reading, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self.transport.abort()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            self.transport.abort()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self.reading.transport = transport  # flow control now pauses the decrypted side
        return _AsyncioStream(transport, self.reading)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return bool(self.reading.buffer) or self.reading.ended
        name = _TRANSPORT_INFO.get(info)
        return self.transport.get_extra_info(name) if name is not None else None


async def _open(
    address: IPAddress,
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: Iterable[Any] | None,
) -> _AsyncioStream:
    """A TCP connection to ``address``, as httpcore's backends make them (options, bind)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        for option in socket_options or ():
            sock.setsockopt(*option)
        if local_address:
            sock.bind((local_address, 0))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (str(address), port))
        transport, reading = await loop.create_connection(_Reading, sock=sock)
    except TimeoutError:
        sock.close()
        raise httpcore.ConnectTimeout(f"cannot connect to {address}:{port} within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(f"cannot connect to {address}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return _AsyncioStream(transport, reading)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`_GuardedBackend`, on asyncio (:class:`_AsyncioStream`).

    The name is resolved by :func:`resolve` in a worker thread (``getaddrinfo`` blocks), within
    the connect timeout, and only the addresses it checked are connected to.
    """

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                with anyio.fail_after(timeout):
                    addresses = await anyio.to_thread.run_sync(resolve, host, port, abandon_on_cancel=True)
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"cannot resolve {host}: no answer in {timeout:g} s") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for address in _admitted(self.policy, host, addresses):
            try:
                return await _open(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not a publisher target")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every connection goes through the allowlist.

    httpx has no public hook for name resolution, so the connection pool it builds is
    replaced by one using :class:`_GuardedBackend` (same options otherwise).
    """

    def __init__(self, policy: HostPolicy, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=SYNC_POOL_LIMITS)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=SYNC_POOL_LIMITS.max_connections,
            max_keepalive_connections=SYNC_POOL_LIMITS.max_keepalive_connections,
            keepalive_expiry=SYNC_POOL_LIMITS.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """The async :class:`GuardedTransport`: every connection of an ``httpx.AsyncClient``
    goes through the allowlist, checked again each time a connection is opened.

    ``ssl_context`` may be shared by the transports of several event loops (loading the CA
    bundle costs milliseconds; a context is safe to share).
    """

    def __init__(self, policy: HostPolicy, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=ASYNC_POOL_LIMITS)
        self._pool = OriginPool(
            ssl_context=context,
            max_keepalive_connections=ASYNC_POOL_LIMITS.max_keepalive_connections or 0,
            keepalive_expiry=ASYNC_POOL_LIMITS.keepalive_expiry or 0.0,
            network_backend=_AsyncGuardedBackend(policy),
        )


def blocked(exc: BaseException) -> bool:
    """Whether an httpx error was the allowlist refusing the target."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BlockedAddressError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
