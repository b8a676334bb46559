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

import ipaddress
import select
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
#: An async pool serves posts in flight on its loop, so it allows more than a sync one. httpcore
#: 1.0 closes an idle connection whenever the pool holds more than ``max_keepalive_connections``
#: connections in all (idle or not): a loop's clients are split per account
#: (``publishers/clients.py``) so that each pool holds a small share of a worker's
#: connections and keeps them alive, where one pool of 100 reconnected for most publishes.
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


class _PolledStream(httpcore.AsyncNetworkStream):
    """httpcore's stream, answering "is the idle socket readable?" straight from the socket.

    httpcore's pool asks it of every connection it holds, each time a request starts or ends;
    its AnyIO stream answers through AnyIO's typed attributes, which rebuild a dictionary of
    lambdas per question. With a hundred connections that was the biggest single cost of a
    publish, so the socket is looked up once and polled directly.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self.inner = inner
        self.socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _PolledStream(await self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self.socket is not None:
            return _readable(self.socket)
        return self.inner.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (or is closed) right now, without waiting."""
    if sock.fileno() < 0:
        return True  # closed: reading would end at once, which is what httpcore wants to know
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`_GuardedBackend`, on httpcore's AnyIO backend (asyncio).

    The name is resolved by :func:`resolve` in a worker thread (``getaddrinfo`` blocks), within
    the connect timeout, and only the addresses it checked are connected to.
    """

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

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
                return _PolledStream(
                    await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not a publisher target")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


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
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=ASYNC_POOL_LIMITS.max_connections,
            max_keepalive_connections=ASYNC_POOL_LIMITS.max_keepalive_connections,
            keepalive_expiry=ASYNC_POOL_LIMITS.keepalive_expiry,
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
