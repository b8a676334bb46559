"""What publishing needs at run time - settings, the database, Redis, an HTTP client,
publishers - passed explicitly to the state machine so tests (and embedding apps) can build
their own.

Inside a worker the task gets one from :func:`from_environment`, which keeps it for the life
of the process (keyed by PID, the environment and the worker's Redis connection): the worker
runs jobs in-process, so every post after the first reuses the database pool, the TLS
context and the HTTP connections. A forked process never reuses its parent's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import httpx
import redis

from atomq.core.connection import connect
from atomq.core.settings import Settings, load_settings
from atomq.db.engine import Database, process_database
from atomq.features.posts.credentials import CredentialsBox
from atomq.features.posts.models import Account
from atomq.features.posts.netguard import HostPolicy
from atomq.features.posts.publishers import Publisher, build_publisher
from atomq.features.posts.publishers.http import make_client
from atomq.features.posts.ratelimit import AccountLimiter

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

    @cached_property
    def http(self) -> httpx.Client:
        """One client (TLS context, keep-alive connections) for every HTTP publisher."""

        return make_client(
            HostPolicy.parse(self.settings.posts_allowed_hosts), self.settings.posts_publish_timeout
        )

    @cached_property
    def limiter(self) -> AccountLimiter:
        return AccountLimiter(self.connection)

    def publisher_for(self, account: Account) -> Publisher:
        """The publisher for ``account``'s platform."""
        if self.publisher_factory is not None:
            return self.publisher_factory(account)
        return build_publisher(account.platform, dict(account.options or {}), self.settings, client=self.http)

    def close(self) -> None:
        if "http" in self.__dict__:
            self.http.close()


_runtimes: dict[tuple[int, int, int], PostsRuntime] = {}


def from_environment(connection: redis.Redis | None = None) -> PostsRuntime:
    """This process's runtime for the current environment, on ``connection`` (the worker's)
    when given; built on first use and kept while the environment stays the same."""

    environment = hash(frozenset(os.environ.items()))
    key = (os.getpid(), environment, id(connection))
    runtime = _runtimes.get(key)
    if runtime is None:
        for stale in [k for k in _runtimes if k[0] != key[0]]:
            del _runtimes[stale]
        settings = load_settings()
        runtime = _runtimes[key] = PostsRuntime(
            settings=settings,
            database=process_database(settings),
            connection=connection if connection is not None else connect(settings),
        )
    return runtime
