"""Accounts and scheduled posts: the records that outlive Redis.

A post's ``status`` moves only through :mod:`atomq.features.posts.publishing`'s compare-and-set updates::

    scheduled ──claim──▶ publishing ──▶ published
        │                    │ ├──▶ failed       (the platform refused it; retrying cannot help)
        │                    │ └──▶ unconfirmed  (the call may or may not have happened)
        │                    └──▶ scheduled      (nothing was sent: connection refused, 429)
        ├──▶ canceled
        └──▶ failed      (too many attempts)

``revision`` grows with every edit or reschedule; the job id embeds it, so a job for an older
revision finds a mismatch and does nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from atomq.db.base import Base, UTCDateTime, utcnow

#: Every post status, in the order a post normally passes through them.
POST_STATUSES: tuple[str, ...] = ("scheduled", "publishing", "published", "failed", "canceled", "unconfirmed")

#: Statuses after which nothing more happens to a post.
FINAL_STATUSES = frozenset({"published", "failed", "canceled", "unconfirmed"})

#: Platforms an account can publish to.
PLATFORMS: tuple[str, ...] = ("mastodon", "webhook", "outbox")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Account(Base):
    """Where posts go: a platform, a handle there, and write-only credentials (encrypted)."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(_in("platform", PLATFORMS), name="platform"),
        # One live account per user, platform and handle; removed accounts keep their rows so
        # published posts still point somewhere.
        Index(
            "uq_accounts_live_handle",
            "user_id",
            "platform",
            "handle",
            unique=True,
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    platform: Mapped[str] = mapped_column(String(16))
    handle: Mapped[str] = mapped_column(String(255))
    #: Mastodon: the instance's base URL; webhook: the URL posts are sent to; outbox: unused.
    url: Mapped[str | None] = mapped_column(String(2048), default=None)
    #: Fernet token of the credentials' JSON (see atomq.features.posts.credentials); never returned.
    credentials: Mapped[str | None] = mapped_column(Text, default=None)
    #: Non-secret options: visibility, max_characters, idempotent receiver...
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ScheduledPost(Base):
    """One post to publish at ``scheduled_for`` (UTC) through ``account_id``."""

    __tablename__ = "scheduled_posts"
    __table_args__ = (
        CheckConstraint(_in("status", POST_STATUSES), name="status"),
        # The list endpoint pages by (scheduled_for, id) newest first, optionally narrowed by
        # status, account or user; each filter gets an index ending in the sort key so a page
        # of 50 reads 50 index entries even with a million rows.
        Index("ix_scheduled_posts_due", "scheduled_for", "id"),
        Index("ix_scheduled_posts_status_due", "status", "scheduled_for", "id"),
        Index("ix_scheduled_posts_account_due", "account_id", "scheduled_for", "id"),
        Index("ix_scheduled_posts_user_due", "user_id", "scheduled_for", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="RESTRICT"))
    content: Mapped[str] = mapped_column(Text)
    media_urls: Mapped[list[str]] = mapped_column(JSON, default=list)
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The IANA zone the time was given in (for display and DST-correct edits).
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    job_id: Mapped[str | None] = mapped_column(String(128), default=None)
    #: Sends tried so far (a wait for a rate limit is not an attempt).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The attempt now talking to the platform, and until when it may (its lease).
    attempt_id: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: When the first request carrying this revision's idempotency key was sent.
    first_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Times the reconciler had to replace a job that ended without publishing.
    job_replacements: Mapped[int] = mapped_column(Integer, default=0)
    platform_post_id: Mapped[str | None] = mapped_column(String(255), default=None)
    platform_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PostEvent(Base):
    """One change of a post, with its time: created, edited, or a move to another status.

    Written in the transaction that makes the change (:func:`atomq.features.posts.records.update_post`
    and :meth:`PostsService.create`), so the history can never disagree with the post.
    """

    __tablename__ = "post_events"
    __table_args__ = (Index("ix_post_events_post_at", "post_id", "at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    post_id: Mapped[str] = mapped_column(ForeignKey("scheduled_posts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The post's status after the change.
    status: Mapped[str] = mapped_column(String(16))
    #: ``created``, ``edited`` or ``status`` (the status changed).
    event: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    #: The error that came with the change, when there was one.
    detail: Mapped[str | None] = mapped_column(Text, default=None)
