"""Job history per minute, kept in Redis at a fixed cost: what the dashboard's charts draw.

:mod:`atomq.engine.stats` keeps counters that only grow (for Prometheus, which keeps its own
history). Someone without Prometheus still wants to see how a queue moved over the last hour,
so the same job ends are also added to one small hash per queue and minute:

``atomq:history:<queue>:<minute>`` (minute = epoch seconds // 60), fields

    ``f`` ``x`` ``r`` ``t`` ``e``   jobs finished, failed, retried, stopped, deferred
    ``d<i>`` / ``ds``              job durations: count in bucket ``i`` of :data:`BOUNDS`
                                   (``+Inf`` last), and their sum in seconds
    ``l<i>`` / ``ls``              lateness of scheduled jobs, the same way
    ``q`` / ``w``                  queued and running jobs, sampled by the leading scheduler

**Cost.** Workers already send a pipeline when jobs end; :class:`HistoryTally` adds *one*
command to it (an ``EVAL`` of :data:`ADD`, which increments every field of every queue the
pipeline's jobs touched and renews the keys' expiry), whatever the number of jobs in it.
``EVAL`` rather than ``EVALSHA``: a script missing from the server's cache (after a restart
or ``SCRIPT FLUSH``) must never make a worker's pipeline fail, and the script is small.
Queue depth is not per job at all: :func:`sample_depth` runs every :data:`SAMPLE_SECONDS` on
the leading scheduler.

**Size.** Keys expire :data:`RETENTION_KEY` seconds (the setting
``ATOMQ_HISTORY_RETENTION_SECONDS``, 24 h by default, written there by the sampler) after
their last write, so the history trims itself. A minute's hash holds a few dozen small
fields, which Redis keeps as a compact listpack: about 260 bytes per queue and minute, 3.8 MB
for 24 h of 10 busy queues; 5.4 MB if every bucket of both histograms were used in every
minute of every queue (``bench/bench_history_memory.py``).

**Reading.** :func:`read` has Redis sum each minute over the chosen queues (:data:`SUM_MINUTES`,
in one pipelined round trip) and groups the minutes into points of ``step`` seconds. A 1 h
chart of 10 queues reads 600 small hashes (a few ms); 24 h reads 14,400 (about 0.2 s: an
hourly roll-up would be the next step if that range were used often).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from atomq.core import keys
from atomq.engine.plugins import Context, periodic
from atomq.engine.scripts import decode

#: Key prefix of the per-minute hashes.
HISTORY_PREFIX = f"{keys.PREFIX}:history:"

#: Holds the retention (seconds) the sampler read from the settings; writers use it as TTL.
RETENTION_KEY = f"{keys.PREFIX}:history-retention"

#: Retention used until a scheduler has written the setting (the setting's default).
DEFAULT_RETENTION_SECONDS = 86_400

#: How often the leading scheduler samples queue depth (several samples land in each minute;
#: the last one stays).
SAMPLE_SECONDS = 15.0

#: Upper bounds (seconds) of the history's duration and lateness buckets (``+Inf`` after the
#: last). Coarser than ``/metrics``' histograms: a minute's hash stays small enough to be a
#: listpack even with every bucket used, and a chart's p95 needs no finer steps.
BOUNDS: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 300.0)

#: Field of each outcome (see :data:`atomq.engine.stats.OUTCOMES`).
OUTCOME_FIELDS: dict[str, str] = {
    "finished": "f",
    "failed": "x",
    "retried": "r",
    "stopped": "t",
    "deferred": "e",
}

#: Ranges the readers accept, with the step of their points (seconds).
RANGES: dict[str, tuple[int, int]] = {
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (24 * 3600, 900),
}

_DURATION_FIELDS = tuple(f"d{i}" for i in range(len(BOUNDS) + 1))
_LATENESS_FIELDS = tuple(f"l{i}" for i in range(len(BOUNDS) + 1))

# Add increments to per-minute hashes and renew their expiry.
#   KEYS[1]      retention key (its value is the TTL; ARGV[1] when unset)
#   KEYS[2..n]   one history hash per queue
#   ARGV[1]      default TTL, then per hash: number of fields, then field, increment pairs
# Sums ('ds', 'ls') are floats; every other field an integer.
ADD = """
local ttl = tonumber(redis.call('GET', KEYS[1]) or ARGV[1]) or tonumber(ARGV[1])
local i = 2
for k = 2, #KEYS do
    local n = tonumber(ARGV[i])
    i = i + 1
    for _ = 1, n do
        local name, value = ARGV[i], ARGV[i + 1]
        i = i + 2
        if name == 'ds' or name == 'ls' then
            redis.call('HINCRBYFLOAT', KEYS[k], name, value)
        else
            redis.call('HINCRBY', KEYS[k], name, value)
        end
    end
    redis.call('EXPIRE', KEYS[k], ttl)
end
return #KEYS - 1
"""


# Sum minutes over queues inside Redis, so a chart costs one small reply, not a hash per
# queue and minute to parse in Python.
#   KEYS     the hashes, minute by minute, ARGV[1] of them per minute (one per queue)
# Returns per minute a flat {field, sum, ...} list (sums as text: Lua would truncate floats).
SUM_MINUTES = """
local per = tonumber(ARGV[1])
local out = {}
local index = 1
for m = 1, #KEYS / per do
    local sums, names = {}, {}
    for _ = 1, per do
        local flat = redis.call('HGETALL', KEYS[index])
        index = index + 1
        for i = 1, #flat, 2 do
            local name = flat[i]
            if sums[name] == nil then
                sums[name] = 0
                names[#names + 1] = name
            end
            sums[name] = sums[name] + tonumber(flat[i + 1])
        end
    end
    local row = {}
    for _, name in ipairs(names) do
        row[#row + 1] = name
        row[#row + 1] = tostring(sums[name])
    end
    out[m] = row
end
return out
"""

#: Most hashes one SUM_MINUTES call reads: long ranges are split into several calls (still
#: one round trip) so Redis serves other clients between them.
SUM_CHUNK_KEYS = 1200


def minute_key(queue: str, minute: int) -> str:
    """The hash of ``queue`` for ``minute`` (epoch seconds // 60)."""
    return f"{HISTORY_PREFIX}{queue}:{minute}"


def bucket_index(value: float, bounds: Sequence[float]) -> int:
    """Index of the histogram bucket holding ``value`` (``len(bounds)`` is ``+Inf``)."""
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


@dataclass
class HistoryTally:
    """Increments for the current minute, per queue; :meth:`write` sends them as one command."""

    fields: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )

    def add(
        self,
        *,
        queue: str,
        outcome: str,
        duration: float | None,
        late: float | None,
    ) -> None:
        """Count one ended run (and its duration and lateness, when known)."""
        counts = self.fields[queue]
        counts[OUTCOME_FIELDS[outcome]] += 1
        if duration is not None:
            value = max(0.0, duration)
            counts[_DURATION_FIELDS[bucket_index(value, BOUNDS)]] += 1
            counts["ds"] += value
        if late is not None:
            value = max(0.0, late)
            counts[_LATENESS_FIELDS[bucket_index(value, BOUNDS)]] += 1
            counts["ls"] += value

    def write(self, pipe: Any, *, now: float | None = None) -> None:
        """Queue the increments on ``pipe`` (a pipeline or a client): one ``EVAL``, or nothing."""
        if not self.fields:
            return
        minute = int((time.time() if now is None else now) // 60)
        hash_keys: list[str] = []
        args: list[Any] = [DEFAULT_RETENTION_SECONDS]
        for queue, counts in self.fields.items():
            hash_keys.append(minute_key(queue, minute))
            args.append(len(counts))
            for name, value in counts.items():
                args += [name, repr(value) if name in ("ds", "ls") else int(value)]
        pipe.eval(ADD, 1 + len(hash_keys), RETENTION_KEY, *hash_keys, *args)


# -- queue depth: a periodic duty of the leading scheduler ------------------------------------


def sample_depth(
    connection: redis.Redis, queues: Iterable[str], *, retention: int, now: float | None = None
) -> int:
    """Write how many jobs wait and run on each queue into this minute's hash. Returns queues sampled."""
    stamp = time.time() if now is None else now
    names = list(dict.fromkeys(queues))
    known = [decode(k)[len(keys.QUEUE_KEY_PREFIX) :] for k in connection.smembers(keys.QUEUES_SET)]
    names += [name for name in sorted(known) if name not in names]
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(keys.queue_key(name))
            pipe.zcount(keys.started_key(name), stamp, "+inf")
        counts = pipe.execute()
    minute = int(stamp // 60)
    with connection.pipeline(transaction=False) as pipe:
        pipe.set(RETENTION_KEY, retention)
        for index, name in enumerate(names):
            key = minute_key(name, minute)
            pipe.hset(key, mapping={"q": counts[index * 2], "w": counts[index * 2 + 1]})
            pipe.expire(key, retention)
        pipe.execute()
    return len(names)


@periodic("history.sample", interval=SAMPLE_SECONDS)
def _sample(ctx: Context) -> None:
    sample_depth(ctx.connection, ctx.settings.queues, retention=ctx.settings.history_retention_seconds)


# -- reading -------------------------------------------------------------------------------------


@dataclass
class History:
    """Points of ``step`` seconds over a range, summed over the chosen queues.

    ``t`` holds each point's start (epoch seconds). Rates are per minute (so the ranges
    compare); depth is the last sample in the point (``None`` where none was taken);
    durations and lateness are in seconds (``None`` where no job ended).
    """

    range: str
    step: int
    queues: list[str]
    t: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "range": self.range,
            "step": self.step,
            "queues": self.queues,
            "t": self.t,
            "series": self.series,
        }


#: Names of :attr:`History.series`, in the order charts show them.
SERIES: tuple[str, ...] = (
    "finished",
    "failed",
    "retried",
    "queued",
    "running",
    "duration_avg",
    "duration_p95",
    "lateness_avg",
    "lateness_p95",
)


def read(
    connection: redis.Redis, queues: Sequence[str], *, range_name: str = "1h", now: float | None = None
) -> History:
    """The history of ``queues`` (summed) over ``range_name`` (one of :data:`RANGES`), one round trip."""
    seconds, step = RANGES[range_name]
    stamp = time.time() if now is None else now
    last_minute = int(stamp // 60)
    per_point = step // 60
    points = seconds // step  # whole points, the newest one holding the current minute
    first_minute = (last_minute // per_point - points + 1) * per_point
    width = points * per_point
    minutes = _summed_minutes(connection, queues, first_minute, width)
    history = History(range=range_name, step=step, queues=list(queues))
    columns: dict[str, list[float | None]] = {name: [] for name in SERIES}
    scale = 60 / step
    for point in range(points):
        totals: dict[str, float] = defaultdict(float)
        queued = running = None
        for sums in minutes[point * per_point : (point + 1) * per_point]:
            for name, value in sums.items():
                totals[name] += value
            if "q" in sums:  # depth: the last minute of the point that was sampled
                queued, running = sums["q"], sums.get("w", 0.0)
        history.t.append((first_minute + point * per_point) * 60)
        columns["finished"].append(totals["f"] * scale)
        columns["failed"].append(totals["x"] * scale)
        columns["retried"].append(totals["r"] * scale)
        columns["queued"].append(queued)
        columns["running"].append(running)
        for prefix, fields, name in (
            ("d", _DURATION_FIELDS, "duration"),
            ("l", _LATENESS_FIELDS, "lateness"),
        ):
            counts = [totals.get(field, 0.0) for field in fields]
            total = sum(counts)
            columns[f"{name}_avg"].append(totals[f"{prefix}s"] / total if total else None)
            columns[f"{name}_p95"].append(quantile(0.95, counts, BOUNDS))
    history.series = columns
    return history


def _summed_minutes(
    connection: redis.Redis, queues: Sequence[str], first_minute: int, width: int
) -> list[dict[str, float]]:
    """Each minute's fields summed over ``queues`` (without the depth fields' own minute
    grouping: ``q`` and ``w`` sum the queues sampled that minute)."""
    if not queues:
        return [{} for _ in range(width)]
    per_call = max(1, SUM_CHUNK_KEYS // len(queues))
    with connection.pipeline(transaction=False) as pipe:
        for start in range(first_minute, first_minute + width, per_call):
            hash_keys = [
                minute_key(queue, minute)
                for minute in range(start, min(start + per_call, first_minute + width))
                for queue in queues
            ]
            # EVAL, not EVALSHA: the pipeline stays one round trip (no SCRIPT EXISTS first).
            pipe.eval(SUM_MINUTES, len(hash_keys), *hash_keys, len(queues))
        replies = pipe.execute()
    out: list[dict[str, float]] = []
    for reply in replies:
        for flat in reply:
            out.append({decode(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)})
    return out


def quantile(q: float, counts: Sequence[float], bounds: Sequence[float]) -> float | None:
    """The ``q`` quantile of a histogram (``counts`` per bucket, ``+Inf`` last), interpolated
    linearly inside its bucket as Prometheus's ``histogram_quantile`` does."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    for index, count in enumerate(counts):
        if count and running + count >= rank:
            if index >= len(bounds):
                return float(bounds[-1])  # beyond the last bound: say the bound, not infinity
            lower = bounds[index - 1] if index else 0.0
            return float(lower + (bounds[index] - lower) * ((rank - running) / count))
        running += count
    return float(bounds[-1])
