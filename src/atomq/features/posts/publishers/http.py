"""HTTP plumbing the Mastodon and webhook publishers share: a guarded async client, and one
mapping from transport errors and status codes to publish outcomes."""

from __future__ import annotations

import json
import ssl
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx
from httpx._transports.default import map_httpcore_exceptions  # private: httpx is pinned to 0.28.x

from atomq.features.posts.netguard import AsyncGuardedTransport, HostPolicy, blocked
from atomq.features.posts.publishers.base import NotSent, OutcomeUnknown, RateLimited, Rejected

#: Longest wait a platform's rate-limit headers may ask for before we stop believing them.
MAX_RETRY_AFTER = 3600.0


class _NoCookies(httpx.Cookies):
    """A cookie jar that takes nothing from responses and adds nothing to requests."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


#: Parsed targets a client keeps (URL -> httpcore URL and Host header); forgotten all at once
#: when full, as a webhook's or instance's URL repeats for each of an account's posts.
TARGETS_KEPT = 4096


class CookielessClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies, with a lean way to POST bytes.

    One client serves the posts of many accounts (``publishers/clients.py``), so a cookie one
    account's platform set would ride on the next account's request to the same host. The
    publishers authenticate with tokens and signatures, never cookies. Keeping none also spares
    httpx's jar building two ``urllib`` compatibility objects and parsing every response's
    headers, about 9 % of a publish's time on the event loop.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._none_kept = _NoCookies()
        self._targets: dict[str, tuple[httpcore.URL, bytes]] = {}
        self._fixed_headers = [(b"Accept", b"*/*"), (b"User-Agent", self.headers["User-Agent"].encode())]

    async def post_bytes(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST ``content`` to ``url`` and read the whole answer, as ``post(url, content=...,
        headers=...)`` would on this client, at 0.72x its CPU (``bench/bench_http_pool.py``:
        0.27 ms against 0.38 ms per request, 150 in flight).

        ``post`` builds and merges an httpx request, then walks the auth, redirect, cookie and
        event-hook layers, none of which this client uses (no auth, no redirects followed, no
        cookies, no hooks). Here the parsed target is kept per URL and the request goes
        straight to the guarded transport's pool, with the client's timeouts; httpcore's errors
        are raised as httpx's. It asks for no compression, so the answer is read as sent (a
        server that compresses anyway is still decoded).
        """
        transport = self._transport
        if not isinstance(transport, httpx.AsyncHTTPTransport):
            return await self.post(url, content=content, headers=headers)
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        raw_headers = [
            (b"Host", target[1]),
            *self._fixed_headers,
            (b"Content-Length", str(len(content)).encode()),
            *((name.encode(), value.encode()) for name, value in headers.items()),
        ]
        request = httpcore.Request(
            b"POST",
            target[0],
            headers=raw_headers,
            content=content,
            extensions={"timeout": self.timeout.as_dict()},
        )
        # httpx's own translation of httpcore's errors, the one its transport applies to
        # ``post``: the same error for the same failure, whichever way the request went.
        with map_httpcore_exceptions():
            response = await transport._pool.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        return httpx.Response(response.status, headers=response.headers, content=body)

    def _target(self, url: str) -> tuple[httpcore.URL, bytes]:
        """The httpcore URL and Host header for ``url``, parsed (and checked) by httpx."""
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise httpx.UnsupportedProtocol(f"{redact(url)} is not an http:// or https:// URL with a host")
        target = (
            httpcore.URL(
                scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
            ),
            parsed.netloc,
        )
        if len(self._targets) >= TARGETS_KEPT:
            self._targets.clear()
        self._targets[url] = target
        return target

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none_kept

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise TypeError("a publisher's client keeps no cookies")


def make_client(
    policy: HostPolicy, timeout: float, *, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """An async client that connects only where ``policy`` allows, follows no redirects, ignores
    proxies, keeps no cookies (:class:`CookielessClient`); ``ssl_context`` may be shared with
    other clients (see :class:`~atomq.features.posts.netguard.AsyncGuardedTransport`)."""
    return CookielessClient(
        transport=AsyncGuardedTransport(policy, ssl_context),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": f"atomq/{version('atomq')}"},
    )


def redact(url: str) -> str:
    """``url`` without query, fragment or user info (they may carry secrets)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def send(client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
    """POST and return the 2xx response, or raise the outcome the failure means."""
    where = redact(url)
    try:
        if isinstance(client, CookielessClient) and kwargs.keys() == {"content", "headers"}:
            response = await client.post_bytes(url, kwargs["content"], kwargs["headers"])
        elif isinstance(client, CookielessClient) and kwargs.keys() == {"json", "headers"}:
            # Encoded as httpx encodes ``json=``.
            body = json.dumps(kwargs["json"], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            headers = {"Content-Type": "application/json", **kwargs["headers"]}
            response = await client.post_bytes(url, body.encode(), headers)
        else:
            response = await client.post(url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        if blocked(exc):
            raise Rejected(f"{where}: {exc}") from None
        # Nothing reached the platform: no connection was made.
        raise NotSent(f"{where}: could not connect ({type(exc).__name__}: {exc})") from None
    except httpx.TimeoutException as exc:
        raise OutcomeUnknown(f"{where}: no complete answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise OutcomeUnknown(
            f"{where}: connection failed mid-request ({type(exc).__name__}: {exc})"
        ) from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    detail = _error_detail(response)
    if status == 429:
        raise RateLimited(f"{where}: 429 rate limited{detail}", retry_after=retry_after(response))
    if status >= 500:
        raise OutcomeUnknown(f"{where}: {status}{detail}", retry_after=retry_after(response))
    if status == 408:
        raise OutcomeUnknown(f"{where}: 408 request timeout{detail}")
    raise Rejected(f"{where}: {status}{detail}")


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``
    (ISO-8601 as Mastodon sends it, or epoch seconds); ``None`` when neither is usable."""
    now = time.time() if now is None else now
    value = response.headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return _clamp(float(value))
        except ValueError:
            pass
        try:
            return _clamp(parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError):
            pass
    reset = response.headers.get("x-ratelimit-reset")
    if reset:
        reset = reset.strip()
        try:
            number = float(reset)
        except ValueError:
            try:
                moment = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return _clamp(moment.timestamp() - now)
        # Small numbers are "seconds from now", large ones an epoch timestamp.
        return _clamp(number - now if number > 1e9 else number)
    return None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_detail(response: httpx.Response) -> str:
    """The platform's own error text, short (Mastodon answers {"error": "..."})."""
    text = ""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        text = response.text[:200] if response.headers.get("content-type", "").startswith("text/") else ""
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""
