"""Mastodon: ``POST /api/v1/statuses`` with the account's bearer token.

A post with media first fetches each file (through the allowlist, size-capped; see
:mod:`atomq.features.posts.publishers.media`) and uploads it with ``POST /api/v2/media``. Mastodon
answers 200 with the processed attachment or 202 while it is still processing; then
``GET /api/v1/media/{id}`` is polled (206 while processing) until it has a ``url``, for at
most :data:`MEDIA_PROCESSING_WAIT` seconds. Only then is the status sent, with
``media_ids[]``. Nothing before the status call can publish anything (an attachment nobody
uses is discarded by Mastodon), so every failure there is "not sent" or "rejected", never
"outcome unknown".

Every request carries an ``Idempotency-Key`` derived from the post and its revision; Mastodon
keeps keys for an hour and answers a repeat with the status it already created, so within
that hour an attempt whose outcome is unknown can be repeated without posting twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from atomq.features.posts.publishers.base import (
    NotSent,
    OutcomeUnknown,
    Published,
    PublishError,
    PublishRequest,
    RateLimited,
    Rejected,
)
from atomq.features.posts.publishers.http import redact, retry_after, send
from atomq.features.posts.publishers.media import Media, fetch

#: Seconds Mastodon remembers an Idempotency-Key (its documentation says one hour).
IDEMPOTENCY_WINDOW = 3600.0

#: Characters a status may have on a stock Mastodon server; accounts may say otherwise
#: (``max_characters`` option) for servers configured differently.
MAX_CHARACTERS = 500

#: Characters Mastodon counts for any URL, however long.
URL_WEIGHT = 23

#: Visibilities Mastodon accepts.
VISIBILITIES = ("public", "unlisted", "private", "direct")

#: Seconds to wait for Mastodon to finish processing one uploaded file (202) before giving up
#: for now (the post is retried later; nothing was published).
MEDIA_PROCESSING_WAIT = 30.0

#: Seconds between two polls of an attachment that is still processing (doubling up to 2 s).
MEDIA_POLL_INTERVAL = 0.25

#: Largest media file, unless the publisher is told otherwise (ATOMQ_POSTS_MEDIA_MAX_BYTES).
DEFAULT_MEDIA_MAX_BYTES = 16 * 1024 * 1024


class MastodonPublisher:
    """Posts statuses to a Mastodon server."""

    idempotent = True
    idempotency_window = IDEMPOTENCY_WINDOW

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        media_max_bytes: int = DEFAULT_MEDIA_MAX_BYTES,
        media_timeout: float = 30.0,
        processing_wait: float = MEDIA_PROCESSING_WAIT,
    ) -> None:
        self.client = client
        self.media_max_bytes = media_max_bytes
        self.media_timeout = media_timeout
        self.processing_wait = processing_wait

    async def publish(self, request: PublishRequest) -> Published:
        token = request.credentials.get("access_token")
        if not isinstance(token, str) or not token:
            raise Rejected(f"account {request.account_id} has no access_token")
        base = (request.url or "").rstrip("/")
        body: dict[str, Any] = {
            "status": request.content,
            "visibility": request.options.get("visibility", "public"),
        }
        if request.options.get("language"):
            body["language"] = request.options["language"]
        auth = {"Authorization": f"Bearer {token}"}
        try:
            # One after another, in order: attachments keep the post's order, and a failed
            # file stops the rest from being fetched and uploaded for nothing.
            media_ids = [
                await self._attach(base, auth, url, f"media {number}")
                for number, url in enumerate(request.media_urls, start=1)
            ]
        except PublishError as exc:
            exc.preparing = True
            raise
        if media_ids:
            body["media_ids"] = media_ids
        response = await send(
            self.client,
            f"{base}/api/v1/statuses",
            json=body,
            headers={**auth, "Idempotency-Key": request.idempotency_key},
        )
        try:
            data = response.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        status_id = data.get("id")
        url = data.get("url") or data.get("uri")
        return Published(
            str(status_id) if status_id is not None else None,
            str(url) if url else None,
        )

    async def _attach(self, base: str, auth: dict[str, str], url: str, label: str) -> str:
        """Fetch ``url``, upload it, wait until Mastodon has processed it; its attachment id."""
        media = await fetch(
            self.client, url, max_bytes=self.media_max_bytes, timeout=self.media_timeout, label=label
        )
        data = await self._upload(base, auth, media, label)
        media_id = data.get("id")
        if media_id is None:
            raise NotSent(
                f"{label}: Mastodon's upload answer carried no attachment id; the status was not sent"
            )
        deadline = time.monotonic() + self.processing_wait
        interval = MEDIA_POLL_INTERVAL
        while not data.get("url"):
            if time.monotonic() >= deadline:
                raise NotSent(
                    f"{label}: Mastodon was still processing attachment {media_id} after "
                    f"{self.processing_wait:g} s; the status was not sent"
                )
            await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))
            interval = min(interval * 2, 2.0)
            data = await self._poll(base, auth, str(media_id), label)
        return str(media_id)

    async def _upload(self, base: str, auth: dict[str, str], media: Media, label: str) -> dict[str, Any]:
        try:
            response = await send(
                self.client,
                f"{base}/api/v2/media",
                files={"file": (media.filename, media.data, media.content_type)},
                headers=auth,
            )
        except Rejected as exc:
            raise Rejected(
                f"{label} ({redact(media.url)}): Mastodon refused the upload: {exc.message}"
            ) from None
        except OutcomeUnknown as exc:
            # An attachment is not a post: whatever happened to it, nothing was published.
            raise NotSent(
                f"{label}: upload failed ({exc.message}); the status was not sent",
                retry_after=exc.retry_after,
            ) from None
        return _json(response)

    async def _poll(self, base: str, auth: dict[str, str], media_id: str, label: str) -> dict[str, Any]:
        url = f"{base}/api/v1/media/{media_id}"
        try:
            response = await self.client.get(url, headers=auth)
        except httpx.HTTPError as exc:
            raise NotSent(
                f"{label}: polling {redact(url)} failed ({type(exc).__name__}); the status was not sent"
            ) from None
        if response.status_code == 206:
            return {"id": media_id}  # still processing
        if response.status_code == 200:
            return _json(response)
        if response.status_code == 429 or response.status_code >= 500:
            kind = RateLimited if response.status_code == 429 else NotSent
            raise kind(
                f"{label}: polling {redact(url)} answered {response.status_code}; the status was not sent",
                retry_after=retry_after(response),
            )
        raise Rejected(f"{label}: Mastodon answered {response.status_code} for attachment {media_id}")

    def __repr__(self) -> str:
        return f"MastodonPublisher({redact(str(self.client.base_url)) or '-'})"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
