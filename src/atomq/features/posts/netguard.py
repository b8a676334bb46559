"""Which hosts publishers may call, checked when an account is saved *and* at connect time.

``ATOMQ_POSTS_ALLOWED_HOSTS`` lists host names (``hooks.example.com``), domain wildcards
(``*.example.com``), IP addresses and CIDR blocks; ``*`` admits any *public* address.
Loopback, private, link-local (cloud metadata at 169.254.169.254), multicast and reserved
addresses are refused unless a non-``*`` entry names them, and so are names that resolve to
them. Without this, anyone allowed to add a webhook account could make workers call
internal services.

Checking the URL when the account is saved is not enough (DNS can answer differently later),
so :class:`GuardedTransport` resolves the name itself when connecting, checks every address
and connects to a checked one; TLS still verifies the certificate against the name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
        if any(address in network for network in self.networks):
            return True
        return self.any_public and is_public(address)

    def describe(self) -> str:
        parts = (["*"] if self.any_public else []) + sorted(self.names) + [f"*{s}" for s in self.suffixes]
        parts += [str(n) for n in self.networks]
        return ", ".join(parts) or "nothing"


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped IPv6 judged by its IPv4 part)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
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
        allowed = [a for a in addresses if self.policy.admits(host, a)]
        if not allowed:
            raise BlockedAddressError(
                f"{host} resolves to {', '.join(map(str, addresses))}, which ATOMQ_POSTS_ALLOWED_HOSTS "
                "does not allow"
            )
        last: Exception | None = None
        for address in allowed:
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


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every connection goes through the allowlist.

    httpx has no public hook for name resolution, so the connection pool it builds is
    replaced by one using :class:`_GuardedBackend` (same options otherwise).
    """

    def __init__(self, policy: HostPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            max_keepalive_connections=5,
            keepalive_expiry=30.0,
            network_backend=_GuardedBackend(policy),
        )


def blocked(exc: BaseException) -> bool:
    """Whether an httpx error was the allowlist refusing the target."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BlockedAddressError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
