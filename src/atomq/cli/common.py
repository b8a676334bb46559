"""Options and the runtime every command shares."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import click
import redis

from atomq.core.connection import connect
from atomq.core.settings import Settings, load_settings
from atomq.engine.task_queue import TaskQueue

F = TypeVar("F", bound=Callable[..., Any])


def url_option(func: F) -> F:
    """``--url``: the Redis URL, defaulting to ``REDIS_URL`` as the guide's commands do."""
    return click.option(
        "--url",
        "-u",
        envvar="REDIS_URL",
        default=None,
        metavar="URL",
        help="Redis URL, e.g. redis://:password@localhost:6379/0 (env REDIS_URL).",
    )(func)


def json_option(func: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


class Runtime:
    """Settings, Redis connection and task queue for one command, built on first use."""

    def __init__(self, url: str | None = None, **overrides: Any) -> None:
        if url:
            overrides["redis_url"] = url
        self._overrides = overrides

    @cached_property
    def settings(self) -> Settings:
        return load_settings(**self._overrides)

    @cached_property
    def connection(self) -> redis.Redis:
        return connect(self.settings)

    @cached_property
    def task_queue(self) -> TaskQueue:
        return TaskQueue(settings=self.settings, connection=self.connection)
