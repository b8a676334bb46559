"""Publishers: one small interface (:class:`~atomq.features.posts.publishers.base.Publisher`), three
platforms. :data:`PLATFORMS` says what each needs; :func:`build_publisher` makes one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from atomq.core.settings import Settings
from atomq.features.posts.publishers.base import (
    NotSent,
    OutcomeUnknown,
    Published,
    Publisher,
    PublishError,
    PublishRequest,
    RateLimited,
    Rejected,
)
from atomq.features.posts.publishers.mastodon import IDEMPOTENCY_WINDOW, MastodonPublisher
from atomq.features.posts.publishers.outbox import OutboxPublisher
from atomq.features.posts.publishers.webhook import DEFAULT_IDEMPOTENCY_WINDOW, WebhookPublisher

__all__ = [
    "PLATFORMS",
    "NotSent",
    "OutcomeUnknown",
    "PlatformSpec",
    "PublishError",
    "PublishRequest",
    "Published",
    "Publisher",
    "RateLimited",
    "Rejected",
    "build_publisher",
    "idempotency_of",
    "outbox_path",
    "requests_per_post",
]


@dataclass(frozen=True)
class PlatformSpec:
    """What an account on a platform needs and what the platform accepts."""

    name: str
    #: Longest content, in characters as the platform counts them.
    max_characters: int
    #: Credential fields that must be present.
    credentials: tuple[str, ...]
    #: Whether the account needs a URL (instance or webhook target).
    needs_url: bool
    #: Whether posts may carry media URLs.
    media: bool
    #: Requests per window (count, seconds) each account may make; None for no limit.
    rate_limit: tuple[int, float] | None


#: Every supported platform.
PLATFORMS: dict[str, PlatformSpec] = {
    "mastodon": PlatformSpec("mastodon", 500, ("access_token",), True, True, (300, 300.0)),
    "webhook": PlatformSpec("webhook", 100_000, ("secret",), True, True, None),
    "outbox": PlatformSpec("outbox", 100_000, (), False, True, None),
}


def idempotency_of(platform: str, options: dict[str, Any]) -> tuple[bool, float]:
    """Whether an account's platform honours idempotency keys, and for how many seconds.

    Known without building a publisher, so the reconciler can decide whether resending is safe.
    """
    if platform == "mastodon":
        return True, IDEMPOTENCY_WINDOW
    if platform == "webhook" and options.get("idempotent"):
        return True, float(options.get("idempotency_window", DEFAULT_IDEMPOTENCY_WINDOW))
    return False, 0.0


def requests_per_post(platform: str, media: int) -> int:
    """Requests publishing one post with ``media`` files makes to the platform, for its rate
    limit (Mastodon: one upload per file, then the status; polls of a file still being
    processed are not counted)."""
    return 1 + media if platform == "mastodon" else 1


def outbox_path(settings: Settings) -> Path:
    """Where the outbox publisher writes."""
    return settings.posts_outbox_path or settings.data_dir / "outbox.jsonl"


def build_publisher(
    platform: str, options: dict[str, Any], settings: Settings, *, client: httpx.AsyncClient
) -> Publisher:
    """A publisher for an account on ``platform`` with ``options``; HTTP publishers send
    through ``client`` (a guarded one: :func:`~atomq.features.posts.publishers.http.make_client`),
    which stays open for the next."""
    if platform == "outbox":
        return OutboxPublisher(outbox_path(settings))
    if platform == "mastodon":
        return MastodonPublisher(
            client,
            media_max_bytes=settings.posts_media_max_bytes,
            media_timeout=settings.posts_publish_timeout,
        )
    if platform == "webhook":
        idempotent, window = idempotency_of(platform, options)
        return WebhookPublisher(client, idempotent=idempotent, idempotency_window=window)
    raise ValueError(f"unknown platform {platform!r}")
