"""Job statistics that outlive the jobs: counters and histograms kept in Redis.

RQ's registries only say how many jobs are finished or failed *right now* (entries expire),
so a failure rate cannot be read from them. Workers therefore add to a few Redis hashes when a
job ends, in the pipeline they already send, and ``/metrics`` reads them back:

``atomq:stats:jobs``
    ``queue|task|outcome`` -> count, outcome one of :data:`OUTCOMES`. Only ever incremented.
``atomq:stats:duration`` / ``atomq:stats:lateness``
    ``queue|task|le`` -> jobs that fell in that bucket (non-cumulative; ``le`` is the bucket's
    upper bound as text, ``+Inf`` last) and ``queue|task|sum`` -> seconds in total. Any number
    of workers contribute to the same histogram; ``/metrics`` makes the buckets cumulative.
    Changing the bucket bounds below needs these two hashes deleted.
``atomq:stats:periodic``
    ``name|ok`` -> time of the last successful run of a periodic function (reconcilers),
    ``name|failures`` -> failed runs.

Lateness is when a scheduled job started minus when it was due. The due time is written into
the job hash (field :data:`DUE_FIELD`) when the job is scheduled and removed when it starts,
so a job requeued by hand later is not counted as late.

Labels are queue and task names only (both validated, bounded sets); never job ids.

The same job ends also go into the per-minute history behind the dashboard's charts
(:mod:`atomq.engine.history`), in the same pipeline, for one more command per pipeline.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atomq.engine import history

logger = logging.getLogger("atomq.stats")

#: Ways a job run can end, as counted by ``atomq_jobs_<outcome>_total``.
OUTCOMES: tuple[str, ...] = ("finished", "failed", "retried", "stopped", "deferred")

#: Upper bounds (seconds) of the job duration histogram buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip

#: Upper bounds (seconds) of the schedule lateness histogram buckets.
LATENESS_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip

COUNTS_KEY = "atomq:stats:jobs"
DURATION_KEY = "atomq:stats:duration"
LATENESS_KEY = "atomq:stats:lateness"
PERIODIC_KEY = "atomq:stats:periodic"

#: Job hash field holding the due time (epoch seconds) of a scheduled job until it starts.
DUE_FIELD = "atomq_due_at"

#: Separates label values inside a hash field; queue and task names cannot contain it.
SEP = "|"

Labels = tuple[str, str]


def _bucket(value: float, bounds: tuple[float, ...]) -> str:
    index = bisect.bisect_left(bounds, value)
    return "+Inf" if index == len(bounds) else f"{bounds[index]:g}"


def _observe(pipe: Any, key: str, prefix: str, value: float, bounds: tuple[float, ...]) -> None:
    value = max(0.0, value)
    pipe.hincrby(key, f"{prefix}{SEP}{_bucket(value, bounds)}", 1)
    pipe.hincrbyfloat(key, f"{prefix}{SEP}sum", value)


# -- writing (workers, scheduler) ------------------------------------------------------------


def record_job_end(
    pipe: Any,
    *,
    queue: str,
    task: str | None,
    outcome: str,
    duration: float | None = None,
    late: float | None = None,
) -> None:
    """Count one ended run of a job (and its duration) on ``pipe`` (a pipeline or a client).

    ``outcome`` is ``finished``, ``failed`` (no retries left), ``retried`` (another attempt is
    coming) or ``stopped`` (on request). ``late`` (how late a scheduled job started) goes
    into the history only: the lateness histogram was fed when the job started.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    prefix = f"{queue}{SEP}{task or 'unknown'}"
    pipe.hincrby(COUNTS_KEY, f"{prefix}{SEP}{outcome}", 1)
    if duration is not None:
        _observe(pipe, DURATION_KEY, prefix, duration, DURATION_BUCKETS)
    minute = history.HistoryTally()
    minute.add(
        queue=queue,
        outcome=outcome,
        duration=duration,
        late=late,
    )
    minute.write(pipe)


def record_job_start(
    pipe: Any, *, job_key: str, queue: str, task: str | None, due_at: float | None, now: float | None = None
) -> None:
    """Observe the lateness of a scheduled job that is starting, and forget its due time."""
    if due_at is None:
        return
    started = time.time() if now is None else now
    _observe(pipe, LATENESS_KEY, f"{queue}{SEP}{task or 'unknown'}", started - due_at, LATENESS_BUCKETS)
    pipe.hdel(job_key, DUE_FIELD)


@dataclass
class Tally:
    """Statistics of many job ends, summed in memory and written with a few commands.

    The fast worker records a whole batch of jobs in one round trip; per job it would add
    three commands, per batch it adds a handful.
    """

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lateness: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    minute: history.HistoryTally = field(default_factory=history.HistoryTally)

    def add(
        self, *, queue: str, task: str | None, outcome: str, duration: float | None, late: float | None = None
    ) -> None:
        prefix = f"{queue}{SEP}{task or 'unknown'}"
        self.counts[f"{prefix}{SEP}{outcome}"] += 1
        if duration is not None:
            value = max(0.0, duration)
            self.counts[f"d{SEP}{prefix}{SEP}{_bucket(value, DURATION_BUCKETS)}"] += 1
            self.durations[prefix] += value
        if late is not None:
            value = max(0.0, late)
            self.counts[f"l{SEP}{prefix}{SEP}{_bucket(value, LATENESS_BUCKETS)}"] += 1
            self.lateness[prefix] += value
        self.minute.add(
            queue=queue,
            outcome=outcome,
            duration=duration,
            late=late,
        )

    def write(self, pipe: Any) -> None:
        for name, count in self.counts.items():
            if name.startswith(f"d{SEP}"):
                pipe.hincrby(DURATION_KEY, name[2:], count)
            elif name.startswith(f"l{SEP}"):
                pipe.hincrby(LATENESS_KEY, name[2:], count)
            else:
                pipe.hincrby(COUNTS_KEY, name, count)
        for prefix, total in self.durations.items():
            pipe.hincrbyfloat(DURATION_KEY, f"{prefix}{SEP}sum", total)
        for prefix, total in self.lateness.items():
            pipe.hincrbyfloat(LATENESS_KEY, f"{prefix}{SEP}sum", total)
        self.minute.write(pipe)


def job_started(pipe: Any, job: Any) -> None:
    """Worker hook, called on the pipeline that marks ``job`` started (see :func:`record_job_start`)."""
    record_job_start(
        pipe, job_key=job.key, queue=job.origin, task=_task_of(job), due_at=getattr(job, "due_at", None)
    )


def job_ended(pipe: Any, job: Any, outcome: str, *, timed: bool = True) -> None:
    """Worker hook, called on the pipeline that records how ``job``'s run ended.

    ``timed=False`` counts the run without observing its duration (a job whose worker died
    has no meaningful end time).
    """
    duration = late = None
    if timed and job.started_at is not None:
        ended = job.ended_at or datetime.now(UTC).replace(tzinfo=job.started_at.tzinfo)
        duration = (ended - job.started_at).total_seconds()
        due_at = getattr(job, "due_at", None)
        if due_at is not None:
            started = job.started_at.replace(tzinfo=job.started_at.tzinfo or UTC)
            late = started.timestamp() - due_at
    record_job_end(pipe, queue=job.origin, task=_task_of(job), outcome=outcome, duration=duration, late=late)


def _task_of(job: Any) -> str | None:
    try:
        name = job.func_name
    except Exception:  # an undecodable payload still counts, under "unknown"
        return None
    return name if isinstance(name, str) else None


def mark_due(pipe: Any, job_key: str, due_at: float) -> None:
    """Remember when a scheduled job is due, so its lateness can be measured when it starts."""
    pipe.hset(job_key, DUE_FIELD, repr(due_at))


def due_time(raw: Mapping[Any, Any]) -> float | None:
    """The due time stored in a raw job hash (bytes or str keys), if any."""
    value = raw.get(DUE_FIELD.encode()) if DUE_FIELD.encode() in raw else raw.get(DUE_FIELD)
    if value is None:
        return None
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return None


def record_periodic_run(connection: Any, name: str, *, ok: bool) -> None:
    """Note a run of a periodic function; never raises (statistics must not break the work)."""
    try:
        if ok:
            connection.hset(PERIODIC_KEY, f"{name}{SEP}ok", repr(time.time()))
        else:
            connection.hincrby(PERIODIC_KEY, f"{name}{SEP}failures", 1)
    except Exception as exc:
        logger.debug("could not record periodic run of %s: %s", name, exc)


# -- reading (/metrics) ----------------------------------------------------------------------


@dataclass
class Histogram:
    """One label set of a histogram: non-cumulative bucket counts and the sum."""

    buckets: dict[str, int] = field(default_factory=dict)
    sum: float = 0.0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, count of values <= le)``, ending with ``+Inf``."""
        out = []
        running = 0
        for le in [f"{b:g}" for b in bounds] + ["+Inf"]:
            running += self.buckets.get(le, 0)
            out.append((le, float(running)))
        return out


@dataclass
class JobStats:
    """Everything the workers recorded, keyed by ``(queue, task)``."""

    counts: dict[str, dict[Labels, int]] = field(default_factory=lambda: {o: {} for o in OUTCOMES})
    duration: dict[Labels, Histogram] = field(default_factory=dict)
    lateness: dict[Labels, Histogram] = field(default_factory=dict)
    periodic_ok: dict[str, float] = field(default_factory=dict)
    periodic_failures: dict[str, int] = field(default_factory=dict)


def queue_reads(pipe: Any) -> None:
    """Add the reads :func:`parse` expects to ``pipe`` (four replies, in this order)."""
    pipe.hgetall(COUNTS_KEY)
    pipe.hgetall(DURATION_KEY)
    pipe.hgetall(LATENESS_KEY)
    pipe.hgetall(PERIODIC_KEY)


def parse(replies: list[Any]) -> JobStats:
    """Build :class:`JobStats` from the four replies of :func:`queue_reads`."""
    counts_raw, duration_raw, lateness_raw, periodic_raw = replies
    stats = JobStats()
    for field_name, value in _items(counts_raw):
        parts = field_name.split(SEP)
        if len(parts) == 3 and parts[2] in stats.counts:
            stats.counts[parts[2]][(parts[0], parts[1])] = int(value)
    stats.duration = _histograms(duration_raw)
    stats.lateness = _histograms(lateness_raw)
    for field_name, value in _items(periodic_raw):
        name, _, kind = field_name.rpartition(SEP)
        if kind == "ok":
            stats.periodic_ok[name] = float(value)
        elif kind == "failures":
            stats.periodic_failures[name] = int(value)
    return stats


def read(connection: Any) -> JobStats:
    """Read every statistic in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        queue_reads(pipe)
        return parse(pipe.execute())


def _items(raw: Mapping[Any, Any]) -> list[tuple[str, str]]:
    return [
        (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    ]


def _histograms(raw: Mapping[Any, Any]) -> dict[Labels, Histogram]:
    out: dict[Labels, Histogram] = defaultdict(Histogram)
    for field_name, value in _items(raw):
        parts = field_name.split(SEP)
        if len(parts) != 3:
            continue
        histogram = out[(parts[0], parts[1])]
        if parts[2] == "sum":
            histogram.sum = float(value)
        else:
            histogram.buckets[parts[2]] = int(value)
    return dict(out)
