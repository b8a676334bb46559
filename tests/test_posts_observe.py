"""Scheduled posts where on-call people look: /metrics and the dashboard timeline."""

from __future__ import annotations

from datetime import timedelta

from atomq.core.timeutil import utcnow
from atomq.engine.plugins import Context
from atomq.features.posts.observe import scheduled_posts
from testkit.posts import schedule


def test_posts_by_state_in_metrics(posts_api, service, accounts):
    account = accounts.outbox()
    for _ in range(3):
        schedule(service, account)
    canceled = schedule(service, account)
    service.cancel(canceled.id)
    response = posts_api.get("/metrics", headers=posts_api.auth("read"))
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert 'atomq_posts{state="scheduled"} 3.0' in lines
    assert 'atomq_posts{state="canceled"} 1.0' in lines
    assert 'atomq_posts{state="published"} 0.0' in lines
    assert 'atomq_collector_up{collector="posts"} 1.0' in lines


def test_scheduled_posts_on_the_dashboard_timeline(posts_settings, connection, database, service, accounts):
    account = accounts.outbox()
    soon = schedule(service, account, "due soon", at=utcnow() + timedelta(minutes=10))
    schedule(service, account, "due next week", at=utcnow() + timedelta(days=7))
    now = utcnow()
    for scope, title in (("admin", "due soon"), ("read", f"post for {account.id}")):
        ctx = Context(posts_settings, connection, now=now, scope=scope, database_factory=lambda: database)
        items = scheduled_posts(ctx, now + timedelta(hours=24), 50)
        assert [item.ref for item in items] == [soon.id]
        assert items[0].title == title  # post text only for admins
        assert items[0].kind == "post"
        assert items[0].link == f"jobs/{soon.job_id}"
