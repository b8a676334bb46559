"""What the API holds for its lifetime: settings, Redis, the database, the task queue, tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import redis

from atomq.api.auth import TokenEntry, parse_entries
from atomq.core.connection import connect
from atomq.core.settings import Settings
from atomq.db.engine import Database
from atomq.engine.aio_queue import AsyncTaskQueue
from atomq.engine.plugins import Context
from atomq.engine.task_queue import TaskQueue
from atomq.ops.metrics import CachedExposition, build_registry, load_metric_modules

#: Seconds an API request waits on Redis before answering 503.
API_REDIS_TIMEOUT = 5.0


@dataclass
class AppState:
    """Shared resources of one API process (one per ``create_app``)."""

    settings: Settings
    redis_client: redis.Redis | None = None
    database_: Database | None = None
    tokens: list[TokenEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = parse_entries(self.settings.api_tokens)

    @cached_property
    def redis(self) -> redis.Redis:
        # No PING at start-up: the API must come up (and answer 503) while Redis is away.
        # Its commands are short (no blocking reads), so a Redis that stops answering - a
        # partition that drops packets - gets a 503 after API_REDIS_TIMEOUT seconds, not after
        # the workers' longer socket timeout.
        timeout = min(self.settings.redis_socket_timeout, API_REDIS_TIMEOUT)
        return self.redis_client or connect(
            self.settings, check=False, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    @cached_property
    def database(self) -> Database:
        return self.database_ or Database.from_settings(self.settings)

    @cached_property
    def metrics(self) -> CachedExposition:
        """What ``/metrics`` renders: atomq's collector plus the registered ones, briefly cached."""

        load_metric_modules()
        registry = build_registry(Context(self.settings, self.redis, lambda: self.database))
        return CachedExposition(registry, self.settings.metrics_cache_seconds)

    @cached_property
    def task_queue(self) -> TaskQueue:
        return TaskQueue(settings=self.settings, connection=self.redis)

    @cached_property
    def aio_task_queue(self) -> AsyncTaskQueue:
        """For waits (``GET /jobs/{id}?wait=``), which must not hold a worker thread or block
        the event loop; its client is built in the server's loop on first use."""
        return AsyncTaskQueue(settings=self.settings)

    async def aclose(self) -> None:
        """Close what belongs to the event loop (before :meth:`close`)."""
        if "aio_task_queue" in self.__dict__:
            await self.aio_task_queue.aclose()

    def close(self) -> None:
        if "redis" in self.__dict__ and self.redis_client is None:
            self.redis.close()
        if "database" in self.__dict__ and self.database_ is None:
            self.database.dispose()
