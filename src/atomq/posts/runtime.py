"""What publishing needs at run time - settings, the database, Redis, publishers - passed
explicitly to the state machine so tests (and embedding apps) can build their own.

Inside a worker the task builds one from the environment with :func:`from_environment`;
the database engine is cached per process (keyed by PID, so a forked work-horse never
reuses its parent's connections).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import redis

from atomq.db.engine import Database
from atomq.posts.credentials import CredentialsBox
from atomq.posts.models import Account
from atomq.posts.publishers import Publisher, build_publisher
from atomq.posts.ratelimit import AccountLimiter
from atomq.settings import Settings, load_settings

PublisherFactory = Callable[[Account], Publisher]


@dataclass
class PostsRuntime:
    """Settings, database, Redis connection and publisher factory for publishing posts."""

    settings: Settings
    database: Database
    connection: redis.Redis
    publisher_factory: PublisherFactory | None = field(default=None)

    @cached_property
    def credentials(self) -> CredentialsBox:
        return CredentialsBox.from_settings(self.settings)

    def publisher_for(self, account: Account) -> Publisher:
        """The publisher for ``account``'s platform."""
        if self.publisher_factory is not None:
            return self.publisher_factory(account)
        return build_publisher(account.platform, dict(account.options or {}), self.settings)

    @cached_property
    def limiter(self) -> AccountLimiter:
        return AccountLimiter(self.connection)


_databases: dict[tuple[int, str], Database] = {}


def process_database(settings: Settings) -> Database:
    """This process's database for ``settings`` (one engine per process and URL)."""
    from atomq.db.engine import database_url

    key = (os.getpid(), database_url(settings))
    database = _databases.get(key)
    if database is None:
        # Entries of other PIDs are a parent's, inherited through fork: never use them.
        for stale in [k for k in _databases if k[0] != key[0]]:
            del _databases[stale]
        database = _databases[key] = Database.from_settings(settings)
    return database


def from_environment(connection: redis.Redis | None = None) -> PostsRuntime:
    """A runtime from the environment, reusing ``connection`` (the worker's) when given."""
    from atomq.connection import connect

    settings = load_settings()
    return PostsRuntime(
        settings=settings,
        database=process_database(settings),
        connection=connection if connection is not None else connect(settings),
    )
