"""Accounts over the API: write-only credentials, the host allowlist, removal rules."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from atomq.core.timeutil import utcnow
from atomq.features.posts.models import Account

URL = "/api/v1/accounts"


def add(api, expect=201, **body):
    response = api.post(URL, json=body, headers=api.auth("write"))
    assert response.status_code == expect, response.text
    return response.json()


def refused(api, field, status=422, **body):
    response = api.post(URL, json=body, headers=api.auth("write"))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    return error


@pytest.fixture
def open_api(api_settings, connection, database):
    """The API with the default allowlist ('*': public addresses only)."""
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app
    from testkit.fixtures import ApiClient
    from testkit.posts import POSTS_OVERRIDES

    settings = api_settings.model_copy(update={**POSTS_OVERRIDES, "posts_allowed_hosts": ["*"]})
    with TestClient(create_app(settings, redis_client=connection, database=database)) as client:
        yield ApiClient(client)


def test_credentials_are_write_only_and_encrypted(posts_api, database, mastodon, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "super-secret-token-123"
    account = add(
        posts_api,
        platform="mastodon",
        handle="@me@fake.social",
        url=mastodon.url,
        credentials={"access_token": secret},
        options={"visibility": "unlisted"},
    )
    assert account["has_credentials"] is True
    assert "credentials" not in account
    assert account["options"] == {"visibility": "unlisted"}
    outbox = add(posts_api, platform="outbox", handle="local")  # an outbox needs no credentials
    assert outbox["has_credentials"] is False
    assert outbox["url"] is None
    listed = posts_api.get(URL, headers=posts_api.auth("read"))
    one = posts_api.get(f"{URL}/{account['id']}", headers=posts_api.auth("read"))
    assert [a["id"] for a in listed.json()["accounts"]] == [account["id"], outbox["id"]]
    assert one.json() == account
    for response in (listed, one):
        assert secret not in response.text
    openapi = posts_api.get("/openapi.json").text
    assert secret not in openapi
    with database.session() as session:
        stored = session.get(Account, account["id"])
        assert stored.credentials and secret not in stored.credentials
    assert secret not in caplog.text


def test_invalid_accounts_are_422_naming_the_field(posts_api, mastodon, webhook):
    refused(posts_api, "platform", platform="myspace", handle="x")
    refused(posts_api, "handle", platform="outbox", handle=" ")
    refused(posts_api, "credentials.access_token", platform="mastodon", handle="@a@b", url=mastodon.url)
    refused(posts_api, "credentials.secret", platform="webhook", handle="h", url=webhook.url, credentials={})
    refused(posts_api, "url", platform="webhook", handle="h", credentials={"secret": "s"})
    refused(posts_api, "url", platform="mastodon", handle="no-instance", credentials={"access_token": "t"})
    refused(
        posts_api, "url", platform="webhook", handle="h", url="ftp://127.0.0.1/x", credentials={"secret": "s"}
    )
    error = refused(
        posts_api,
        "url",
        platform="webhook",
        handle="h",
        url="http://user:pw@127.0.0.1/x",
        credentials={"secret": "s"},
    )
    assert "pw" not in error["message"]
    refused(posts_api, "options.colour", platform="outbox", handle="o", options={"colour": "red"})
    refused(
        posts_api,
        "options.visibility",
        platform="mastodon",
        handle="@a@b",
        url=mastodon.url,
        credentials={"access_token": "t"},
        options={"visibility": "everyone"},
    )
    refused(posts_api, "options.rate_limit", platform="outbox", handle="o", options={"rate_limit": "fast"})
    refused(posts_api, "credentials", platform="outbox", handle="o", credentials="token")
    refused(posts_api, "nickname", platform="outbox", handle="o", nickname="x")
    add(posts_api, platform="outbox", handle="dup")
    conflict = refused(posts_api, "handle", status=409, platform="outbox", handle="dup")
    assert conflict["code"] == "duplicate_account"
    assert (
        posts_api.post(
            URL, json={"platform": "outbox", "handle": "x"}, headers=posts_api.auth("read")
        ).status_code
        == 403
    )


def test_mastodon_instance_comes_from_the_handle(posts_api):
    account = add(
        posts_api, platform="mastodon", handle="@alice@127.0.0.1", credentials={"access_token": "t"}
    )
    assert account["url"] == "https://127.0.0.1"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # loopback
        "http://localhost:9/hook",  # a name that resolves to loopback
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://10.1.2.3/hook",  # private
        "http://[::1]/hook",  # IPv6 loopback
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://0.0.0.0/hook",
    ],
)
def test_internal_targets_are_refused_unless_listed(open_api, url):
    error = refused(open_api, "url", platform="webhook", handle="h", url=url, credentials={"secret": "s"})
    assert "ATOMQ_POSTS_ALLOWED_HOSTS" in error["message"]


def test_listed_hosts_are_allowed(posts_api, webhook):
    # posts_api lists 127.0.0.1 explicitly, as an operator would for an internal receiver.
    add(posts_api, platform="webhook", handle="h", url=f"{webhook.url}/in", credentials={"secret": "s"})


def test_remove(posts_api, service):
    account = add(posts_api, platform="outbox", handle="local")
    post = posts_api.post(
        "/api/v1/tasks/scheduled-posts",
        json={
            "account_id": account["id"],
            "content": "x",
            "scheduled_for": (utcnow() + timedelta(hours=1)).isoformat(),
        },
        headers=posts_api.auth("write"),
    ).json()
    busy = posts_api.delete(f"{URL}/{account['id']}", headers=posts_api.auth("write"))
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "account_in_use"
    service.cancel(post["id"])
    removed = posts_api.delete(f"{URL}/{account['id']}", headers=posts_api.auth("write"))
    assert removed.status_code == 200
    assert removed.json()["removed_at"] is not None
    assert posts_api.get(f"{URL}/{account['id']}", headers=posts_api.auth("read")).status_code == 404
    assert posts_api.get(URL, headers=posts_api.auth("read")).json()["accounts"] == []
    assert posts_api.delete(f"{URL}/{account['id']}", headers=posts_api.auth("write")).status_code == 404
    assert posts_api.delete(f"{URL}/acct_nope", headers=posts_api.auth("write")).status_code == 404
    # The canceled post still names its (removed) account; new posts cannot use it.
    assert (
        posts_api.get(
            f"/api/v1/tasks/scheduled-posts/{post['id']}", headers=posts_api.auth("read")
        ).status_code
        == 200
    )
    again = posts_api.post(
        "/api/v1/tasks/scheduled-posts",
        json={"account_id": account["id"], "content": "x", "publish_now": True},
        headers=posts_api.auth("write"),
    )
    assert again.status_code == 422
    assert again.json()["error"]["field"] == "account_id"
    add(posts_api, platform="outbox", handle="local")  # the handle is free again


def test_opened_credentials_are_remembered_and_each_caller_gets_its_own_copy():
    from cryptography.fernet import Fernet

    from atomq.core.errors import ConfigurationError
    from atomq.features.posts.credentials import OPENED_CACHE, CredentialsBox

    box = CredentialsBox([Fernet.generate_key()])
    token = box.seal({"access_token": "secret", "nested": {"k": "v"}})
    first = box.open(token)
    first["nested"]["k"] = "changed by a caller"
    assert box.open(token) == {"access_token": "secret", "nested": {"k": "v"}}
    for i in range(OPENED_CACHE + 10):  # the cache stays bounded
        box.open(box.seal({"n": i}))
    assert len(box._opened) == OPENED_CACHE
    # A token sealed with another key is still refused, remembered tokens or not.
    with pytest.raises(ConfigurationError, match="cannot decrypt"):
        box.open(CredentialsBox([Fernet.generate_key()]).seal({"x": 1}))
