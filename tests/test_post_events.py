"""A post's history (issue 15): every change is recorded with its time, in the same transaction."""

from __future__ import annotations

import pytest

from atomq.core.errors import PermanentError
from atomq.features.posts.publishing import publish_post
from atomq.features.posts.records import post_events
from atomq.features.posts.service import PostChanges
from testkit.fakes.server import Plan
from testkit.posts import schedule


def history(database, post_id):
    return [(e.event, e.status, e.revision, e.attempts) for e in post_events(database, post_id)]


@pytest.mark.timeout(60)
def test_created_edited_published_with_times_in_order(runtime, service, accounts, mastodon, database):
    post = schedule(service, accounts.mastodon(mastodon))
    service.update(post.id, PostChanges(content="edited"))
    publish_post(runtime, post.id, post.user_id, 2)
    assert history(database, post.id) == [
        ("created", "scheduled", 1, 0),
        ("edited", "scheduled", 2, 0),
        ("status", "publishing", 2, 1),
        ("status", "published", 2, 1),
    ]
    times = [e.at for e in post_events(database, post.id)]
    assert times == sorted(times)
    # Running the job again changes nothing, so nothing is added.
    publish_post(runtime, post.id, post.user_id, 2)
    assert len(history(database, post.id)) == 4


@pytest.mark.timeout(60)
def test_an_unconfirmed_post_keeps_its_error_and_a_canceled_one_its_cancel(
    runtime, service, accounts, webhook, database
):
    risky = schedule(service, accounts.webhook(webhook))
    webhook.plan(Plan(delay=5))
    with pytest.raises(PermanentError):
        publish_post(runtime, risky.id, risky.user_id, 1)
    last = post_events(database, risky.id)[-1]
    assert (last.event, last.status) == ("status", "unconfirmed")
    assert "outcome unknown" in (last.detail or "")

    other = schedule(service, accounts.outbox())
    service.cancel(other.id)
    service.cancel(other.id)  # twice is fine, and recorded once
    assert history(database, other.id) == [("created", "scheduled", 1, 0), ("status", "canceled", 1, 0)]
