"""Scheduled posts on the dashboard timeline and in ``/metrics`` (posts by state)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from atomq.core.visibility import CONTENT, allows
from atomq.engine.plugins import Context, TimelineItem, metrics_collector, timeline_source
from atomq.features.posts.models import ScheduledPost

#: Post states shown as a series even at zero, so alerts on them see a 0 rather than nothing.
STATES = ("scheduled", "publishing", "published", "failed", "canceled", "unconfirmed")


@timeline_source("posts", title="Scheduled posts", order=20)
def scheduled_posts(ctx: Context, until: datetime, limit: int) -> list[TimelineItem]:
    """Posts still to publish (and ones being published) until ``until``, soonest first."""
    with ctx.database.session() as session:
        rows = session.scalars(
            select(ScheduledPost)
            .where(
                ScheduledPost.status.in_(("scheduled", "publishing")), ScheduledPost.scheduled_for <= until
            )
            .order_by(ScheduledPost.scheduled_for, ScheduledPost.id)
            .limit(limit)
        ).all()
    return [
        TimelineItem(
            at=post.scheduled_for,
            kind="post",
            # Post text is user content: shown to admins only, like job arguments.
            title=post.content[:60] if allows(ctx.scope, CONTENT) else f"post for {post.account_id}",
            ref=post.id,
            status="overdue" if post.status == "scheduled" and post.scheduled_for < ctx.now else post.status,
            queue="social_media",
            link=f"jobs/{post.job_id}" if post.job_id else None,
            detail=f"attempts: {post.attempts}"
            + (f"; last error: {post.last_error}" if post.last_error else ""),
        )
        for post in rows
    ]


@metrics_collector("posts")
def posts_by_state(ctx: Context) -> Iterable[Any]:
    """``atomq_posts{state}``: scheduled posts by state (one indexed GROUP BY)."""
    from prometheus_client.core import GaugeMetricFamily

    gauge = GaugeMetricFamily("atomq_posts", "Scheduled posts by state.", labels=["state"])
    with ctx.database.session() as session:
        counts = dict(
            session.execute(select(ScheduledPost.status, func.count()).group_by(ScheduledPost.status)).all()
        )
    for state in sorted(set(STATES) | set(counts)):
        gauge.add_metric([state], counts.get(state, 0))
    yield gauge
