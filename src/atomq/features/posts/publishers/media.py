"""Fetching a post's media before it is uploaded to a platform.

Media URLs come from users, so they are fetched through the same allowlist-guarded client as
every publisher call (:mod:`atomq.features.posts.netguard`): a URL naming an internal address - or
redirecting to one - is refused exactly like a webhook target would be. Downloads are capped
in size and in total time.

Nothing here reaches the platform, so failures are never "outcome unknown": a transient one
(connection refused, timeout, 5xx, 429 from the media host) is :class:`NotSent`, a permanent
one (allowlist, 4xx, too big) is :class:`Rejected`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import httpx

from atomq.features.posts.netguard import blocked
from atomq.features.posts.publishers.base import NotSent, Rejected
from atomq.features.posts.publishers.http import redact, retry_after

#: Redirects a media URL may take (each hop goes through the allowlist again).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Media:
    """One downloaded media file."""

    url: str
    filename: str
    content_type: str
    data: bytes = b""

    def __repr__(self) -> str:
        return f"Media({redact(self.url)}, {self.content_type}, {len(self.data)} bytes)"


async def fetch(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout: float, label: str = "media"
) -> Media:
    """Download ``url`` (at most ``max_bytes``, within ``timeout`` seconds overall)."""
    where = f"{label} {redact(url)}"
    deadline = time.monotonic() + timeout
    try:
        async with client.stream(
            "GET", url, follow_redirects=True, timeout=httpx.Timeout(timeout)
        ) as response:
            if len(response.history) > MAX_REDIRECTS:
                raise Rejected(f"{where}: more than {MAX_REDIRECTS} redirects")
            status = response.status_code
            if status == 429 or status >= 500 or status == 408:
                raise NotSent(
                    f"{where}: the media host answered {status}; the status was not sent",
                    retry_after=retry_after(response),
                )
            if status != 200:
                raise Rejected(f"{where}: cannot fetch the media (HTTP {status})")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise Rejected(
                    f"{where}: the media is {int(declared)} bytes, over the {max_bytes}-byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise Rejected(f"{where}: the media is over the {max_bytes}-byte limit")
                if time.monotonic() > deadline:
                    raise NotSent(
                        f"{where}: the download took longer than {timeout:g} s; the status was not sent"
                    )
                chunks.append(chunk)
            content_type = (
                response.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
            )
    except httpx.TooManyRedirects:
        raise Rejected(f"{where}: too many redirects") from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        if blocked(exc):
            raise Rejected(f"{where}: refused by ATOMQ_POSTS_ALLOWED_HOSTS ({exc})") from None
        raise NotSent(
            f"{where}: could not connect ({type(exc).__name__}: {exc}); the status was not sent"
        ) from None
    except httpx.TimeoutException as exc:
        raise NotSent(
            f"{where}: no complete answer in time ({type(exc).__name__}); the status was not sent"
        ) from None
    except httpx.UnsupportedProtocol as exc:
        raise Rejected(f"{where}: not an http(s) URL ({exc})") from None
    except httpx.TransportError as exc:
        raise NotSent(
            f"{where}: download failed ({type(exc).__name__}: {exc}); the status was not sent"
        ) from None
    except httpx.InvalidURL as exc:
        raise Rejected(f"{where}: invalid URL ({exc})") from None
    name = PurePosixPath(urlsplit(str(response.url)).path).name or "media"
    return Media(url, name[:100], content_type or "application/octet-stream", b"".join(chunks))
