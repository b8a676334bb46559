"""The task registry: jobs run registered functions only, looked up by name.

A job stored in Redis names its task (``process_scheduled_post``), never an import path, and
a worker runs it only if that name is registered in its process. A job written into Redis by
hand naming ``os.system`` therefore fails with :class:`UnknownTaskError` instead of running.

Register with the decorator::

    @task("process_scheduled_post", queue="social_media", timeout=120, retry=Retry(max=3))
    def process_scheduled_post(post_id: str, user_id: str) -> dict: ...
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from atomq.core.errors import ConfigurationError, InvalidJobOptionError, TaskArgumentsError, UnknownTaskError
from atomq.core.options import ENQUEUE_OPTIONS, TASK_NAME_PATTERN, validate_queue_name
from atomq.engine import plugins

logger = logging.getLogger("atomq.engine.tasks")

F = TypeVar("F", bound=Callable[..., Any])


#: Task names an unknown-task error lists (an application may register hundreds).
MAX_NAMES_SHOWN = 20

#: atomq's own tasks (``ping``); the features' come from their ``tasks`` modules.
BUILTIN_TASK_MODULE = "atomq.engine.builtin_tasks"

Isolation = Literal["inline", "fork"]


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a failed job is tried again.

    Delays grow exponentially: ``delay * backoff**n`` seconds before retry ``n + 1``, capped at
    ``max_delay`` and spread by ``jitter`` (a fraction, 0.1 = up to 10 % either way) so that
    many jobs failing together do not retry together.
    """

    max: int = 3
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max < 1:
            raise ConfigurationError(f"retry max must be at least 1, got {self.max}", field="retry")
        if self.delay < 0 or self.max_delay < 0:
            raise ConfigurationError("retry delays cannot be negative", field="retry")
        if self.backoff < 1:
            raise ConfigurationError(f"retry backoff must be >= 1, got {self.backoff}", field="retry")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"retry jitter must be in [0, 1), got {self.jitter}", field="retry")

    def intervals(self, rng: random.Random | None = None) -> list[int]:
        """Whole seconds to wait before each retry, jitter applied (RQ stores integer intervals)."""
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        out = []
        for attempt in range(self.max):
            base = min(self.delay * self.backoff**attempt, self.max_delay)
            spread = base * self.jitter
            out.append(max(0, round(base + rng.uniform(-spread, spread))))
        return out

    @classmethod
    def coerce(cls, value: Retry | int | None) -> Retry | None:
        """Accept ``Retry(...)``, a plain count of retries, or ``None``/0 for no retries."""
        if value is None or isinstance(value, Retry):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(
                f"retry must be a Retry or a number of retries, got {value!r}", field="retry"
            )
        return None if value == 0 else cls(max=value)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: the function and the defaults its jobs get."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    timeout: int | None = None
    retry: Retry | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    isolation: Isolation | None = None
    description: str = ""
    #: Modules the task's code needs, imported before a process forks per job (RQ's worker,
    #: ``isolation="fork"``) so each forked process does not import them again. Persistent
    #: workers import them lazily, on the task's first job, keeping workers that never run
    #: the task small.
    preload: tuple[str, ...] = ()
    #: ``"module:function"``: what a worker serving the task's queue calls once before it takes
    #: any job (see :func:`task`), so the first jobs after a start do not pay for it.
    warm_up: str | None = None
    signature: inspect.Signature = field(init=False, repr=False, compare=False)
    #: ``async def`` tasks run on the worker's event loop, the others on its threads.
    is_async: bool = field(init=False, repr=False, compare=False)
    #: (names a call may pass, or None for any; names it must pass) when a keyword-only call
    #: can be checked with two set comparisons (no positional-only or ``*args`` parameters).
    _keywords: tuple[frozenset[str] | None, frozenset[str]] | None = field(
        init=False, repr=False, compare=False
    )

    _colliding: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signature = inspect.signature(self.func)
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.func))
        object.__setattr__(self, "_keywords", _keyword_rule(signature))
        object.__setattr__(self, "_colliding", frozenset(ENQUEUE_OPTIONS & set(signature.parameters)))

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check that ``args``/``kwargs`` fit the function, raising :class:`TaskArgumentsError`."""
        rule = self._keywords
        if rule is not None and not args:
            allowed, required = rule
            if required <= kwargs.keys() and (allowed is None or kwargs.keys() <= allowed):
                return  # fits; anything else gets inspect's own message below
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TaskArgumentsError(
                f"arguments do not fit task {self.name!r}: {exc}", field="kwargs"
            ) from None

    def colliding_parameters(self) -> frozenset[str]:
        """Parameter names that clash with enqueue options and must be passed via ``kwargs=``."""
        return self._colliding


def _keyword_rule(signature: inspect.Signature) -> tuple[frozenset[str] | None, frozenset[str]] | None:
    allowed: set[str] = set()
    required: set[str] = set()
    any_keyword = False
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.VAR_POSITIONAL):
            return None
        if parameter.kind == parameter.VAR_KEYWORD:
            any_keyword = True
            continue
        allowed.add(parameter.name)
        if parameter.default is parameter.empty:
            required.add(parameter.name)
    return (None if any_keyword else frozenset(allowed)), frozenset(required)


class TaskRegistry:
    """Maps task names to :class:`TaskSpec`. One registry per process is the norm."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}

    def register(self, spec: TaskSpec) -> TaskSpec:
        """Add ``spec``; registering the same function twice is harmless, a different one is an error."""
        existing = self._tasks.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            same_origin = _qualified(existing.func) == _qualified(spec.func)
            if not same_origin:
                raise ConfigurationError(
                    f"task name {spec.name!r} is already registered to {_qualified(existing.func)}; "
                    f"cannot register {_qualified(spec.func)} under the same name"
                )
        self._tasks[spec.name] = spec
        return spec

    def get(self, name: str) -> TaskSpec:
        """The task registered as ``name``, or :class:`UnknownTaskError` listing what exists."""
        try:
            return self._tasks[name]
        except (KeyError, TypeError):
            names = sorted(self._tasks)
            known = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
            if len(names) > MAX_NAMES_SHOWN:
                known += f" and {len(names) - MAX_NAMES_SHOWN} more; `atomq tasks` lists them"
            raise UnknownTaskError(
                f"no task is registered as {name!r} (registered: {known})", field="task"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(sorted(self._tasks.values(), key=lambda spec: spec.name))

    def __len__(self) -> int:
        return len(self._tasks)

    def unregister(self, name: str) -> None:
        """Remove a task (tests use this to prove unregistered jobs are refused)."""
        self._tasks.pop(name, None)


#: The process-wide registry that ``@task`` fills and workers consult.
registry = TaskRegistry()


@overload
def task(name: F) -> F: ...


@overload
def task(
    name: str | None = None,
    *,
    queue: str = "default",
    timeout: int | None = None,
    retry: Retry | int | None = None,
    result_ttl: int | None = None,
    failure_ttl: int | None = None,
    isolation: Isolation | None = None,
    preload: tuple[str, ...] = (),
    warm_up: str | None = None,
    registry: TaskRegistry | None = None,
) -> Callable[[F], F]: ...


def task(
    name: str | F | None = None,
    *,
    queue: str = "default",
    timeout: int | None = None,
    retry: Retry | int | None = None,
    result_ttl: int | None = None,
    failure_ttl: int | None = None,
    isolation: Isolation | None = None,
    preload: tuple[str, ...] = (),
    warm_up: str | None = None,
    registry: TaskRegistry | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a task under ``name`` (the function's name when omitted).

    ``queue``, ``timeout`` (seconds), ``retry`` (a :class:`Retry` or a count), ``result_ttl``
    and ``failure_ttl`` become the defaults of every job of this task; each call to
    ``task_queue.enqueue`` may override them. ``isolation="fork"`` runs each job in a child
    process (for code that leaks memory or may crash the interpreter).

    ``preload`` names modules the task imports, imported by a worker serving its queue before
    it takes jobs; ``warm_up`` (``"module:function"``) is called there too, once per process,
    with the worker's Redis connection: a coroutine function on the event loop the task's
    ``async def`` jobs share, else on the worker's thread. It builds what the first job would
    otherwise build (clients, pools, compiled queries), so jobs due the minute a worker
    started are not late for it. A warm-up that fails is logged; the worker starts anyway.
    """
    target = registry if registry is not None else globals()["registry"]

    def decorate(func: F) -> F:
        task_name = name if isinstance(name, str) else func.__name__
        if not TASK_NAME_PATTERN.fullmatch(task_name):
            raise ConfigurationError(
                f"invalid task name {task_name!r}: use letters, digits and _ . : - (max 128 characters)"
            )

        try:
            validate_queue_name(queue)
        except InvalidJobOptionError as exc:
            raise ConfigurationError(f"task {task_name!r}: {exc.message}") from None
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"task {task_name!r}: timeout must be positive, got {timeout}")
        if isolation not in (None, "inline", "fork"):
            raise ConfigurationError(f"task {task_name!r}: isolation must be 'inline' or 'fork'")
        if warm_up is not None and not WARM_UP_PATTERN.fullmatch(warm_up):
            raise ConfigurationError(
                f"task {task_name!r}: warm_up must be 'module:function', got {warm_up!r}"
            )
        spec = TaskSpec(
            name=task_name,
            func=func,
            queue=queue,
            timeout=timeout,
            retry=Retry.coerce(retry),
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
            isolation=isolation,
            description=inspect.getdoc(func) or "",
            preload=tuple(preload),
            warm_up=warm_up,
        )
        target.register(spec)
        func.__atomq_task__ = spec  # type: ignore[attr-defined]
        return func

    if callable(name):
        return decorate(name)
    return decorate


def preload(specs: Iterable[TaskSpec] | None = None) -> None:
    """Import the ``preload`` modules of ``specs`` (every registered task by default)."""
    for spec in registry if specs is None else specs:
        for module in spec.preload:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                logger.warning("task %s: cannot preload %s: %s", spec.name, module, exc)


#: What ``warm_up`` names: a module and a function in it.
WARM_UP_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def warm_up_function(spec: TaskSpec) -> Callable[[Any], Any] | None:
    """The function ``spec.warm_up`` names, imported; None when the task has none, or when it
    cannot be imported (logged: the task's first jobs then warm up by themselves)."""
    if spec.warm_up is None:
        return None
    module, _, name = spec.warm_up.partition(":")
    try:
        func: Callable[[Any], Any] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        logger.warning("task %s: cannot import warm-up %s: %s", spec.name, spec.warm_up, exc)
        return None
    return func


def load_task_modules(modules: Iterable[str]) -> None:
    """Import atomq's own tasks, every feature's ``tasks`` modules and ``modules`` (the
    application's, from ``ATOMQ_TASK_MODULES``) so their tasks are registered.

    The current directory is searched too (after everything else, so it shadows nothing), as
    ``rq worker`` does: ``ATOMQ_TASK_MODULES=myapp.tasks atomq worker`` run from the project
    works without setting PYTHONPATH, although a console script does not put it on the path.
    """
    modules = list(modules)
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    plugins.load("tasks", (BUILTIN_TASK_MODULE, *modules), setting="ATOMQ_TASK_MODULES")


def _qualified(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
