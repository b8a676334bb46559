"""Signed webhooks: the post as JSON, POSTed to the account's URL.

Headers (the receiver verifies the first two; see :func:`verify`)::

    X-Atomq-Timestamp: 1767225600                      (Unix seconds when signed)
    X-Atomq-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    Idempotency-Key:   atomq-...                       (the same for every repeat of a post)

Signing the timestamp with the body lets a receiver refuse replays older than a few minutes.
A receiver that stores the ``Idempotency-Key`` and ignores repeats can say so (account option
``idempotent``); only then are attempts with an unknown outcome repeated.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from atomq.features.posts.publishers.base import Published, PublishRequest, Rejected
from atomq.features.posts.publishers.http import send

SIGNATURE_HEADER = "X-Atomq-Signature"
TIMESTAMP_HEADER = "X-Atomq-Timestamp"

#: Seconds an idempotent receiver is assumed to remember keys, unless the account says otherwise.
DEFAULT_IDEMPOTENCY_WINDOW = 86_400.0

#: Largest post a webhook carries (the receiver decides what it can take).
MAX_CHARACTERS = 100_000


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300) -> bool:
    """What a receiver does: recompute in constant time and refuse stale timestamps."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookPublisher:
    """Delivers posts to a URL with an HMAC signature."""

    def __init__(self, client: httpx.AsyncClient, *, idempotent: bool, idempotency_window: float) -> None:
        self.client = client
        self.idempotent = idempotent
        self.idempotency_window = idempotency_window

    async def publish(self, request: PublishRequest) -> Published:
        secret = request.credentials.get("secret")
        if not isinstance(secret, str) or not secret:
            raise Rejected(f"account {request.account_id} has no signing secret")
        if not request.url:
            raise Rejected(f"account {request.account_id} has no URL")
        payload: dict[str, Any] = {
            "type": "post.publish",
            "post_id": request.post_id,
            "revision": request.revision,
            "idempotency_key": request.idempotency_key,
            "account": {"id": request.account_id, "handle": request.handle},
            "content": request.content,
            "media_urls": request.media_urls,
            "scheduled_for": request.scheduled_for.isoformat(),
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        timestamp = str(int(time.time()))
        response = await send(
            self.client,
            request.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                "Idempotency-Key": request.idempotency_key,
            },
        )
        platform_id: str | None = None
        url: str | None = None
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            if data.get("id") is not None:
                platform_id = str(data["id"])
            if isinstance(data.get("url"), str):
                url = data["url"]
        return Published(platform_id or request.idempotency_key, url)
