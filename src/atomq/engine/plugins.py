"""One registry for everything a feature plugs into atomq.

The engine runs jobs; features (batches, long jobs, recurring jobs, workflows, scheduled
posts, and an application's own) add tasks, job hooks, periodic duties, metrics and dashboard
sections without the engine knowing them. A feature declares itself once, as a
:class:`Feature` published under the ``atomq.features`` entry-point group (see
``pyproject.toml``), listing the modules that register each kind of part. Each kind is
imported only in the processes that use it, so a worker never imports the dashboard's code
and the API never starts a feature's periodic duties:

============  ===============================================  ============================
kind          registered in those modules with                 imported by
============  ===============================================  ============================
``tasks``     :func:`atomq.task`                               every process (enqueue, run)
``hooks``     :func:`job_hooks`                                workers
``periodic``  :func:`periodic`                                 schedulers (the leader runs them)
``metrics``   :func:`metrics_collector`                        the API (``/metrics``)
``dashboard`` :func:`timeline_source`, :func:`progress_source` the API (``/dashboard``)
``models``    SQLAlchemy models on :class:`atomq.db.base.Base`  migrations, the database layer
============  ===============================================  ============================

Everything registered lands in :data:`registry`. Functions a feature registers get a
:class:`Context` (settings, Redis, the database on demand) and return plain values; the
surfaces render them.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import redis

from atomq.core.errors import ConfigurationError
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow

if TYPE_CHECKING:
    from atomq.db.engine import Database
    from atomq.engine.hooks import JobHooks

logger = logging.getLogger("atomq.plugins")

#: The entry-point group features are published under.
ENTRY_POINT_GROUP = "atomq.features"

Kind = Literal["tasks", "hooks", "periodic", "metrics", "dashboard", "models"]

#: Every kind of part, in the order a process that needs several imports them.
KINDS: tuple[Kind, ...] = ("models", "tasks", "hooks", "periodic", "metrics", "dashboard")


@dataclass(frozen=True)
class Feature:
    """What one feature plugs in: for each kind, the modules that register it."""

    name: str
    tasks: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    periodic: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    dashboard: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def modules(self, kind: Kind) -> tuple[str, ...]:
        """The modules registering ``kind``."""
        modules: tuple[str, ...] = getattr(self, kind)
        return modules


# -- what registered functions get -------------------------------------------------------


@dataclass
class Context:
    """What a feature's periodic duty, collector or dashboard source may use.

    ``database`` is opened on first use only (from ``database_factory`` when given, else from
    the settings), so a function that needs only Redis costs no database connection.
    ``scope`` is the caller's API scope on the dashboard (``read`` hides private fields).
    """

    settings: Settings
    connection: redis.Redis
    database_factory: Callable[[], Database] | None = None
    now: datetime = field(default_factory=utcnow)
    scope: str = "admin"

    @cached_property
    def database(self) -> Database:
        """The records database (raises :class:`ConfigurationError` when none is configured)."""
        if self.database_factory is not None:
            return self.database_factory()
        # Deferred: only contexts that touch the database import SQLAlchemy.
        from atomq.db.engine import Database

        return Database.from_settings(self.settings)

    def close(self) -> None:
        """Dispose of a database this context opened itself."""
        if "database" in self.__dict__ and self.database_factory is None:
            self.database.dispose()


# -- the parts -----------------------------------------------------------------------------

#: A periodic duty: runs on the leading scheduler every ``interval`` seconds.
PeriodicFunc = Callable[[Context], object]

#: A metrics collector: yields prometheus_client metric families on every scrape.
CollectorFunc = Callable[[Context], Iterable[Any]]


@dataclass(frozen=True)
class Periodic:
    """A registered periodic duty."""

    name: str
    func: PeriodicFunc
    interval: float


@dataclass(frozen=True)
class TimelineItem:
    """Something due at a moment: a scheduled job, a scheduled post, a timer in a workflow."""

    at: datetime
    kind: str
    title: str
    ref: str | None = None
    status: str = "scheduled"
    queue: str | None = None
    #: Where the item's details are: relative to ``/dashboard/`` (``jobs/ID``) or absolute.
    link: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ProgressItem:
    """Something made of parts, part of the way through: a workflow run, a batch, a long job."""

    kind: str
    ref: str
    title: str
    status: str
    done: float
    total: float | None = None
    failed: int = 0
    unit: str = ""
    started_at: datetime | None = None
    link: str | None = None
    detail: str | None = None

    @property
    def percent(self) -> float | None:
        """Share done, 0-100, or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(100.0, 100.0 * self.done / self.total))


TimelineFunc = Callable[[Context, datetime, int], list[TimelineItem]]
ProgressFunc = Callable[[Context, int], list[ProgressItem]]
F = TypeVar("F", TimelineFunc, ProgressFunc)


@dataclass(frozen=True)
class Source(Generic[F]):
    """A registered dashboard source: its name, the section title, its place on the page."""

    name: str
    title: str
    order: int
    func: F


class Registry:
    """Everything features have registered, by kind (tasks live in :mod:`atomq.engine.tasks`,
    whose registry :class:`~atomq.engine.task_queue.TaskQueue` may replace per instance)."""

    def __init__(self) -> None:
        self.periodic: dict[str, Periodic] = {}
        self.collectors: dict[str, CollectorFunc] = {}
        self.timeline: dict[str, Source[TimelineFunc]] = {}
        self.progress: dict[str, Source[ProgressFunc]] = {}
        self.hooks: list[JobHooks] = []


#: The process-wide registry.
registry = Registry()


def periodic(name: str, *, interval: float) -> Callable[[PeriodicFunc], PeriodicFunc]:
    """Register ``func(ctx)`` to run every ``interval`` seconds on the leading scheduler."""
    if interval <= 0:
        raise ValueError("interval must be positive")

    def decorate(func: PeriodicFunc) -> PeriodicFunc:
        registry.periodic[name] = Periodic(name, func, interval)
        return func

    return decorate


def metrics_collector(name: str) -> Callable[[CollectorFunc], CollectorFunc]:
    """Register ``func(ctx)`` to add metric families to every scrape of ``/metrics``
    (registering a name again replaces it)."""

    def decorate(func: CollectorFunc) -> CollectorFunc:
        registry.collectors[name] = func
        return func

    return decorate


def timeline_source(name: str, *, title: str, order: int = 100) -> Callable[[TimelineFunc], TimelineFunc]:
    """Register ``func(ctx, until, limit)``: items due before ``until`` (overdue ones too), soonest first."""

    def decorate(func: TimelineFunc) -> TimelineFunc:
        registry.timeline[name] = Source(name, title, order, func)
        return func

    return decorate


def progress_source(name: str, *, title: str, order: int = 100) -> Callable[[ProgressFunc], ProgressFunc]:
    """Register ``func(ctx, limit)``: items in progress, the most relevant first."""

    def decorate(func: ProgressFunc) -> ProgressFunc:
        registry.progress[name] = Source(name, title, order, func)
        return func

    return decorate


H = TypeVar("H", bound="JobHooks")


def job_hooks(hooks: H) -> H:
    """Register a :class:`~atomq.engine.hooks.JobHooks` instance with every worker of this process."""
    if hooks not in registry.hooks:
        registry.hooks.append(hooks)
    return hooks


# -- discovery and loading -----------------------------------------------------------------

_loaded: set[str] = set()
_lock = threading.RLock()  # a module being imported may load another kind


@functools.cache
def features() -> list[Feature]:
    """Every feature published under :data:`ENTRY_POINT_GROUP`, by name (read once per process)."""
    found: dict[str, Feature] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            feature = point.load()
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load atomq feature {point.name!r} ({point.value}): {exc}"
            ) from exc
        if not isinstance(feature, Feature):
            raise ConfigurationError(
                f"entry point {point.name!r} in {ENTRY_POINT_GROUP} is not an atomq Feature: {feature!r}"
            )
        found[feature.name] = feature
    return [found[name] for name in sorted(found)]


def load(kind: Kind, extra: Iterable[str] = (), *, setting: str | None = None) -> None:
    """Import every feature's modules of ``kind``, then ``extra`` (an application's own, named
    by ``setting`` in errors). Idempotent and thread-safe."""
    with _lock:
        for module in (*_modules_of(kind), *extra):
            if module in _loaded:
                continue
            try:
                importlib.import_module(module)
            except ImportError as exc:
                where = f" (from {setting})" if setting else ""
                raise ConfigurationError(
                    f"cannot import {_NOUNS[kind]} module {module!r}{where}: {exc}", field=setting
                ) from None
            _loaded.add(module)


#: How errors name a module of each kind.
_NOUNS: dict[str, str] = {
    "tasks": "task",
    "hooks": "hook",
    "periodic": "periodic",
    "metrics": "metrics",
    "dashboard": "dashboard",
    "models": "model",
}


def _modules_of(kind: Kind) -> Iterator[str]:
    for feature in features():
        yield from feature.modules(kind)
