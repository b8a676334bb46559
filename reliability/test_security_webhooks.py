"""Webhook targets outside the allowlist are refused when the account is saved and again when a
post is published: 127.0.0.1, 169.254.169.254 (cloud metadata), IPv6 loopback, and names that
resolve to them, including a name that resolved to a public address when the account was saved
and to an internal one at publish time (DNS rebinding).

Names are answered by a resolver the test controls (reliability/security_resolver.py), in the
test process for the API and in the real worker process that publishes. The allowlist is the
default ``*`` (any public address) plus one explicitly listed name, which proves the resolver and
the publishing path work: that post reaches the fake receiver, the others never do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from atomq.api.app import create_app
from reliability import security_resolver
from reliability.report import report
from testkit.fakes.webhook import FakeWebhookReceiver
from testkit.posts import POSTS_OVERRIDES
from testkit.support import run_cli

pytestmark = pytest.mark.slow

ALLOWED = ["*", "listed.rebind.test"]
PUBLIC = "93.184.215.14"  # a public address; only ever resolved to, never connected to
INTERNAL = {"loopback": "127.0.0.1", "metadata": "169.254.169.254", "ipv6-loopback": "::1"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Accounts and posts in SQLite: the network guard is what is under test."""
    return f"sqlite:///{tmp_path / 'atomq.db'}"


@pytest.fixture
def hosts_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "hosts.json"
    security_resolver.write(path, {})
    with security_resolver.hosts(path):
        yield path


@pytest.fixture
def guarded_api(api_settings: Any, connection: Any, database: Any, hosts_file: Path) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={**POSTS_OVERRIDES, "posts_allowed_hosts": ALLOWED})
    with TestClient(create_app(settings, redis_client=connection, database=database)) as client:
        client.headers["Authorization"] = "Bearer atq_test_admin_token"
        yield client


def _add_webhook(api: TestClient, url: str) -> Any:
    return api.post(
        "/api/v1/accounts",
        json={"platform": "webhook", "handle": url, "url": url, "credentials": {"secret": "hook-secret"}},
    )


def test_internal_targets_and_names_resolving_to_them_are_refused_when_saved(guarded_api, hosts_file):
    security_resolver.write(
        hosts_file,
        {
            **{f"{name}.rebind.test": [address] for name, address in INTERNAL.items()},
            # One public and one internal answer: any internal answer is enough to refuse.
            "mixed.rebind.test": [PUBLIC, "127.0.0.1"],
        },
    )
    urls = [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://localhost:9/hook",
        *(f"http://{name}.rebind.test:9/hook" for name in INTERNAL),
        "http://mixed.rebind.test/hook",
    ]
    for url in urls:
        response = _add_webhook(guarded_api, url)
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert error["field"] == "url" and "ATOMQ_POSTS_ALLOWED_HOSTS" in error["message"], (url, error)
    assert guarded_api.get("/api/v1/accounts").json()["accounts"] == []


def test_a_name_rebound_to_an_internal_address_is_refused_at_publish_time(
    guarded_api, hosts_file, env, tmp_path
):
    receiver = FakeWebhookReceiver().start()
    try:
        port = receiver.port
        names = {kind: f"{kind}.rebind.test" for kind in INTERNAL}
        # Saved while every name looks public (the listed one may be internal: it is named).
        security_resolver.write(
            hosts_file,
            {**{name: [PUBLIC] for name in names.values()}, "listed.rebind.test": ["127.0.0.1"]},
        )
        accounts = {}
        for kind, name in {**names, "listed": "listed.rebind.test"}.items():
            saved = _add_webhook(guarded_api, f"http://{name}:{port}/hooks/posts")
            assert saved.status_code == 201, saved.text
            accounts[kind] = saved.json()["id"]
        # Then the answers change to internal addresses; the receiver listens on 127.0.0.1.
        security_resolver.write(
            hosts_file,
            {**{names[kind]: [address] for kind, address in INTERNAL.items()}, "listed.rebind.test": ["127.0.0.1"]},
        )  # fmt: skip
        posts = {}
        for kind, account_id in accounts.items():
            created = guarded_api.post(
                "/api/v1/tasks/scheduled-posts",
                json={"account_id": account_id, "content": f"to {kind}", "publish_now": True},
            )
            assert created.status_code == 201, created.text
            posts[kind] = created.json()["id"]
        worker_env = dict(
            env,
            DATABASE_URL=guarded_api.app.state.atomq.settings.database_url,  # type: ignore[attr-defined]
            ATOMQ_POSTS_ALLOWED_HOSTS=",".join(ALLOWED),
            ATOMQ_CREDENTIALS_KEY=POSTS_OVERRIDES["credentials_key"].get_secret_value(),
            ATOMQ_POSTS_PUBLISH_TIMEOUT="1",
            ATOMQ_TASK_MODULES="tests.jobs,reliability.security_resolver",
            ATOMQ_TEST_HOSTS_FILE=str(hosts_file),
        )
        done = run_cli(worker_env, "worker", "--burst", "--no-scheduler", timeout=90)
        assert done.returncode == 0, done.stderr
        statuses = {
            kind: guarded_api.get(f"/api/v1/tasks/scheduled-posts/{post_id}").json()
            for kind, post_id in posts.items()
        }
        assert statuses["listed"]["status"] == "published", statuses["listed"]
        assert len(receiver.accepted) == 1, receiver.accepted
        assert len(receiver.requests) == 1, "only the explicitly listed name may reach 127.0.0.1"
        for kind in INTERNAL:
            post = statuses[kind]
            assert post["status"] == "failed", (kind, post)
            assert "ATOMQ_POSTS_ALLOWED_HOSTS does not allow" in (post.get("last_error") or ""), (kind, post)
            assert INTERNAL[kind] in post["last_error"], (kind, post)
    finally:
        receiver.stop()
    report(
        "security_webhooks",
        refused_at_publish=len(INTERNAL),
        delivered_to_listed=1,
        requests_to_internal_from_unlisted=0,
    )
