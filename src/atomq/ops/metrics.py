"""Prometheus metrics for ``GET /metrics``, read from Redis at scrape time.

Nothing is kept in the API process: every number comes from Redis (queue and registry sizes,
worker hashes, the scheduler lease) or from the statistics workers record when jobs end
(:mod:`atomq.engine.stats`), so any number of API processes report the same values
and a restarted one loses nothing. One scrape costs a handful of pipelined round trips,
whatever the number of jobs.

Exposed (all prefixed ``atomq_``)::

    queue_jobs{queue,status}                     gauge    queued, started, finished, failed, ...
    queue_oldest_job_age_seconds{queue}          gauge    age of the oldest queued job (0 when empty)
    queue_scheduled_due_jobs{queue}              gauge    scheduled jobs past due, not yet enqueued
    queue_workers{queue}                         gauge    live workers listening on the queue
    queue_paused{queue}                          gauge    1 while workers leave the queue alone
    queue_paused_since_timestamp_seconds{queue}  gauge    when a paused queue was paused (paused ones only)
    workers{state}                               gauge    live workers by state (idle, busy, ...)
    jobs_{finished,failed,retried,stopped}_total{queue,task}   counter
    job_duration_seconds{queue,task}             histogram
    job_schedule_lateness_seconds{queue}         histogram start time minus due time of scheduled jobs
    leader_present{role}                         gauge    1 when a scheduler (and so the reconcilers) leads
    schedulers                                   gauge    running schedulers (leader and standbys)
    periodic_last_success_timestamp_seconds{name}  gauge  last good run of each periodic function
    periodic_failures_total{name}                counter
    collector_up{collector}                      gauge    0 when an extra collector failed this scrape
    build_info{version}                          gauge    always 1

**Extra collectors.** Features add their own metrics (posts by state, workflow runs...)
without this module knowing them, through :mod:`atomq.engine.plugins`::

    from prometheus_client.core import GaugeMetricFamily
    from atomq.engine.plugins import Context, metrics_collector

    @metrics_collector("posts")
    def posts_by_state(ctx: Context) -> Iterable[Metric]:
        gauge = GaugeMetricFamily("atomq_posts", "Posts by state.", labels=["state"])
        with ctx.database.session() as session:
            for state, count in session.execute(select(Post.state, func.count()).group_by(Post.state)):
                gauge.add_metric([state], count)
        yield gauge

in a module the feature lists as its ``metrics``, so every API process imports it. A collector
that raises is logged and reported as ``atomq_collector_up{collector="posts"} 0``; the rest
of the scrape still succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import version
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from atomq.core import keys
from atomq.engine import plugins, stats
from atomq.engine.plugins import Context, registry
from atomq.engine.scripts import decode
from atomq.engine.tasks import registry as task_registry
from atomq.ops import monitor
from atomq.ops.overview import queue_overview

logger = logging.getLogger("atomq.metrics")

#: Content type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Queue statuses reported by ``atomq_queue_jobs``, in order.
QUEUE_STATUSES: tuple[str, ...] = (
    "queued", "started", "finished", "failed", "scheduled", "deferred", "canceled",
)  # fmt: skip

#: Worker states always reported (as 0 when no worker is in them).
WORKER_STATES: tuple[str, ...] = ("idle", "busy", "suspended")


def load_metric_modules(modules: Iterable[str] = ()) -> None:
    """Import the features' ``metrics`` modules and ``modules`` so their collectors register."""
    plugins.load("metrics", modules)


class AtomqCollector(Collector):
    """A prometheus_client collector that reads atomq's state from Redis on each scrape."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def describe(self) -> list[Metric]:
        # Declaring nothing keeps CollectorRegistry.register from running a scrape early.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from core_metrics(self.context)
        yield from extra_metrics(self.context)


def build_registry(context: Context) -> CollectorRegistry:
    """A registry holding only atomq's collector (no process metrics of the API itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtomqCollector(context))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)


class CachedExposition:
    """Renders a registry at most once per ``max_age`` seconds, however many ask at once.

    A scrape reads Redis and formats a few thousand samples (~10-30 ms); several Prometheus
    servers, dashboards and curl loops hitting ``/metrics`` together then share one rendering
    instead of each paying for it (and for Redis' time).
    """

    def __init__(self, registry: CollectorRegistry, max_age: float = 1.0) -> None:
        self.registry = registry
        self.max_age = max_age
        self._lock = threading.Lock()
        self._body = b""
        self._at = float("-inf")

    def render(self) -> bytes:
        if self.max_age <= 0:
            return render(self.registry)
        with self._lock:
            if time.monotonic() - self._at >= self.max_age:
                self._body = render(self.registry)
                self._at = time.monotonic()
            return self._body


def core_metrics(context: Context) -> list[Metric]:
    """atomq's own metrics, read in a few pipelined round trips."""
    connection = context.connection
    with connection.pipeline(transaction=False) as pipe:
        stats.queue_reads(pipe)
        pipe.get(keys.SCHEDULER_LEADER)
        pipe.hlen(keys.SCHEDULERS)
        replies = pipe.execute()
    job_stats = stats.parse(replies[:4])
    leader, schedulers = replies[4], int(replies[5])
    overview = queue_overview(connection, context.settings.queues)
    queue_stats, due = overview.queues, overview.scheduled_due
    workers = monitor.list_workers(connection)

    out: list[Metric] = []
    jobs = GaugeMetricFamily("atomq_queue_jobs", "Jobs per queue and status.", labels=["queue", "status"])
    oldest = GaugeMetricFamily(
        "atomq_queue_oldest_job_age_seconds",
        "Seconds the oldest queued job has waited (0 when the queue is empty).",
        labels=["queue"],
    )
    due_gauge = GaugeMetricFamily(
        "atomq_queue_scheduled_due_jobs",
        "Scheduled jobs whose due time has passed but that are not on their queue yet.",
        labels=["queue"],
    )
    serving = GaugeMetricFamily(
        "atomq_queue_workers", "Live workers listening on the queue.", labels=["queue"]
    )
    paused = GaugeMetricFamily(
        "atomq_queue_paused", "1 while the queue is paused (workers skip it), else 0.", labels=["queue"]
    )
    paused_since = GaugeMetricFamily(
        "atomq_queue_paused_since_timestamp_seconds",
        "Epoch seconds since which a paused queue is paused (only paused queues).",
        labels=["queue"],
    )
    for item in queue_stats:
        paused.add_metric([item.name], 0 if item.paused_since is None else 1)
        if item.paused_since is not None:
            paused_since.add_metric([item.name], item.paused_since)
        values = item.as_dict()
        for status in QUEUE_STATUSES:
            jobs.add_metric([item.name, status], values[status])
        oldest.add_metric([item.name], item.oldest_queued_age or 0.0)
        due_gauge.add_metric([item.name], due.get(item.name, 0))
        serving.add_metric([item.name], sum(1 for w in workers if item.name in w.queues))
    out += [jobs, oldest, due_gauge, serving, paused, paused_since]

    states = dict.fromkeys(WORKER_STATES, 0)
    for worker in workers:
        states[worker.state] = states.get(worker.state, 0) + 1
    by_state = GaugeMetricFamily("atomq_workers", "Live workers by state.", labels=["state"])
    for state, count in states.items():
        by_state.add_metric([state], count)
    out.append(by_state)

    out += _job_counters(job_stats)
    out.append(
        _histogram(
            "atomq_job_duration_seconds",
            "How long job runs took, by queue and task.",
            job_stats.duration,
            stats.DURATION_BUCKETS,
        )
    )
    lateness = _histogram(
        "atomq_job_schedule_lateness_seconds",
        "Start time minus due time of scheduled jobs (and delayed retries), by queue.",
        _by_queue(job_stats.lateness),
        stats.LATENESS_BUCKETS,
        labels=("queue",),
    )
    out.append(lateness)
    out += _leadership(leader, schedulers, job_stats)
    info = GaugeMetricFamily("atomq_build_info", "atomq's version.", labels=["version"])
    info.add_metric([version("atomq")], 1)
    out.append(info)
    return out


def _job_counters(job_stats: stats.JobStats) -> list[Metric]:
    docs = {
        "finished": "Job runs that finished successfully.",
        "failed": "Job runs that failed with no retry left.",
        "retried": "Job runs that failed and were scheduled for another attempt.",
        "stopped": "Job runs stopped on request.",
        "deferred": "Job runs that asked to run again later without counting an attempt (Defer).",
    }
    # Every registered task starts at 0 on its own queue: a series that appears only with its
    # first failure hides that failure from rate() and increase().
    seeded = {(spec.queue, spec.name) for spec in task_registry}
    out: list[Metric] = []
    for outcome in stats.OUTCOMES:
        counter = CounterMetricFamily(f"atomq_jobs_{outcome}", docs[outcome], labels=["queue", "task"])
        counts = dict.fromkeys(seeded, 0) | job_stats.counts[outcome]
        for (queue, task), count in sorted(counts.items()):
            counter.add_metric([queue, task], count)
        out.append(counter)
    return out


def _histogram(
    name: str,
    doc: str,
    data: Mapping[Any, stats.Histogram],
    bounds: tuple[float, ...],
    labels: tuple[str, ...] = ("queue", "task"),
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, histogram in sorted(data.items()):
        family.add_metric(list(label_values), histogram.cumulative(bounds), histogram.sum)
    return family


def _by_queue(data: dict[stats.Labels, stats.Histogram]) -> dict[tuple[str, ...], stats.Histogram]:
    # Lateness depends on the scheduler and the queue's capacity, not on the task: one series
    # per queue keeps the scrape small (stats keeps the per-task detail in Redis).
    merged: dict[tuple[str, ...], stats.Histogram] = {}
    for (queue, _task), histogram in data.items():
        target = merged.setdefault((queue,), stats.Histogram())
        target.sum += histogram.sum
        for le, count in histogram.buckets.items():
            target.buckets[le] = target.buckets.get(le, 0) + count
    return merged


def _leadership(leader: Any, schedulers: int, job_stats: stats.JobStats) -> list[Metric]:
    present = GaugeMetricFamily(
        "atomq_leader_present",
        "1 when some process holds the role's leader lease. Reconcilers (periodic functions) "
        "run on the leading scheduler.",
        labels=["role"],
    )
    holder = 1 if leader is not None and decode(leader) else 0
    present.add_metric(["scheduler"], holder)
    present.add_metric(["reconciler"], holder)
    running = GaugeMetricFamily("atomq_schedulers", "Running schedulers (the leader and standbys).")
    running.add_metric([], schedulers)
    last_ok = GaugeMetricFamily(
        "atomq_periodic_last_success_timestamp_seconds",
        "When each periodic function (reconciler) last ran without error.",
        labels=["name"],
    )
    for name, stamp in sorted(job_stats.periodic_ok.items()):
        last_ok.add_metric([name], stamp)
    failures = CounterMetricFamily(
        "atomq_periodic_failures", "Runs of periodic functions that raised.", labels=["name"]
    )
    for name, count in sorted(job_stats.periodic_failures.items()):
        failures.add_metric([name], count)
    return [present, running, last_ok, failures]


#: Collector name -> when it last logged a failure. Prometheus scrapes every few seconds, and a
#: collector that fails for a lasting reason (a database not migrated yet) would otherwise write
#: a traceback per scrape; ``atomq_collector_up`` already tells the state on every scrape.
_failing_since: dict[str, float] = {}

#: Seconds between reminders while a collector keeps failing.
FAILURE_LOG_INTERVAL = 300.0


def _log_collector_failure(name: str, exc: Exception) -> None:
    now = time.monotonic()
    last = _failing_since.get(name)
    if last is None:
        logger.exception("metrics collector %s failed (atomq_collector_up is 0 until it works)", name)
    elif now - last >= FAILURE_LOG_INTERVAL:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        logger.warning("metrics collector %s still failing: %s", name, first_line)
    else:
        return
    _failing_since[name] = now


def extra_metrics(context: Context) -> list[Metric]:
    """Metrics of the registered extra collectors, each isolated from the others' failures."""
    out: list[Metric] = []
    up = GaugeMetricFamily(
        "atomq_collector_up", "1 when the extra collector worked on this scrape.", labels=["collector"]
    )
    for name, func in sorted(registry.collectors.items()):
        try:
            families = list(func(context))
        except Exception as exc:
            _log_collector_failure(name, exc)
            up.add_metric([name], 0)
            continue
        _failing_since.pop(name, None)
        out += families
        up.add_metric([name], 1)
    out.append(up)
    return out
