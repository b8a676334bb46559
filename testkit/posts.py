"""Fixtures for the scheduled-posts tests (loaded by conftest.py as a plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from pydantic import SecretStr

from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from atomq.engine.task_queue import TaskQueue
from atomq.features.posts.accounts import AccountInput, create_account
from atomq.features.posts.models import Account
from atomq.features.posts.runtime import PostsRuntime
from atomq.features.posts.service import PostInput, PostsService
from testkit.fakes.mastodon import FakeMastodon
from testkit.fakes.webhook import FakeWebhookReceiver

#: One key for the whole session: the API (in the test process) and workers must agree.
CREDENTIALS_KEY = Fernet.generate_key().decode()

#: What the posts tests change in the settings: fakes on 127.0.0.1 are allowed targets,
#: publishers give up quickly, the reconciler runs every second.
POSTS_OVERRIDES: dict[str, Any] = {
    "posts_allowed_hosts": ["127.0.0.1"],
    "credentials_key": SecretStr(CREDENTIALS_KEY),
    "posts_publish_timeout": 1.0,
    "posts_reconcile_interval": 1.0,
}


def database_url_of(database: Database) -> str:
    return database.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def posts_settings(settings: Settings, database: Database) -> Settings:
    return settings.model_copy(update={**POSTS_OVERRIDES, "database_url": database_url_of(database)})


@pytest.fixture
def posts_env(env: dict[str, str], database: Database) -> dict[str, str]:
    """Environment for worker and CLI processes that work on posts."""
    return dict(
        env,
        DATABASE_URL=database_url_of(database),
        ATOMQ_POSTS_ALLOWED_HOSTS="127.0.0.1",
        ATOMQ_CREDENTIALS_KEY=CREDENTIALS_KEY,
        ATOMQ_POSTS_PUBLISH_TIMEOUT="1",
        ATOMQ_POSTS_RECONCILE_INTERVAL="1",
    )


@pytest.fixture
def runtime(posts_settings: Settings, database: Database, connection: redis.Redis) -> Iterator[PostsRuntime]:
    runtime = PostsRuntime(posts_settings, database, connection)
    yield runtime
    runtime.close()


@pytest.fixture
def posts_tq(posts_settings: Settings, connection: redis.Redis) -> TaskQueue:
    return TaskQueue(settings=posts_settings, connection=connection)


@pytest.fixture
def service(posts_settings: Settings, database: Database, posts_tq: TaskQueue) -> PostsService:
    return PostsService(database, posts_tq, posts_settings)


@pytest.fixture
def mastodon() -> Iterator[FakeMastodon]:
    server = FakeMastodon().start()
    yield server
    server.stop()


@pytest.fixture
def webhook() -> Iterator[FakeWebhookReceiver]:
    server = FakeWebhookReceiver().start()
    yield server
    server.stop()


class Accounts:
    """Makes accounts for a test."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    def mastodon(self, server: FakeMastodon, handle: str = "@tester@fake.social", **options: Any) -> Account:
        return create_account(
            self.database,
            self.settings,
            AccountInput(
                "mastodon", handle, "user_1", server.url, {"access_token": server.token}, dict(options)
            ),
        )

    def webhook(self, server: FakeWebhookReceiver, handle: str = "hook", **options: Any) -> Account:
        return create_account(
            self.database,
            self.settings,
            AccountInput(
                "webhook", handle, "user_1", f"{server.url}/hooks/posts", {"secret": server.secret}, options
            ),
        )

    def outbox(self, handle: str = "local", **options: Any) -> Account:
        return create_account(
            self.database, self.settings, AccountInput("outbox", handle, "user_1", options=options)
        )


@pytest.fixture
def accounts(database: Database, posts_settings: Settings) -> Accounts:
    return Accounts(database, posts_settings)


def schedule(
    service: PostsService, account: Account, content: str = "hello", *, at: datetime | None = None, **kw: Any
) -> Any:
    """Create a post through the service (due in an hour unless ``at`` is given)."""
    return service.create(
        PostInput(
            account_id=account.id,
            content=content,
            user_id="user_1",
            scheduled_for=at if at is not None or kw.get("publish_now") else utcnow() + timedelta(hours=1),
            **kw,
        )
    )


@pytest.fixture
def posts_api(api_settings: Settings, connection: redis.Redis, database: Database) -> Iterator[Any]:
    """The API on a real Redis and database, with the posts settings above."""
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app
    from testkit.fixtures import ApiClient

    settings = api_settings.model_copy(update=POSTS_OVERRIDES)
    app = create_app(settings, redis_client=connection, database=database)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiClient(client)
