"""Scheduled posts as the API and the CLI see them: create, list, show, edit, cancel.

The database row is written (and committed) first, the Redis job second: a job can never
run before its post is readable, and if Redis is unreachable at that moment the post is
still kept and the reconciler creates its job later. Edits and cancels are compare-and-set
updates that lose cleanly (409) against a publish that has just begun.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import literal, select, tuple_

from atomq.core import visibility
from atomq.core.errors import (
    AccountNotFoundError,
    AtomqError,
    InvalidInputError,
    JobNotFoundError,
    PostNotFoundError,
    PostStateError,
)
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.db.base import UTCDateTime, new_id
from atomq.db.engine import Database
from atomq.engine.task_queue import TaskQueue
from atomq.features.posts.accounts import get_account
from atomq.features.posts.jobs import ensure_job, job_id_for, withdraw_job, within_horizon
from atomq.features.posts.models import POST_STATUSES, Account, PostEvent, ScheduledPost
from atomq.features.posts.records import update_post
from atomq.features.posts.validation import (
    check_content,
    check_media,
    check_text,
    due_time,
    is_id,
    parse_when,
    zone,
)

logger = logging.getLogger("atomq.features.posts")

#: Page size of the list when none is asked for, and the most one page may hold.
DEFAULT_PAGE = 50
MAX_PAGE = 500

#: Job status shown for a post whose job is not (or no longer) in Redis.
_JOB_STATUS_OF_POST = {
    "scheduled": "scheduled",
    "publishing": "started",
    "published": "finished",
    "failed": "failed",
    "canceled": "canceled",
    "unconfirmed": "failed",
}


@dataclass
class PostInput:
    """A new post."""

    account_id: str
    content: str
    user_id: str
    scheduled_for: str | datetime | None = None
    timezone: str | None = None
    publish_now: bool = False
    media_urls: list[str] = field(default_factory=list)


@dataclass
class PostChanges:
    """An edit; ``None`` leaves a field as it is."""

    content: str | None = None
    scheduled_for: str | datetime | None = None
    timezone: str | None = None
    media_urls: list[str] | None = None
    publish_now: bool = False


@dataclass
class Page:
    """One page of posts and the cursor of the next (``None`` on the last page)."""

    items: list[ScheduledPost]
    next_cursor: str | None


class PostsService:
    """Post operations over a database and a task queue.

    With ``owner`` (a user id) it acts for that user only: its posts, through its accounts;
    another user's post or account is as absent as a missing one.
    """

    def __init__(
        self, database: Database, task_queue: TaskQueue, settings: Settings, *, owner: str | None = None
    ) -> None:
        self.database = database
        self.task_queue = task_queue
        self.settings = settings
        self.owner = owner

    # -- create ------------------------------------------------------------------------------

    def create(self, data: PostInput) -> ScheduledPost:
        """Validate and store a post, then give it its job if it is due within the horizon."""
        now = utcnow()
        check_text(data.user_id, "user_id", max_length=128, single_line=True)
        if self.owner is not None and data.user_id != self.owner:
            raise InvalidInputError(f"posts made here belong to user {self.owner!r}", field="user_id")
        account = self._account(data.account_id)
        when, tz_name = due_time(data.scheduled_for, data.timezone, now=now, publish_now=data.publish_now)
        content = check_content(data.content, account.platform, _max_chars(account))
        media = check_media(list(data.media_urls or []), account.platform)
        post = ScheduledPost(
            id=new_id("post"),
            user_id=data.user_id,
            account_id=account.id,
            content=content,
            media_urls=media,
            scheduled_for=when,
            timezone=tz_name,
            status="scheduled",
            revision=1,
            attempts=0,
            job_replacements=0,
        )
        post.job_id = job_id_for(post.id, post.revision)
        with self.database.session() as session:
            session.add(post)
            session.flush()  # the event's foreign key needs the post's row first
            session.add(
                PostEvent(
                    post_id=post.id, at=now, status="scheduled", event="created", revision=1, attempts=0
                )
            )
        self._schedule(post, now)
        return post

    # -- read --------------------------------------------------------------------------------

    def get(self, post_id: str) -> ScheduledPost:
        """The post ``post_id``, or :class:`PostNotFoundError`."""
        post = None
        if is_id(post_id):
            with self.database.session() as session:
                post = session.get(ScheduledPost, post_id)
                session.expunge_all()
        if post is None or (self.owner is not None and post.user_id != self.owner):
            raise PostNotFoundError(f"no scheduled post {post_id!r}", field="post_id")
        return post

    def list_posts(
        self,
        *,
        status: list[str] | None = None,
        account_id: str | None = None,
        user_id: str | None = None,
        due_after: str | datetime | None = None,
        due_before: str | datetime | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Posts newest due first, filtered, one page at a time (keyset pagination)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE}, got {limit}", field="limit")
        query = select(ScheduledPost)
        if status:
            unknown = [s for s in status if s not in POST_STATUSES]
            if unknown:
                raise InvalidInputError(
                    f"unknown status {unknown[0]!r}: use {', '.join(POST_STATUSES)}", field="status"
                )
            query = query.where(
                ScheduledPost.status == status[0] if len(status) == 1 else ScheduledPost.status.in_(status)
            )
        if account_id:
            query = query.where(ScheduledPost.account_id == check_text(account_id, "account_id"))
        if user_id:
            query = query.where(ScheduledPost.user_id == check_text(user_id, "user_id"))
        if self.owner is not None:
            query = query.where(ScheduledPost.user_id == self.owner)
        if due_after is not None:
            query = query.where(ScheduledPost.scheduled_for >= _bound(due_after, "due_after"))
        if due_before is not None:
            query = query.where(ScheduledPost.scheduled_for < _bound(due_before, "due_before"))
        if cursor:
            at, post_id = _decode_cursor(cursor)
            check_text(post_id, "cursor")
            query = query.where(
                tuple_(ScheduledPost.scheduled_for, ScheduledPost.id)
                < tuple_(literal(at, UTCDateTime()), literal(post_id))
            )
        query = query.order_by(ScheduledPost.scheduled_for.desc(), ScheduledPost.id.desc()).limit(limit + 1)
        with self.database.session() as session:
            posts = list(session.scalars(query))
            session.expunge_all()
        more = len(posts) > limit
        posts = posts[:limit]
        next_cursor = _encode_cursor(posts[-1]) if more and posts else None
        return Page(posts, next_cursor)

    def status(self, post_id: str, scope: str = visibility.INTERNALS) -> dict[str, Any]:
        """The guide's job status dictionary for the post's job, merged with the post's state.

        ``status`` and the times are the job's (the guide's keys); ``post_status`` is the
        post's. A post beyond the horizon has no job in Redis yet: its job fields are derived
        from the post and ``job_in_redis`` is false. Result and errors as ``scope`` may see
        them (:mod:`atomq.core.visibility`).
        """
        post = self.get(post_id)
        job: dict[str, Any] | None = None
        if post.job_id:
            try:
                job = self.task_queue.get_job_status(post.job_id)
            except JobNotFoundError:
                job = None
        if job is None:
            job = {
                "job_id": post.job_id,
                "status": _JOB_STATUS_OF_POST[post.status],
                "created_at": None,
                "enqueued_at": None,
                "started_at": None,
                "ended_at": None,
                "result": None,
                "error": post.last_error if post.status in ("failed", "unconfirmed") else None,
            }
        return {
            **visibility.job_status(scope, job),
            "job_in_redis": job.get("created_at") is not None,
            "post_id": post.id,
            "post_status": post.status,
            "scheduled_for": post.scheduled_for,
            "timezone": post.timezone,
            "attempts": post.attempts,
            "published_at": post.published_at,
            "platform_post_id": post.platform_post_id,
            "platform_url": post.platform_url,
            "last_error": visibility.error_text(scope, post.last_error),
        }

    # -- change ------------------------------------------------------------------------------

    def update(self, post_id: str, changes: PostChanges) -> ScheduledPost:
        """Edit or reschedule a post that is still ``scheduled``; its job moves with it."""
        now = utcnow()
        post = self.get(post_id)
        _editable(post)
        account = self._account(post.account_id, field="post_id")
        values: dict[str, Any] = {}
        if changes.content is not None:
            values["content"] = check_content(changes.content, account.platform, _max_chars(account))
        if changes.media_urls is not None:
            values["media_urls"] = check_media(list(changes.media_urls), account.platform)
        if changes.scheduled_for is not None or changes.publish_now:
            tz_name = changes.timezone or post.timezone
            when, tz_name = due_time(changes.scheduled_for, tz_name, now=now, publish_now=changes.publish_now)
            values["scheduled_for"], values["timezone"] = when, tz_name
        elif changes.timezone is not None:
            zone(changes.timezone)  # same instant, shown in another zone
            values["timezone"] = changes.timezone
        if not values:
            return post
        values["revision"] = post.revision + 1
        values["job_id"] = job_id_for(post.id, post.revision + 1)
        values["last_error"] = None
        if not update_post(
            self.database,
            post.id,
            [ScheduledPost.status == "scheduled", ScheduledPost.revision == post.revision],
            values,
        ):
            raise _state_error(self.get(post_id), "edited")
        withdraw_job(self.task_queue.connection, post.job_id)
        updated = self.get(post_id)
        self._schedule(updated, now)
        return updated

    def cancel(self, post_id: str) -> ScheduledPost:
        """Cancel a post that has not started publishing (canceling twice is fine)."""
        post = self.get(post_id)
        if post.status == "canceled":
            return post
        if post.status != "scheduled" or not update_post(
            self.database,
            post.id,
            [ScheduledPost.status == "scheduled"],
            {"status": "canceled", "canceled_at": utcnow()},
        ):
            current = self.get(post_id)
            if current.status == "canceled":
                return current
            raise _state_error(current, "canceled")
        try:
            withdraw_job(self.task_queue.connection, post.job_id)
        except AtomqError as exc:
            # The post is canceled for good; a job that still runs finds that and does nothing.
            logger.warning("post %s canceled, but its job could not be withdrawn: %s", post.id, exc)
        return self.get(post_id)

    # -- helpers -----------------------------------------------------------------------------

    def _account(self, account_id: str, field: str = "account_id") -> Account:
        try:
            return get_account(self.database, account_id, owner=self.owner)
        except AccountNotFoundError:
            raise InvalidInputError(f"unknown account {account_id!r}", field=field) from None

    def _schedule(self, post: ScheduledPost, now: datetime) -> None:
        if not within_horizon(post, self.settings, now) or post.job_id is None:
            return
        try:
            ensure_job(self.task_queue, post, post.job_id)
        except AtomqError as exc:
            # Kept in the database; the reconciler creates the job once Redis answers.
            logger.warning("post %s saved, but its job could not be queued yet: %s", post.id, exc)


def post_view(post: ScheduledPost, scope: str = visibility.INTERNALS) -> dict[str, Any]:
    """A post as the API and ``--json`` show it: times in UTC and in the post's own zone;
    its text, media and error as ``scope`` may see them (:mod:`atomq.core.visibility`)."""
    content = visibility.allows(scope, visibility.CONTENT)
    return {
        "id": post.id,
        "user_id": post.user_id,
        "account_id": post.account_id,
        "content": post.content if content else None,
        "media_urls": list(post.media_urls or []) if content else None,
        "scheduled_for": post.scheduled_for,
        "timezone": post.timezone,
        "scheduled_for_local": post.scheduled_for.astimezone(ZoneInfo(post.timezone)),
        "status": post.status,
        "revision": post.revision,
        "job_id": post.job_id,
        "attempts": post.attempts,
        "platform_post_id": post.platform_post_id,
        "platform_url": post.platform_url,
        "last_error": visibility.error_text(scope, post.last_error),
        "published_at": post.published_at,
        "canceled_at": post.canceled_at,
        "created_at": post.created_at,
        "updated_at": post.updated_at,
    }


def _max_chars(account: Account) -> int | None:
    value = (account.options or {}).get("max_characters")
    return int(value) if isinstance(value, int) else None


def _editable(post: ScheduledPost) -> None:
    if post.status != "scheduled":
        raise _state_error(post, "edited")


def _state_error(post: ScheduledPost, verb: str) -> PostStateError:
    reason = {
        "publishing": "is being published right now",
        "published": "has already been published",
        "canceled": "was canceled",
        "failed": "has failed",
        "unconfirmed": "may already have been published (unconfirmed)",
        "scheduled": "changed meanwhile; read it again",
    }[post.status]
    return PostStateError(f"post {post.id} {reason}; it cannot be {verb}", field="post_id")


def _bound(value: str | datetime, name: str) -> datetime:
    when = parse_when(value, field=name)
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidInputError(f"{name} needs a UTC offset (e.g. 2026-02-06T14:30:00Z)", field=name)
    return when


def _encode_cursor(post: ScheduledPost) -> str:
    raw = json.dumps([post.scheduled_for.isoformat(), post.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, post_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(post_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(
            "cursor is not one this API returned; use next_cursor from a previous page", field="cursor"
        ) from None
    return when, post_id
