"""Mastodon: ``POST /api/v1/statuses`` with the account's bearer token.

Every request carries an ``Idempotency-Key`` derived from the post and its revision; Mastodon
keeps keys for an hour and answers a repeat with the status it already created, so within
that hour an attempt whose outcome is unknown can be repeated without posting twice.
"""

from __future__ import annotations

from typing import Any

import httpx

from atomq.posts.publishers.base import Published, PublishRequest, Rejected
from atomq.posts.publishers.http import redact, send

#: Seconds Mastodon remembers an Idempotency-Key (its documentation says one hour).
IDEMPOTENCY_WINDOW = 3600.0

#: Characters a status may have on a stock Mastodon server; accounts may say otherwise
#: (``max_characters`` option) for servers configured differently.
MAX_CHARACTERS = 500

#: Characters Mastodon counts for any URL, however long.
URL_WEIGHT = 23

#: Visibilities Mastodon accepts.
VISIBILITIES = ("public", "unlisted", "private", "direct")


class MastodonPublisher:
    """Posts statuses to a Mastodon server."""

    idempotent = True
    idempotency_window = IDEMPOTENCY_WINDOW

    def __init__(self, client: httpx.Client, *, owns_client: bool = True) -> None:
        self.client = client
        self.owns_client = owns_client

    def publish(self, request: PublishRequest) -> Published:
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
        response = send(
            self.client,
            f"{base}/api/v1/statuses",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": request.idempotency_key},
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

    def close(self) -> None:
        if self.owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"MastodonPublisher({redact(str(self.client.base_url)) or '-'})"
