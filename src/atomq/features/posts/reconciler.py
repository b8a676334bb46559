"""The posts reconciler: the database says what must happen, Redis is made to agree.

Run by the leading scheduler (``@periodic``, so exactly one runs at a time) every
``ATOMQ_POSTS_RECONCILE_INTERVAL`` seconds - and at once after Redis lost its data, because
the key that spaces the runs is lost with it. Each pass:

* gives every ``scheduled`` post due within ``ATOMQ_POSTS_HORIZON`` its job (the job id is
  derived from the post and its revision, so re-creating cannot duplicate); posts due later
  live only in the database, so Redis does not grow with how far ahead people schedule;
* replaces a job that ended without publishing its post (a few times, then fails the post);
  a job someone canceled by hand cancels its post;
* finds posts left ``publishing`` by an attempt that is over (its lease expired): it queues a
  job to resume them when the platform's idempotency key makes that safe, and marks them
  ``unconfirmed`` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from atomq.core.timeutil import utcnow
from atomq.engine.plugins import Context, periodic
from atomq.engine.task_queue import TaskQueue

if TYPE_CHECKING:
    # Every atomq process imports this module (to register the reconciler); the database
    # layers load only when a pass runs.
    from atomq.engine.task_queue import TaskQueue
    from atomq.features.posts.models import ScheduledPost
    from atomq.features.posts.runtime import PostsRuntime

logger = logging.getLogger("atomq.features.posts.reconciler")

#: Seconds between looks at whether a pass is due (a pass itself runs every
#: ATOMQ_POSTS_RECONCILE_INTERVAL seconds, or at once when Redis lost the spacing key).
RECONCILE_TICK = 1.0

#: Redis key whose expiry spaces the passes.
NEXT_PASS_KEY = "atomq:posts:reconcile:next"  # noqa: S105 - a Redis key name

#: Posts whose jobs are checked per round trip to Redis.
BATCH = 1000

#: Ids per ``IN (...)`` when reading the posts that need action (SQLite's old limit is 999).
IN_CHUNK = 500

#: Times a post's job may end without publishing before the post is failed.
MAX_JOB_REPLACEMENTS = 3


@dataclass
class Report:
    """What one pass did."""

    checked: int = 0
    created: int = 0
    replaced: int = 0
    resumed: int = 0
    canceled: int = 0
    failed: int = 0
    unconfirmed: int = 0

    @property
    def changed(self) -> bool:
        return any((self.created, self.replaced, self.resumed, self.canceled, self.failed, self.unconfirmed))


@periodic("posts.reconcile", interval=RECONCILE_TICK)
def reconcile_posts(ctx: Context) -> None:
    """The periodic entry point: a pass when the last one is old enough (or Redis forgot it)."""
    interval_ms = max(1, int(ctx.settings.posts_reconcile_interval * 1000))
    if not ctx.connection.set(NEXT_PASS_KEY, "1", nx=True, px=interval_ms):
        return
    from sqlalchemy.exc import OperationalError, ProgrammingError

    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.runtime import PostsRuntime

    try:
        report = reconcile(PostsRuntime(ctx.settings, ctx.database, ctx.connection))
    except (OperationalError, ProgrammingError) as exc:
        # Most often a database that was never migrated; say so once per pass, briefly.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        logger.warning("posts reconciler skipped: database not usable (%s); run `atomq db upgrade`", reason)
        return
    if report.changed:
        logger.info("posts reconciled: %s", report)


def reconcile(runtime: PostsRuntime, now: datetime | None = None) -> Report:
    """One pass over the database; see the module documentation."""
    from sqlalchemy import or_, select

    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.features.posts.models import ScheduledPost

    now = now or utcnow()
    report = Report()
    tq = TaskQueue(settings=runtime.settings, connection=runtime.connection)
    horizon = now + timedelta(seconds=runtime.settings.posts_horizon)
    # Posts due after this entered the horizon since the previous pass (give or take a late
    # pass): their job is made now by design. Earlier ones should have had one already.
    entering = horizon - timedelta(seconds=2 * runtime.settings.posts_reconcile_interval)
    # Only what tells whether a post's job is live, in one query: a pass reads every post
    # within the horizon, and whole ORM rows (content, media, times to convert) or one query
    # per page would cost more than the check itself. The list is as long as the horizon is
    # full, which is also what Redis holds.
    query = (
        select(ScheduledPost.id, ScheduledPost.revision)
        .where(ScheduledPost.status == "scheduled", ScheduledPost.scheduled_for <= horizon)
        .order_by(ScheduledPost.scheduled_for, ScheduledPost.id)
    )
    stuck_query = select(ScheduledPost.id).where(
        ScheduledPost.status == "publishing",
        or_(ScheduledPost.attempt_id.is_(None), ScheduledPost.lease_until < now),
    )
    # Plain reads on a connection (no ORM session): this runs every pass.
    with runtime.database.engine.connect() as connection:
        # fetchall at once: iterating a result fetches row by row, several times slower.
        rows = list(connection.execute(query).all())
        stuck_ids = list(connection.scalars(stuck_query))
    for start in range(0, len(rows), BATCH):
        _scheduled(runtime, tq, rows[start : start + BATCH], report, entering)
    if not stuck_ids:
        return report
    with runtime.database.session() as session:
        stuck = list(session.scalars(select(ScheduledPost).where(ScheduledPost.id.in_(stuck_ids[:IN_CHUNK]))))
        session.expunge_all()
    for post in stuck:
        if post.status == "publishing":
            _publishing(runtime, tq, post, now, report)
    return report


def _scheduled(
    runtime: PostsRuntime, tq: TaskQueue, rows: Sequence[tuple[str, int]], report: Report, entering: datetime
) -> None:
    """Check one page of ``(post id, revision)``: one round trip for all their jobs' statuses,
    then act on the few whose job is missing or ended (read whole only then)."""
    from sqlalchemy import select

    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.features.posts.jobs import LIVE_STATUSES, job_id_for, job_statuses
    from atomq.features.posts.models import ScheduledPost

    statuses = job_statuses(runtime.connection, [job_id_for(post_id, revision) for post_id, revision in rows])
    report.checked += len(rows)
    pending = {
        post_id: (revision, status)
        for (post_id, revision), status in zip(rows, statuses, strict=True)
        if status not in LIVE_STATUSES
    }
    if not pending:
        return
    wanted = list(pending)
    posts: list[ScheduledPost] = []
    with runtime.database.session() as session:
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start : start + IN_CHUNK]
            posts.extend(session.scalars(select(ScheduledPost).where(ScheduledPost.id.in_(chunk))))
        session.expunge_all()
    for post in posts:
        revision, status = pending[post.id]
        if post.status != "scheduled" or post.revision != revision:
            continue  # it moved on since the page was read; the next pass sees it as it is now
        _check_scheduled(runtime, tq, post, job_id_for(post.id, revision), status, report, entering)


def _check_scheduled(
    runtime: PostsRuntime,
    tq: TaskQueue,
    post: ScheduledPost,
    job_id: str,
    status: str | None,
    report: Report,
    entering: datetime,
) -> None:
    """Act on a scheduled post whose job is missing (``status`` None) or ended."""
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.features.posts.jobs import delete_job, ensure_job
    from atomq.features.posts.models import ScheduledPost
    from atomq.features.posts.records import update_post

    still = [ScheduledPost.status == "scheduled", ScheduledPost.revision == post.revision]
    if status is None:
        if ensure_job(tq, post, job_id):
            report.created += 1
            if post.scheduled_for > entering:
                logger.debug("post %s entered the horizon; created %s", post.id, job_id)
            else:
                logger.warning("post %s had no job in Redis; created %s", post.id, job_id)
        if post.job_id != job_id:
            update_post(runtime.database, post.id, still, {"job_id": job_id})
    elif status == "canceled":
        if update_post(
            runtime.database,
            post.id,
            still,
            {
                "status": "canceled",
                "canceled_at": utcnow(),
                "last_error": f"its job {job_id} was canceled",
            },
        ):
            report.canceled += 1
    elif post.job_replacements < MAX_JOB_REPLACEMENTS:
        # Claim the replacement on the post first: if the post moved on meanwhile, leave the job be.
        if update_post(
            runtime.database, post.id, [*still], {"job_replacements": ScheduledPost.job_replacements + 1}
        ):
            delete_job(runtime.connection, job_id)
            ensure_job(tq, post, job_id)
            report.replaced += 1
            logger.warning("post %s: its job ended (%s) without publishing; replaced it", post.id, status)
    elif update_post(
        runtime.database,
        post.id,
        still,
        {
            "status": "failed",
            "last_error": f"its job ended ({status}) {MAX_JOB_REPLACEMENTS + 1} times without publishing",
        },
    ):
        report.failed += 1


def _publishing(
    runtime: PostsRuntime, tq: TaskQueue, post: ScheduledPost, now: datetime, report: Report
) -> None:
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.features.posts.attempts import mark_unconfirmed, resumable
    from atomq.features.posts.jobs import LIVE_STATUSES, ensure_job, job_id_for, job_statuses
    from atomq.features.posts.models import Account, ScheduledPost
    from atomq.features.posts.records import update_post

    with runtime.database.session() as session:
        account = session.get(Account, post.account_id)
        session.expunge_all()
    assert account is not None
    report.checked += 1
    dead_attempt = post.attempt_id is not None
    if not resumable(post, account, runtime, now):
        why = "the attempt publishing it stopped answering" if dead_attempt else "its retry was lost"
        if mark_unconfirmed(runtime, post, why):
            report.unconfirmed += 1
        return
    [status] = job_statuses(runtime.connection, [post.job_id or ""])
    if status in LIVE_STATUSES and status != "started":
        return  # a retry is already waiting; it resumes the post itself
    job_id = job_id_for(post.id, post.revision, resume_after=post.attempts)
    if ensure_job(tq, post, job_id):
        report.resumed += 1
        logger.warning("post %s was left publishing; queued %s to resume it", post.id, job_id)
    update_post(runtime.database, post.id, [ScheduledPost.status == "publishing"], {"job_id": job_id})
