"""Checks on what users send: due times with their zones, content length as each platform
counts it, media URLs. Every refusal is an :class:`InvalidInputError` naming the field."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atomq.core.errors import InvalidInputError
from atomq.core.options import check_text as encodable
from atomq.core.timeutil import to_aware
from atomq.features.posts.publishers import PLATFORMS
from atomq.features.posts.publishers.mastodon import URL_WEIGHT

#: How far in the past a due time may be and still count as "now" (clock skew, slow clients).
PAST_TOLERANCE = timedelta(seconds=5)

#: How far ahead a post may be scheduled: a time beyond it (year 9999) is a client's mistake.
FARTHEST_AHEAD = timedelta(days=3650)

#: Most media URLs one post may carry.
MAX_MEDIA = 4

_URL = re.compile(r"https?://\S+", re.IGNORECASE)

#: Ids atomq hands out (post_..., acct_...): anything else cannot name a record.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_id(value: str) -> bool:
    """Whether ``value`` has the shape of an id atomq makes (looked up only then)."""
    return bool(_ID.fullmatch(value))


def check_text(value: str, field: str, *, max_length: int | None = None, single_line: bool = False) -> str:
    """Refuse NUL characters (PostgreSQL cannot store them), text that is not valid Unicode
    (the rule of :func:`atomq.core.options.check_text`) and overlong values; with
    ``single_line``, any control character (a CR/LF in a name could forge a header or a log line)."""
    if "\x00" in value:
        raise InvalidInputError(f"{field} contains a NUL character", field=field)
    encodable(value, field)
    if single_line and any(ch < " " or ch == "\x7f" for ch in value):
        raise InvalidInputError(f"{field} contains a line break or control character", field=field)
    if max_length is not None and len(value) > max_length:
        raise InvalidInputError(f"{field} is longer than {max_length} characters", field=field)
    return value


def zone(name: str | None, *, field: str = "timezone") -> ZoneInfo | None:
    """The IANA zone called ``name`` (``None`` passes through), or 422 naming ``field``."""
    if name is None:
        return None
    try:
        # IANA names are short; a long one would only reach the filesystem as a bad path.
        if len(name) > 64:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInputError(
            f"unknown timezone {name[:80]!r}: use an IANA name such as 'Europe/Paris' or 'UTC'", field=field
        ) from None


def parse_when(value: str | datetime, *, field: str = "scheduled_for") -> datetime:
    """An ISO-8601 string or datetime as a datetime (naive when it carries no offset)."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidInputError(
            f"cannot read {value!r} as an ISO-8601 date and time (e.g. 2026-02-06T14:30:00+01:00)",
            field=field,
        ) from None


def due_time(
    value: str | datetime | None,
    timezone: str | None,
    *,
    now: datetime,
    publish_now: bool = False,
) -> tuple[datetime, str]:
    """The instant a post is due (aware) and the zone name to keep with it.

    A time with an offset is that instant (``timezone``, if given, is kept for display);
    a time without one is wall-clock time in ``timezone``, which is then required. Wall-clock
    times a daylight-saving change skips are refused; repeated ones take the first occurrence.
    A time in the past is refused unless ``publish_now`` (no time at all also means now).
    """
    tz = zone(timezone)
    if value is None:
        if not publish_now:
            raise InvalidInputError(
                "scheduled_for is required (or set publish_now to publish at once)", field="scheduled_for"
            )
        return now, timezone or "UTC"
    when = parse_when(value)
    if when.tzinfo is None or when.utcoffset() is None:
        if tz is None:
            raise InvalidInputError(
                f"scheduled_for {when.isoformat()} has no UTC offset: add one (e.g. +01:00 or Z) "
                "or give the timezone it is in",
                field="scheduled_for",
            )
        when = to_aware(when, tz, field="scheduled_for")
    if when > now + FARTHEST_AHEAD:
        raise InvalidInputError(
            f"scheduled_for {when.isoformat()} is more than ten years ahead; pick an earlier time",
            field="scheduled_for",
        )
    if when < now - PAST_TOLERANCE:
        if not publish_now:
            raise InvalidInputError(
                f"scheduled_for {when.isoformat()} is in the past; pick a later time "
                "or set publish_now to publish at once",
                field="scheduled_for",
            )
        when = now
    return when.astimezone(UTC), timezone or _zone_name(when)


def _zone_name(when: datetime) -> str:
    key = getattr(when.tzinfo, "key", None)
    return key if isinstance(key, str) else "UTC"


def content_length(content: str, platform: str) -> int:
    """Characters as ``platform`` counts them (Mastodon counts every URL as 23)."""
    if platform == "mastodon":
        return len(_URL.sub("x" * URL_WEIGHT, content))
    return len(content)


def check_content(content: str, platform: str, max_characters: int | None = None) -> str:
    """``content`` if it is non-empty and within the platform's limit."""
    if not content or not content.strip():
        raise InvalidInputError("content is empty; write something to publish", field="content")
    check_text(content, "content")
    limit = max_characters or PLATFORMS[platform].max_characters
    length = content_length(content, platform)
    if length > limit:
        raise InvalidInputError(
            f"content is {length} characters, over {platform}'s limit of {limit}", field="content"
        )
    return content


def check_media(urls: list[str], platform: str) -> list[str]:
    """Media URLs: http(s), at most :data:`MAX_MEDIA`, and only where the platform takes them."""
    if not urls:
        return []
    if not PLATFORMS[platform].media:
        raise InvalidInputError(
            f"{platform} accounts cannot carry media_urls yet (atomq does not upload media to "
            f"{platform}); put the link in the content",
            field="media_urls",
        )
    if len(urls) > MAX_MEDIA:
        raise InvalidInputError(
            f"at most {MAX_MEDIA} media URLs per post, got {len(urls)}", field="media_urls"
        )
    for url in urls:
        if not isinstance(url, str) or not _URL.fullmatch(url) or len(url) > 2048 or "\x00" in url:
            raise InvalidInputError(f"media URL {str(url)[:80]!r} is not an http(s) URL", field="media_urls")
        encodable(url, "media_urls")
    return list(urls)
