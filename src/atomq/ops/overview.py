"""Every queue's counts in one round trip: what ``GET /queues``, ``/metrics`` and the
dashboard poll, often and concurrently.

:func:`atomq.ops.monitor.queue_stats` reads the same numbers with two pipelines of eight commands
per queue; here one Lua script reads them all (plus the list of queues and how many scheduled
jobs are overdue) inside Redis, so a poll costs one request and one small reply whatever the
number of queues and jobs (each count is O(1) or O(log n)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from rq.utils import utcparse

from atomq.engine.scripts import decode
from atomq.ops.monitor import QueueStats

# Counts per queue, in the order monitor.QueueStats lists them.
#   ARGV[1] now (epoch seconds), ARGV[2] 1 to add every queue in rq:queues, ARGV[3..] queues
# Returns, per queue: name, queued, started, finished, failed, scheduled, deferred, canceled,
# enqueued_at of the head job (or false), scheduled jobs already due, paused since (or false).
QUEUE_OVERVIEW = """
local now = ARGV[1]
local names, seen = {}, {}
for i = 3, #ARGV do
    if not seen[ARGV[i]] then names[#names + 1] = ARGV[i]; seen[ARGV[i]] = true end
end
if ARGV[2] == '1' then
    local known = {}
    for _, key in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
        local name = string.sub(key, string.len('rq:queue:') + 1)
        if not seen[name] then known[#known + 1] = name; seen[name] = true end
    end
    table.sort(known)
    for _, name in ipairs(known) do names[#names + 1] = name end
end
local out = {}
for _, name in ipairs(names) do
    local queue = 'rq:queue:' .. name
    local head = redis.call('LINDEX', queue, 0)
    local stamp = false
    if head then stamp = redis.call('HGET', 'rq:job:' .. head, 'enqueued_at') end
    out[#out + 1] = {
        name,
        redis.call('LLEN', queue),
        redis.call('ZCOUNT', 'rq:wip:' .. name, now, '+inf'),
        redis.call('ZCOUNT', 'rq:finished:' .. name, now, '+inf'),
        redis.call('ZCOUNT', 'rq:failed:' .. name, now, '+inf'),
        redis.call('ZCARD', 'rq:scheduled:' .. name),
        redis.call('ZCARD', 'rq:deferred:' .. name),
        redis.call('ZCARD', 'rq:canceled:' .. name),
        stamp,
        redis.call('ZCOUNT', 'rq:scheduled:' .. name, '-inf', now),
        redis.call('HGET', 'atomq:paused', name),
    }
end
return out
"""


@dataclass
class Overview:
    """Counts of every queue, and per queue the scheduled jobs that are due but not queued."""

    queues: list[QueueStats]
    scheduled_due: dict[str, int] = field(default_factory=dict)


def queue_overview(
    connection: redis.Redis, names: list[str] | None = None, *, include_known: bool = True
) -> Overview:
    """Counts for ``names`` (configured queues, in priority order) and, with
    ``include_known``, every other queue RQ knows of, sorted; one round trip."""
    now = time.time()
    script = connection.register_script(QUEUE_OVERVIEW)
    rows = script(args=[repr(now), "1" if include_known else "0", *(names or [])])
    overview = Overview([])
    for row in rows:
        name = decode(row[0])
        counts = [int(value) for value in row[1:8]]
        item = QueueStats(name, *counts)
        if row[8]:
            try:
                item.oldest_queued_age = max(0.0, now - utcparse(decode(row[8])).timestamp())
            except ValueError:  # a hand-written job at the head must not break the overview
                item.oldest_queued_age = None
        overview.queues.append(item)
        overview.scheduled_due[name] = int(row[9])
        if row[10]:
            try:
                item.paused_since = float(decode(row[10]))
            except ValueError:  # paused by hand with a value that is not a time
                item.paused_since = 0.0
    return overview
