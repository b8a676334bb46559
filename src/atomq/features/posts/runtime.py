"""What publishing needs at run time - settings, the database, Redis, HTTP clients,
publishers - passed explicitly to the state machine so tests (and embedding apps) can build
their own.

Inside a worker the task gets one from :func:`from_environment`, which keeps it for the life
of the process (keyed by PID, the environment and the worker's Redis connection): the worker
runs jobs in-process, so every post after the first reuses the database pool, the TLS
context and - on the same event loop - the HTTP client and its connections
(:mod:`~atomq.features.posts.publishers.clients`). A forked process never reuses its parent's.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx
import redis

from atomq.core.connection import connect
from atomq.core.settings import Settings, load_settings
from atomq.db.engine import Database, process_database
from atomq.features.posts.credentials import CredentialsBox
from atomq.features.posts.models import Account
from atomq.features.posts.netguard import HostPolicy
from atomq.features.posts.offloop import BATCH_LIMIT, Batches, database_kind, on_pool, threads
from atomq.features.posts.publishers import Publisher, build_publisher
from atomq.features.posts.publishers.clients import LoopClients
from atomq.features.posts.publishers.http import make_client
from atomq.features.posts.ratelimit import AccountLimiter

P = ParamSpec("P")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item, beside R its result
R = TypeVar("R")

#: Makes the publisher for an account, sending through the given client (the loop's).
PublisherFactory = Callable[[Account, httpx.AsyncClient], Publisher]


@dataclass
class PostsRuntime:
    """Settings, database, Redis connection and publisher factory for publishing posts."""

    settings: Settings
    database: Database
    connection: redis.Redis
    publisher_factory: PublisherFactory | None = field(default=None)
    _batches: dict[Callable[..., Any], Batches[Any, Any]] = field(
        default_factory=dict, init=False, repr=False
    )

    @cached_property
    def credentials(self) -> CredentialsBox:
        return CredentialsBox.from_settings(self.settings)

    @cached_property
    def tls(self) -> ssl.SSLContext:
        """One TLS context (the CA bundle loaded once) for the clients of every event loop."""
        return httpx.create_ssl_context(trust_env=False)

    @cached_property
    def clients(self) -> LoopClients:
        """The HTTP publishers' clients: one per running event loop, each pooling connections."""
        return LoopClients(self._new_client)

    def _new_client(self) -> httpx.AsyncClient:
        # Settings are read when a loop's client is made, so a runtime whose settings changed
        # (tests do) gives the next loop a client that follows them.
        return make_client(
            HostPolicy.parse(self.settings.posts_allowed_hosts),
            self.settings.posts_publish_timeout,
            ssl_context=self.tls,
        )

    async def http(self, key: str = "") -> httpx.AsyncClient:
        """The running event loop's client for HTTP publishers, for ``key`` (an account id: the
        same account always gets the same client, and so its kept-alive connections)."""
        return await self.clients.get(key)

    @cached_property
    def step_pool(self) -> str:
        """The threads publishing's database steps run on (:mod:`~atomq.features.posts.offloop`:
        one on SQLite, two for a database over the network)."""
        return database_kind(self.database.dialect)

    async def step(
        self, func: Callable[Concatenate[PostsRuntime, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``func(self, *args, **kwargs)``, a blocking step of publishing (database, Redis), on
        the threads for this runtime's database, awaited without holding the event loop."""
        return await on_pool(self.step_pool, func, self, *args, **kwargs)

    async def together(self, run_many: Callable[[PostsRuntime, list[I]], list[R | Exception]], item: I) -> R:
        """``run_many(self, [item, ...])``'s result for ``item``: a step like :meth:`step`, but
        calls made while this runtime's database threads are busy run together, as one step
        (:class:`~atomq.features.posts.offloop.Batches`)."""
        batches = self._batches.get(run_many)
        if batches is None:
            batches = self._batches[run_many] = Batches(functools.partial(run_many, self), self.step_pool)
        result: R = await batches(item)
        return result

    @cached_property
    def limiter(self) -> AccountLimiter:
        return AccountLimiter(self.connection)

    async def publisher_for(self, account: Account) -> Publisher:
        """The publisher for ``account``'s platform, on the running loop's client for it."""
        client = await self.http(account.id)
        if self.publisher_factory is not None:
            return self.publisher_factory(account, client)
        return build_publisher(account.platform, dict(account.options or {}), self.settings, client=client)

    def close(self) -> None:
        """Forget the clients of loops that have ended (each loop closes its own as it shuts
        down; an open one can only be closed on it, with ``await runtime.clients.aclose()``)."""
        if "clients" in self.__dict__:
            self.clients.forget_closed()


_runtimes: dict[tuple[int, int, int], PostsRuntime] = {}


async def warm_up(connection: redis.Redis) -> None:
    """Build what a worker's first post would: this process's runtime on ``connection``, its
    TLS context, the running loop's HTTP clients, a pooled database connection per database
    thread, and the query every post starts with, compiled. The worker calls it before taking
    jobs (``@task(warm_up=...)``), so posts due the minute it started are not late for it."""
    runtime = from_environment(connection)
    _ = runtime.tls, runtime.credentials, runtime.limiter
    await runtime.clients.warm()
    await runtime.step(_warm_database)


def _warm_database(runtime: PostsRuntime) -> None:
    from atomq.features.posts import attempts  # publishing's, deferred like the task's
    from atomq.features.posts.records import load_post

    # Opened together, so the pool keeps one for each thread that runs publishing's steps.
    opened = [runtime.database.engine.connect() for _ in range(threads(runtime.step_pool))]
    for connection in opened:
        connection.close()
    load_post(runtime.database, "")  # also configures the ORM's mappers
    # The batched claims and records, for as many posts as a step takes together.
    attempts.prepare(runtime, BATCH_LIMIT)


def _environment_hash() -> int:
    """A hash of the whole environment, which every publish asks for. CPython keeps it as
    bytes in ``os.environ._data``; hashing those skips decoding every name and value, a tenth
    of what hashing ``os.environ.items()`` costs (about 2 us against 19 us for 38 variables)."""
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict):
        return hash(frozenset(raw.items()))
    return hash(frozenset(os.environ.items()))


def from_environment(connection: redis.Redis | None = None) -> PostsRuntime:
    """This process's runtime for the current environment, on ``connection`` (the worker's)
    when given; built on first use and kept while the environment stays the same."""

    key = (os.getpid(), _environment_hash(), id(connection))
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
