"""The scheduled-posts HTTP API: shapes, pagination, reschedule, cancel, and every error case."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta

import pytest

from atomq.core import keys
from atomq.core.timeutil import utcnow
from atomq.features.posts.publishing import publish_post
from testkit.support import GUIDE_STATUS_KEYS

BASE = "/api/v1/tasks/scheduled-posts"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def soon(**delta: float) -> datetime:
    return utcnow() + timedelta(**(delta or {"hours": 1}))


def add_account(api, platform="outbox", handle="local", **body):
    response = api.post(
        "/api/v1/accounts", json={"platform": platform, "handle": handle, **body}, headers=api.auth("write")
    )
    assert response.status_code == 201, response.text
    return response.json()


def create(api, account, content="hello", expect=201, **body):
    body.setdefault("scheduled_for", iso(soon()))
    response = api.post(
        BASE, json={"account_id": account["id"], "content": content, **body}, headers=api.auth("write")
    )
    assert response.status_code == expect, response.text
    return response.json()


def error(response, status, field):
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["field"] == field, body
    assert body["message"]
    return body


def scheduled_at(connection, job_id):
    return connection.zscore(keys.scheduled_key("social_media"), job_id)


def test_create_show_and_job_at_the_exact_time(posts_api, connection):
    account = add_account(posts_api)
    due = soon(minutes=10)
    post = create(posts_api, account, "first post", scheduled_for=iso(due), user_id="user_456")
    assert post["status"] == "scheduled"
    assert post["user_id"] == "user_456"
    assert post["account_id"] == account["id"]
    assert datetime.fromisoformat(post["scheduled_for"]) == due
    assert post["job_id"] == f"{post['id']}-r1"
    assert scheduled_at(connection, post["job_id"]) == pytest.approx(due.timestamp(), abs=0.001)
    shown = posts_api.get(f"{BASE}/{post['id']}", headers=posts_api.auth("write"))
    assert shown.status_code == 200
    assert shown.json() == post
    # The read scope sees the post's state, not its text (docs/operations.md).
    watched = posts_api.get(f"{BASE}/{post['id']}", headers=posts_api.auth("read")).json()
    assert watched == {**post, "content": None, "media_urls": None}
    status = posts_api.get(f"{BASE}/{post['id']}/status", headers=posts_api.auth("read")).json()
    # The guide's job status dictionary, with the post's state merged in.
    assert set(GUIDE_STATUS_KEYS) <= set(status)
    assert status["job_id"] == post["job_id"]
    assert status["status"] == "scheduled"
    assert status["job_in_redis"] is True
    assert status["post_status"] == "scheduled"
    default_user = create(posts_api, account)
    assert default_user["user_id"] == "test-write"  # the token's name


def test_status_after_publishing_shows_the_job_result(posts_api, runtime, connection):
    account = add_account(posts_api)
    post = create(posts_api, account, "now", publish_now=True, scheduled_for=None)
    assert connection.lpos(keys.queue_key("social_media"), post["job_id"]) is not None  # due now: queued
    publish_post(runtime, post["id"], post["user_id"], 1)
    status = posts_api.get(f"{BASE}/{post['id']}/status", headers=posts_api.auth("read")).json()
    assert status["post_status"] == "published"
    assert status["published_at"] is not None
    assert status["platform_url"].startswith("file://")


def test_posts_beyond_the_horizon_live_only_in_the_database(posts_api, connection):
    account = add_account(posts_api)
    far = create(posts_api, account, scheduled_for=iso(soon(days=30)))
    assert not connection.exists(keys.job_key(far["job_id"]))
    status = posts_api.get(f"{BASE}/{far['id']}/status", headers=posts_api.auth("read")).json()
    assert status["job_in_redis"] is False
    assert status["status"] == "scheduled"


def test_list_newest_due_first_with_filters_and_cursor(posts_api):
    outbox = add_account(posts_api)
    other = add_account(posts_api, handle="second")
    base = soon(hours=2)
    made = [
        create(
            posts_api,
            outbox if i % 2 else other,
            f"post {i}",
            scheduled_for=iso(base + timedelta(minutes=i)),
            user_id=f"u{i % 3}",
        )
        for i in range(7)
    ]
    # Two posts due at the same instant still page deterministically (by id).
    made.append(create(posts_api, outbox, "twin", scheduled_for=iso(base + timedelta(minutes=6))))
    expected = sorted(made, key=lambda p: (p["scheduled_for"], p["id"]), reverse=True)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = posts_api.get(BASE, params=params, headers=posts_api.auth("read"))
        assert page.status_code == 200
        body = page.json()
        assert len(body["items"]) <= 3
        seen += [p["id"] for p in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [p["id"] for p in expected]

    def ids(**params):
        response = posts_api.get(BASE, params=params, headers=posts_api.auth("read"))
        assert response.status_code == 200, response.text
        return {p["id"] for p in response.json()["items"]}

    assert ids(account_id=other["id"]) == {p["id"] for p in made if p["account_id"] == other["id"]}
    assert ids(user_id="u1") == {p["id"] for p in made if p["user_id"] == "u1"}
    window = ids(due_after=iso(base + timedelta(minutes=2)), due_before=iso(base + timedelta(minutes=4)))
    assert window == {made[2]["id"], made[3]["id"]}
    posts_api.delete(f"{BASE}/{made[0]['id']}/cancel", headers=posts_api.auth("write"))
    assert ids(status="canceled") == {made[0]["id"]}
    assert ids(status="canceled,published") == {made[0]["id"]}
    assert len(ids(status=["scheduled", "canceled"])) == len(made)


def test_reschedule_moves_the_job(posts_api, connection):
    account = add_account(posts_api)
    post = create(posts_api, account, scheduled_for=iso(soon(hours=1)))
    new_time = soon(hours=3)
    response = posts_api.patch(
        f"{BASE}/{post['id']}", json={"scheduled_for": iso(new_time)}, headers=posts_api.auth("write")
    )
    assert response.status_code == 200, response.text
    moved = response.json()
    assert moved["revision"] == 2
    assert moved["job_id"] == f"{post['id']}-r2"
    assert scheduled_at(connection, post["job_id"]) is None  # the old job left the schedule
    assert connection.hget(keys.job_key(post["job_id"]), "status") == b"canceled"
    assert scheduled_at(connection, moved["job_id"]) == pytest.approx(new_time.timestamp(), abs=0.001)
    edited = posts_api.patch(
        f"{BASE}/{post['id']}", json={"content": "edited"}, headers=posts_api.auth("write")
    ).json()
    assert edited["content"] == "edited"
    assert edited["revision"] == 3
    assert edited["scheduled_for"] == moved["scheduled_for"]
    assert scheduled_at(connection, moved["job_id"]) is None
    assert scheduled_at(connection, edited["job_id"]) == pytest.approx(new_time.timestamp(), abs=0.001)
    far = posts_api.patch(
        f"{BASE}/{post['id']}", json={"scheduled_for": iso(soon(days=9))}, headers=posts_api.auth("write")
    ).json()
    assert not connection.exists(keys.job_key(far["job_id"]))  # beyond the horizon: database only
    assert scheduled_at(connection, edited["job_id"]) is None


def test_cancel(posts_api, runtime, connection):
    account = add_account(posts_api)
    post = create(posts_api, account)
    response = posts_api.delete(f"{BASE}/{post['id']}/cancel", headers=posts_api.auth("write"))
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert response.json()["canceled_at"] is not None
    assert scheduled_at(connection, post["job_id"]) is None
    assert connection.hget(keys.job_key(post["job_id"]), "status") == b"canceled"
    again = posts_api.delete(f"{BASE}/{post['id']}/cancel", headers=posts_api.auth("write"))
    assert again.status_code == 200  # canceling twice is not an error
    error(
        posts_api.patch(f"{BASE}/{post['id']}", json={"content": "x"}, headers=posts_api.auth("write")),
        409,
        "post_id",
    )
    published = create(posts_api, account, publish_now=True, scheduled_for=None)
    publish_post(runtime, published["id"], published["user_id"], 1)
    body = error(
        posts_api.delete(f"{BASE}/{published['id']}/cancel", headers=posts_api.auth("write")), 409, "post_id"
    )
    assert body["code"] == "invalid_post_state"
    assert "already been published" in body["message"]
    error(posts_api.delete(f"{BASE}/post_nope/cancel", headers=posts_api.auth("write")), 404, "post_id")


def test_cancel_while_publishing_is_409(posts_api, runtime):
    from atomq.features.posts.records import update_post

    account = add_account(posts_api)
    post = create(posts_api, account)
    assert update_post(runtime.database, post["id"], [], {"status": "publishing"})
    body = error(
        posts_api.delete(f"{BASE}/{post['id']}/cancel", headers=posts_api.auth("write")), 409, "post_id"
    )
    assert "being published" in body["message"]


def test_invalid_posts_are_422_naming_the_field(posts_api, mastodon):
    outbox = add_account(posts_api)
    masto = add_account(
        posts_api, "mastodon", "@me@fake.social", url=mastodon.url, credentials={"access_token": "t"}
    )
    naive = (utcnow() + timedelta(hours=1)).replace(tzinfo=None).isoformat()

    def refused(field, account=outbox, content="hello", **body):
        body.setdefault("scheduled_for", iso(soon()))
        payload = {"account_id": account["id"], "content": content, **body}
        return error(posts_api.post(BASE, json=payload, headers=posts_api.auth("write")), 422, field)

    assert "offset" in refused("scheduled_for", scheduled_for=naive)["message"]
    assert "Mars/Olympus" in refused("timezone", scheduled_for=naive, timezone="Mars/Olympus")["message"]
    refused("timezone", timezone="Not/AZone")  # refused even with an offset
    assert "empty" in refused("content", content="")["message"]
    refused("content", content="   \n ")
    assert "over mastodon's limit of 500" in refused("content", account=masto, content="x" * 501)["message"]
    create(posts_api, masto, "x" * 500)  # exactly at the limit is fine
    # Mastodon counts every URL as 23 characters, however long.
    create(posts_api, masto, "y" * 470 + " https://example.com/" + "z" * 200)
    assert "unknown account" in refused("account_id", account={"id": "acct_nope"})["message"]
    assert (
        "in the past"
        in refused("scheduled_for", scheduled_for=iso(utcnow() - timedelta(minutes=5)))["message"]
    )
    refused("scheduled_for", scheduled_for="next tuesday")
    refused("scheduled_for", scheduled_for=None)
    refused("media_urls", media_urls=["ftp://x"])
    refused("media_urls", account=masto, media_urls=[f"https://img.example/{n}.png" for n in range(5)])
    with_media = create(posts_api, masto, "pictures", media_urls=["https://img.example/a.png"])
    assert with_media["media_urls"] == ["https://img.example/a.png"]  # Mastodon takes media now
    refused("visibility", visibility="public")  # unknown fields are refused, not ignored
    refused("publish_now", publish_now="perhaps")
    past = create(posts_api, outbox, scheduled_for=iso(utcnow() - timedelta(minutes=5)), publish_now=True)
    assert datetime.fromisoformat(past["scheduled_for"]) > utcnow() - timedelta(minutes=1)
    missing = posts_api.post(BASE, json={"content": "x"}, headers=posts_api.auth("write"))
    error(missing, 422, "account_id")
    garbled = posts_api.post(
        BASE, content=b"{not json", headers={**posts_api.auth("write"), "Content-Type": "application/json"}
    )
    assert garbled.status_code == 422
    assert (
        posts_api.get(BASE, params={"status": "done"}, headers=posts_api.auth("read")).json()["error"][
            "field"
        ]
        == "status"
    )
    error(posts_api.get(BASE, params={"cursor": "bm9wZQ"}, headers=posts_api.auth("read")), 422, "cursor")
    error(posts_api.get(BASE, params={"limit": 0}, headers=posts_api.auth("read")), 422, "limit")
    error(
        posts_api.get(BASE, params={"due_after": "2026-01-01T00:00:00"}, headers=posts_api.auth("read")),
        422,
        "due_after",
    )
    post = create(posts_api, outbox)
    error(
        posts_api.patch(
            f"{BASE}/{post['id']}", json={"timezone": "Nowhere/Land"}, headers=posts_api.auth("write")
        ),
        422,
        "timezone",
    )
    error(
        posts_api.patch(f"{BASE}/{post['id']}", json={"content": ""}, headers=posts_api.auth("write")),
        422,
        "content",
    )
    # A wall-clock time in an edit is read in the post's own zone (UTC here), so it is accepted.
    edited = posts_api.patch(
        f"{BASE}/{post['id']}", json={"scheduled_for": naive}, headers=posts_api.auth("write")
    )
    assert edited.status_code == 200, edited.text


def test_not_found_too_large_and_scopes(posts_api):
    account = add_account(posts_api)
    for method, path in (("get", "/post_nope"), ("get", "/post_nope/status"), ("patch", "/post_nope")):
        kwargs = {"json": {"content": "x"}} if method == "patch" else {}
        response = getattr(posts_api, method)(f"{BASE}{path}", headers=posts_api.auth("write"), **kwargs)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "post_not_found"
    huge = posts_api.post(
        BASE,
        json={"account_id": account["id"], "content": "x" * 2_000_000, "scheduled_for": iso(soon())},
        headers=posts_api.auth("write"),
    )
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "payload_too_large"
    assert posts_api.get(BASE).status_code == 401
    read_only = posts_api.post(
        BASE, json={"account_id": account["id"], "content": "x"}, headers=posts_api.auth("read")
    )
    assert read_only.status_code == 403
    assert posts_api.get(BASE, headers=posts_api.auth("read")).status_code == 200


def last_sunday(year: int, month: int) -> int:
    return max(week[calendar.SUNDAY] for week in calendar.monthcalendar(year, month))


def test_timezones_and_daylight_saving(posts_api):
    account = add_account(posts_api)
    year = utcnow().year + 1
    spring, autumn = last_sunday(year, 3), last_sunday(year, 10)  # Europe's DST changes

    def due(local, zone):
        post = create(posts_api, account, scheduled_for=local, timezone=zone)
        return post, datetime.fromisoformat(post["scheduled_for"])

    post, at = due(f"{year}-03-{spring:02d}T01:30:00", "Europe/Paris")
    assert at == datetime(year, 3, spring, 0, 30, tzinfo=UTC)  # still winter time, +01:00
    assert post["timezone"] == "Europe/Paris"
    assert post["scheduled_for_local"] == f"{year}-03-{spring:02d}T01:30:00+01:00"
    _, at = due(f"{year}-03-{spring:02d}T03:30:00", "Europe/Paris")
    assert at == datetime(year, 3, spring, 1, 30, tzinfo=UTC)  # summer time, +02:00
    # 02:30 does not exist that night in Paris: refused rather than guessed.
    gap = posts_api.post(
        BASE,
        json={
            "account_id": account["id"],
            "content": "x",
            "scheduled_for": f"{year}-03-{spring:02d}T02:30:00",
            "timezone": "Europe/Paris",
        },
        headers=posts_api.auth("write"),
    )
    assert "does not exist" in error(gap, 422, "scheduled_for")["message"]
    # 02:30 happens twice in October: the first one (still summer time) is taken.
    _, at = due(f"{year}-10-{autumn:02d}T02:30:00", "Europe/Paris")
    assert at == datetime(year, 10, autumn, 0, 30, tzinfo=UTC)
    post, at = due(f"{year}-07-01T09:00:00", "America/New_York")
    assert at == datetime(year, 7, 1, 13, 0, tzinfo=UTC)
    assert post["scheduled_for_local"].endswith("-04:00")
    # An explicit offset fixes the instant; the zone is kept for display and later edits.
    post, at = due(f"{year}-01-15T10:00:00+09:00", "Asia/Tokyo")
    assert at == datetime(year, 1, 15, 1, 0, tzinfo=UTC)
    # Rescheduling with a wall-clock time reads it in the post's zone, across the DST change.
    winter = create(posts_api, account, scheduled_for=f"{year}-02-10T09:00:00", timezone="Europe/Paris")
    moved = posts_api.patch(
        f"{BASE}/{winter['id']}",
        json={"scheduled_for": f"{year}-06-10T09:00:00"},
        headers=posts_api.auth("write"),
    ).json()
    assert moved["scheduled_for_local"] == f"{year}-06-10T09:00:00+02:00"
    assert datetime.fromisoformat(moved["scheduled_for"]) == datetime(year, 6, 10, 7, 0, tzinfo=UTC)
    shown = posts_api.patch(
        f"{BASE}/{winter['id']}", json={"timezone": "UTC"}, headers=posts_api.auth("write")
    ).json()
    assert shown["scheduled_for"] == moved["scheduled_for"]  # same instant, shown in another zone
    assert shown["scheduled_for_local"] in (f"{year}-06-10T07:00:00Z", f"{year}-06-10T07:00:00+00:00")


def test_odd_bodies_never_cause_a_500(posts_api):
    account = add_account(posts_api)
    bodies = [
        [],
        "text",
        {"account_id": None, "content": None},
        {"account_id": account["id"], "content": "x", "scheduled_for": "9999-99-99"},
        {"account_id": account["id"], "content": "x", "scheduled_for": 1e30},
        {
            "account_id": account["id"],
            "content": "x",
            "timezone": "../../etc/passwd",
            "scheduled_for": "2030-01-01T00:00:00",
        },
        {"account_id": account["id"], "content": "x", "timezone": "", "scheduled_for": "2030-01-01T00:00:00"},
        {"account_id": "x" * 5000, "content": "x"},
        {"account_id": account["id"], "content": "\u0000" * 10, "scheduled_for": iso(soon())},
        {"account_id": account["id"], "content": "x", "media_urls": "https://a"},
    ]
    for body in bodies:
        response = posts_api.post(
            BASE,
            content=json.dumps(body),
            headers={**posts_api.auth("write"), "Content-Type": "application/json"},
        )
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message", "field"}
