"""Mastodon posts with media, against real local servers: the fake Mastodon and a media host.

The media host runs on 127.0.0.1, which the posts settings allow (ATOMQ_POSTS_ALLOWED_HOSTS);
media on any other internal address is refused by the same allowlist as webhook targets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from atomq.core.errors import Defer, PermanentError, RetryableError
from atomq.features.posts.publishers.mastodon import MastodonPublisher
from atomq.features.posts.publishing import idempotency_key, publish_post
from atomq.features.posts.ratelimit import AccountLimiter, Limit
from atomq.features.posts.runtime import PostsRuntime
from testkit.fakes.mastodon import MediaHost, rate_limited, server_error, slow
from testkit.fakes.server import Plan
from testkit.posts import schedule

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg" * 1000


@pytest.fixture
def media_host() -> Iterator[MediaHost]:
    server = MediaHost().start()
    yield server
    server.stop()


def run(runtime, post):
    return publish_post(runtime, post.id, post.user_id, post.revision)


def statuses_sent(mastodon):
    return [r for r in mastodon.requests if r.path == "/api/v1/statuses"]


def uploads(mastodon):
    return [r for r in mastodon.requests if r.path == "/api/v2/media"]


def test_two_media_are_uploaded_then_attached_to_one_status(runtime, service, accounts, mastodon, media_host):
    urls = [media_host.add("/a.png", PNG), media_host.add("/photos/b.jpg?size=large", JPEG, "image/jpeg")]
    post = schedule(service, accounts.mastodon(mastodon), "Two pictures", media_urls=urls)
    result = run(runtime, post)
    assert result["status"] == "published"
    # Both files were fetched from the media host and uploaded as they were, in order.
    assert [r.path for r in media_host.requests] == ["/a.png", "/photos/b.jpg?size=large"]
    assert len(uploads(mastodon)) == 2
    ids = list(mastodon.media)
    assert [mastodon.media[i]["data"] for i in ids] == [PNG, JPEG]
    assert [mastodon.media[i]["content_type"] for i in ids] == ["image/png", "image/jpeg"]
    assert [mastodon.media[i]["filename"] for i in ids] == ["a.png", "b.jpg"]
    assert all(r.headers["authorization"] == "Bearer masto-token" for r in uploads(mastodon))
    # Then one status carrying both attachment ids, with the usual idempotency key.
    [status] = statuses_sent(mastodon)
    assert mastodon.requests[-1] is status  # the status call comes after every upload
    assert status.json()["media_ids"] == ids
    assert status.headers["idempotency-key"] == idempotency_key(post.id, 1)
    [created] = mastodon.statuses
    assert [m["id"] for m in created["media_attachments"]] == ids
    assert all(m["url"] for m in created["media_attachments"])
    assert service.get(post.id).platform_post_id == created["id"]
    # The job runs again: nothing is fetched, uploaded or sent.
    before = len(mastodon.requests), len(media_host.requests)
    assert run(runtime, post)["note"] == "already published"
    assert (len(mastodon.requests), len(media_host.requests)) == before
    assert len(mastodon.statuses) == 1


def test_two_runs_at_once_send_one_status(runtime, service, accounts, mastodon, media_host):
    urls = [media_host.add("/a.png", PNG), media_host.add("/b.png", PNG[::-1])]
    post = schedule(service, accounts.mastodon(mastodon), media_urls=urls)
    mastodon.processing_polls = 2  # slow enough for the runs to overlap
    results: list[object] = []

    def attempt() -> None:
        try:
            results.append(run(runtime, post)["status"])
        except (RetryableError, Defer) as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert "published" in results
    assert len(statuses_sent(mastodon)) == 1
    assert len(mastodon.statuses) == 1
    assert len(uploads(mastodon)) == 2


def test_media_still_processing_is_polled_until_ready(runtime, service, accounts, mastodon, media_host):
    mastodon.processing_polls = 2  # 202 on upload, then 206, 206, 200
    post = schedule(service, accounts.mastodon(mastodon), media_urls=[media_host.add("/a.png", PNG)])
    assert run(runtime, post)["status"] == "published"
    [media_id] = mastodon.media
    polls = [r for r in mastodon.requests if r.method == "GET"]
    assert [r.path for r in polls] == [f"/api/v1/media/{media_id}"] * 3
    [status] = statuses_sent(mastodon)
    assert status.at >= polls[-1].at
    assert status.json()["media_ids"] == [media_id]
    assert mastodon.statuses[0]["media_attachments"][0]["url"]


def test_media_that_never_finishes_processing_is_retried_later(
    posts_settings, database, connection, service, accounts, mastodon, media_host
):
    runtime = PostsRuntime(posts_settings, database, connection)
    runtime.publisher_factory = lambda account, client: MastodonPublisher(client, processing_wait=0.5)
    try:
        mastodon.processing_polls = 1_000
        post = schedule(service, accounts.mastodon(mastodon), media_urls=[media_host.add("/a.png", PNG)])
        with pytest.raises(RetryableError, match="still processing"):
            run(runtime, post)
        stored = service.get(post.id)
        assert stored.status == "scheduled"  # nothing was published: safe to retry, editable
        assert "still processing" in stored.last_error
        assert statuses_sent(mastodon) == []
    finally:
        runtime.close()


def test_media_too_big_fails_the_post_without_sending(
    posts_settings, database, connection, service, accounts, mastodon, media_host
):
    settings = posts_settings.model_copy(update={"posts_media_max_bytes": 1000})
    runtime = PostsRuntime(settings, database, connection)
    try:
        urls = [media_host.add("/small.png", PNG[:500]), media_host.add("/big.png", PNG)]
        post = schedule(service, accounts.mastodon(mastodon), media_urls=urls)
        with pytest.raises(PermanentError, match="refused"):
            run(runtime, post)
        stored = service.get(post.id)
        assert stored.status == "failed"
        assert "media 2" in stored.last_error and "/big.png" in stored.last_error
        assert "over the 1000-byte limit" in stored.last_error
        assert statuses_sent(mastodon) == []
        assert mastodon.statuses == []
    finally:
        runtime.close()


def test_media_not_found_fails_the_post_without_sending(runtime, service, accounts, mastodon, media_host):
    post = schedule(service, accounts.mastodon(mastodon), media_urls=[f"{media_host.url}/gone.png"])
    with pytest.raises(PermanentError):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "failed"
    assert "/gone.png" in stored.last_error and "HTTP 404" in stored.last_error
    assert mastodon.requests == []
    assert run(runtime, post)["status"] == "failed"  # final: a second run sends nothing
    assert mastodon.requests == []


@pytest.mark.parametrize("where", ["metadata", "other_loopback"])
def test_media_on_an_internal_address_is_refused(runtime, service, accounts, mastodon, where):
    # Only 127.0.0.1 is allowed: the cloud metadata address and another loopback address are not.
    internal: MediaHost | None = None
    if where == "metadata":
        url = "http://169.254.169.254/latest/meta-data/iam.png"
    else:
        internal = MediaHost(host="127.0.0.2").start()
        url = internal.add("/secret.png", PNG)
    try:
        post = schedule(service, accounts.mastodon(mastodon), media_urls=[url])
        with pytest.raises(PermanentError):
            run(runtime, post)
        stored = service.get(post.id)
        assert stored.status == "failed"
        assert "ATOMQ_POSTS_ALLOWED_HOSTS" in stored.last_error
        assert mastodon.requests == []
        if internal is not None:
            assert internal.requests == []  # never even connected to
    finally:
        if internal is not None:
            internal.stop()


def test_media_redirecting_to_an_internal_address_is_refused(
    runtime, service, accounts, mastodon, media_host
):
    internal = MediaHost(host="127.0.0.2").start()
    try:
        target = internal.add("/secret.png", PNG)

        original = media_host.handle

        def redirect(request):
            if request.path == "/redirect.png":
                return 302, {"Location": target, "Content-Type": "text/plain"}, b""
            return original(request)

        media_host.handle = redirect  # type: ignore[method-assign]
        post = schedule(service, accounts.mastodon(mastodon), media_urls=[f"{media_host.url}/redirect.png"])
        with pytest.raises(PermanentError):
            run(runtime, post)
        assert "ATOMQ_POSTS_ALLOWED_HOSTS" in service.get(post.id).last_error
        assert internal.requests == []
        assert mastodon.requests == []
    finally:
        internal.stop()


def test_upload_refused_by_mastodon_fails_the_post_with_its_reason(
    runtime, service, accounts, mastodon, media_host
):
    mastodon.plan_media(
        Plan(status=422, body={"error": "Validation failed: File content type is invalid"}, act=False)
    )
    post = schedule(
        service, accounts.mastodon(mastodon), media_urls=[media_host.add("/a.txt", b"hi", "text/plain")]
    )
    with pytest.raises(PermanentError):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "failed"
    assert "Mastodon refused the upload" in stored.last_error
    assert "File content type is invalid" in stored.last_error
    assert statuses_sent(mastodon) == []


def test_upload_rate_limited_waits_then_publishes_once(runtime, service, accounts, mastodon, media_host):
    post = schedule(service, accounts.mastodon(mastodon), media_urls=[media_host.add("/a.png", PNG)])
    mastodon.plan_media(rate_limited(retry_after="2"))
    with pytest.raises(RetryableError) as info:
        run(runtime, post)
    assert info.value.delay is not None and info.value.delay >= 2
    stored = service.get(post.id)
    assert stored.status == "scheduled"
    assert stored.attempts == 0  # being told to wait is not an attempt
    assert "429" in stored.last_error
    with pytest.raises(Defer):  # every worker holds back for this account
        run(runtime, post)
    time.sleep(2.1)
    assert run(runtime, post)["status"] == "published"
    assert len(statuses_sent(mastodon)) == 1
    assert len(mastodon.statuses) == 1
    assert len(mastodon.statuses[0]["media_attachments"]) == 1


def test_upload_server_error_is_retried_because_nothing_was_published(
    runtime, service, accounts, mastodon, media_host
):
    post = schedule(service, accounts.mastodon(mastodon), media_urls=[media_host.add("/a.png", PNG)])
    mastodon.plan_media(server_error())
    with pytest.raises(RetryableError):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "scheduled"  # the status was never sent: not "outcome unknown"
    assert "status was not sent" in stored.last_error
    assert statuses_sent(mastodon) == []
    assert run(runtime, post)["status"] == "published"
    assert len(mastodon.statuses) == 1


def test_limiter_counts_every_request_of_a_publish(connection):
    limiter = AccountLimiter(connection)
    limit = Limit(3, 2.0)
    assert limiter.acquire("acct_m", limit, request="with-2-media", token="t1", lease=5, cost=3).ok
    limiter.release("acct_m", "t1")
    after = limiter.acquire("acct_m", limit, request="next", token="t2", lease=5)
    assert after.outcome == "wait" and 0 < after.wait <= 2.0  # the window is full
    # A cost above the whole limit still gets through, once the window is empty.
    assert limiter.acquire("acct_n", limit, request="big", token="t3", lease=5, cost=10).ok


def test_media_uploads_count_against_the_accounts_rate_limit(
    runtime, service, accounts, mastodon, media_host
):
    account = accounts.mastodon(mastodon, rate_limit="3/60")
    urls = [media_host.add("/a.png", PNG), media_host.add("/b.png", JPEG)]
    first = schedule(service, account, "two uploads and a status", media_urls=urls)
    assert run(runtime, first)["status"] == "published"
    second = schedule(service, account, "no media")
    with pytest.raises(Defer, match="rate limit"):
        run(runtime, second)  # 3 requests already made in this window
    assert len(statuses_sent(mastodon)) == 1


def test_a_repeat_whose_media_fails_stays_unknown(runtime, service, accounts, mastodon, media_host):
    # The first attempt's status call times out after Mastodon created the status...
    url = media_host.add("/a.png", PNG)
    post = schedule(service, accounts.mastodon(mastodon), media_urls=[url])
    mastodon.plan(slow(5))
    with pytest.raises(RetryableError):
        run(runtime, post)
    assert service.get(post.id).status == "publishing"
    assert len(mastodon.statuses) == 1
    # ...then the media vanishes. The repeat cannot get to the status call, but that says nothing
    # about the first one: the post must not become "failed" (it was published) nor editable.
    del media_host.files["/a.png"]
    with pytest.raises(RetryableError):
        run(runtime, post)
    stored = service.get(post.id)
    assert stored.status == "publishing"
    assert "earlier attempt may have published it" in stored.last_error
    media_host.add("/a.png", PNG)
    assert run(runtime, post)["status"] == "published"
    assert len(mastodon.statuses) == 1  # the repeat carried the same key: no second post
    assert service.get(post.id).platform_post_id == mastodon.statuses[0]["id"]


def test_a_post_with_media_gets_a_job_timeout_covering_its_whole_attempt(
    service, accounts, mastodon, media_host, connection, database, posts_settings
):
    from atomq.core.settings import load_settings
    from atomq.engine.jobs import load_job
    from atomq.features.posts.jobs import job_timeout
    from atomq.features.posts.models import ScheduledPost
    from atomq.features.posts.publishing import attempt_seconds

    account = accounts.mastodon(mastodon)
    plain = schedule(service, account, "no media")
    assert load_job(plain.job_id, connection).timeout == 300  # the task's own
    # With the default 30 s publish timeout, four media make an attempt longer than 300 s: the
    # job must outlast it, or a job killed at its timeout leaves the post leased.
    settings = load_settings()
    heavy = ScheduledPost(media_urls=[f"https://media.example/{i}.png" for i in range(4)])
    assert attempt_seconds(settings, 4) > 300
    assert job_timeout(settings, heavy) > attempt_seconds(settings, 4)
    assert job_timeout(settings, ScheduledPost(media_urls=[])) is None
    # A post with media created under such settings gets that timeout on its job.
    from atomq.engine.task_queue import TaskQueue
    from atomq.features.posts.service import PostsService

    slow = posts_settings.model_copy(update={"posts_publish_timeout": 30.0})
    slow_service = PostsService(database, TaskQueue(settings=slow, connection=connection), slow)
    urls = [media_host.add(f"/{i}.png", PNG) for i in range(4)]
    post = schedule(slow_service, account, "four pictures", media_urls=urls)
    assert load_job(post.job_id, connection).timeout == job_timeout(slow, post) > 300
