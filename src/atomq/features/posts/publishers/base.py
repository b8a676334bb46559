"""The one interface every publisher implements, and the outcomes it may report.

A publisher makes one outside call and says how it went. It never retries and never touches
the database: :mod:`atomq.features.posts.publishing` decides, from the outcome, whether retrying is
safe. What matters is whether the platform may have acted on the request:

* :class:`NotSent` - it certainly did not (connection refused, 429): safe to try again.
* :class:`Rejected` - it answered and refused (401, 422...): retrying cannot help.
* :class:`OutcomeUnknown` - it may have (timeout after sending, 5xx, connection cut): safe
  to repeat only with an idempotency key the platform honours, within the key's lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class PublishRequest:
    """Everything a publisher needs for one post; ``credentials`` are already decrypted."""

    post_id: str
    revision: int
    content: str
    media_urls: list[str]
    scheduled_for: datetime
    idempotency_key: str
    account_id: str
    handle: str
    url: str | None
    options: dict[str, Any]
    credentials: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Published:
    """The platform's id and URL for the new post (either may be unknown)."""

    platform_post_id: str | None
    url: str | None


class PublishError(Exception):
    """Base of the outcomes that are not a success. Messages never contain credentials."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds the platform asked us to wait (Retry-After, X-RateLimit-Reset), if any.
        self.retry_after = retry_after
        #: Set when it happened while preparing the post (fetching or uploading media), before
        #: the platform was asked to publish it: it says nothing about an earlier attempt.
        self.preparing = False


class NotSent(PublishError):
    """The platform certainly did not act: nothing reached it, or it refused for now."""


class RateLimited(NotSent):
    """429: the platform refused for now; ``retry_after`` says for how long when it told us."""


class Rejected(PublishError):
    """The platform (or the allowlist) refused the post; retrying the same request cannot help."""


class OutcomeUnknown(PublishError):
    """The platform may or may not have acted (timeout after sending, 5xx, connection cut)."""


class Publisher(Protocol):
    """Publishes posts to one platform (async: a worker publishes many posts at once).

    HTTP publishers use the client they are given (the worker's pooled one for the running
    event loop) and never close it; a publisher holds nothing that needs releasing.
    """

    #: Whether the platform honours ``Idempotency-Key`` (a repeat within the window is a no-op).
    idempotent: bool
    #: Seconds the platform remembers an idempotency key.
    idempotency_window: float

    async def publish(self, request: PublishRequest) -> Published:
        """Make the outside call; return the result or raise a :class:`PublishError`."""
        ...
