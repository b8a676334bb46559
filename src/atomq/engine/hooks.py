"""What workers tell the features at each step of a job's life.

A feature that follows jobs (batches count their items, long jobs beat and report progress,
workflows open their database before the fork) subclasses :class:`JobHooks`, overrides what
it needs, and registers an instance with :func:`atomq.engine.plugins.job_hooks` in a module
listed as its ``hooks`` (see :mod:`atomq.engine.plugins`). Workers call the functions below at
the same moments whatever their class; a hook that fails is logged and never fails the job.

Hooks that receive a pipeline queue their writes on it: they ride in the round trip that
records the job's start or end, so following a job costs no extra round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from rq.job import Job

from atomq.engine.plugins import registry

logger = logging.getLogger("atomq.hooks")

#: What a worker offers a command hook: given a job id, that job's id and a token for this
#: run of it when it runs in the worker (``(None, None)`` otherwise), and a way to stop a job
#: at once.
Running = Callable[[str | None], tuple[str | None, object]]
StopNow = Callable[[str], None]


class JobHooks:
    """Override the moments a feature cares about; every method does nothing by default."""

    def started(self, job: Job, pipeline: Any) -> None:
        """``job`` is being marked started; queue writes on ``pipeline`` (sent right after)."""

    def running(self, job: Job, connection: redis.Redis) -> None:
        """In the process (and thread) about to run the task, right before it runs."""

    def returned(self, job: Job) -> None:
        """The task returned or raised, in the process that ran it."""

    def ended(self, job: Job, status: str, pipeline: Any) -> None:
        """``job`` reached a final ``status`` (finished, failed, stopped); queue writes on the
        ``pipeline`` that records it."""

    def command(self, worker: Any, payload: dict[str, Any], running: Running, stop_now: StopNow) -> bool:
        """A command arrived on the worker's channel; True when this feature handled it."""
        return False


def _each() -> list[JobHooks]:
    return list(registry.hooks)


def started(jobs: Iterable[Job], pipeline: Any) -> None:
    """Jobs were claimed and are being marked started: queue the features' writes on ``pipeline``."""
    for hooks in _each():
        for job in jobs:
            _guard(hooks, "started", job.id, hooks.started, job, pipeline)


def running(job: Job, connection: redis.Redis) -> None:
    """The task of ``job`` is about to run here."""
    for hooks in _each():
        _guard(hooks, "running", job.id, hooks.running, job, connection)


def returned(job: Job) -> None:
    """The task of ``job`` returned or raised."""
    for hooks in _each():
        _guard(hooks, "returned", job.id, hooks.returned, job)


def ended(ended: Iterable[tuple[Job, str]], pipeline: Any) -> None:
    """Final outcomes are being recorded on ``pipeline``."""
    for hooks in _each():
        for job, status in ended:
            _guard(hooks, "ended", job.id, hooks.ended, job, status, pipeline)


def ended_now(connection: redis.Redis, job: Job, status: str) -> None:
    """A final outcome was recorded without a pipeline to join (RQ's worker): send the
    features' writes in one round trip of their own."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            ended([(job, status)], pipe)
            pipe.execute()
    except redis.RedisError:
        # A reconciler accounts for it later; a hook must never fail the job.
        logger.exception("could not record the end of job %s for its features", job.id)


def command(worker: Any, payload: dict[str, Any], running: Running, stop_now: StopNow) -> bool:
    """Offer a worker command to the features; True when one handled it."""
    for hooks in _each():
        try:
            if hooks.command(worker, payload, running, stop_now):
                return True
        except Exception:
            logger.exception("job hook %s failed on a worker command", type(hooks).__name__)
    return False


def _guard(hooks: JobHooks, moment: str, job_id: str, func: Callable[..., None], *args: Any) -> None:
    try:
        func(*args)
    except Exception:
        logger.exception("job hook %s.%s failed for job %s", type(hooks).__name__, moment, job_id)
