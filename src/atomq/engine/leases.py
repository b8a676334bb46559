"""Worker leases: a host that stops (killed, frozen, cut off) has its jobs run elsewhere in
seconds, and cannot record outcomes over their re-runs when it comes back.

Every worker holds a lease: its name in the sorted set ``atomq:leases``, scored by when the
lease runs out (Redis's clock, so hosts' clocks need not agree). The supervisor of the
worker's host renews the leases of its live workers every :data:`RENEW_SECONDS` (the worker
renews its own too, which matters only for a worker run without a supervisor). The supervisor
runs no job, so a job blocking in C code or a long garbage-collection pause in a worker never
makes a live host look dead. The supervisor also publishes, from the memory it shares with its
workers, which jobs each one is *running* (``atomq:running:<worker>``), so a vanished worker's
claimed-but-unstarted jobs go back untouched and only the running ones count as attempted.

Every supervisor (not only a leader, which may be on the dead host) looks for expired leases
every :data:`RENEW_SECONDS`; the script that finds one removes it, so exactly one host
recovers each dead worker (:func:`atomq.engine.recovery.recover_worker`).

**Fencing.** A worker's claims and its recording of successes check its lease inside the same
script: once a worker was declared dead its jobs are someone else's, and whatever it records
late is refused (and logged). Its supervisor learns at its next renewal that the lease was
lost and restarts the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from atomq.core import keys
from atomq.engine.fast_scripts import Lua

logger = logging.getLogger("atomq.leases")

#: How long a clean exit's mark keeps renewals from taking the lease again: far longer than
#: a worker process takes to end after giving its lease up.
LEFT_MARK_SECONDS = 300

#: How often leases are renewed, and expired ones looked for.
RENEW_SECONDS = 0.5

#: Seconds a lease lasts without renewal: a host silent this long is taken for dead.
DEFAULT_LEASE_SECONDS = 3.0

# Renew the leases of the workers in ARGV[2..] for ARGV[1] seconds, on Redis's clock. A lease
# that is gone because a recovery took it (its worker's tombstone is there) stays gone: that
# worker was declared dead. One its worker gave up on the way out stays gone too (a renewal by
# the supervisor can land between the worker leaving and its process ending). One gone
# otherwise (Redis restarted without its data) is taken again: the worker is alive and its
# jobs are its own.
# Returns the names that were declared dead.
_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
    if redis.call('ZADD', KEYS[1], 'XX', 'CH', until_, ARGV[i]) == 0
        and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
        if redis.call('EXISTS', 'atomq:dead:' .. ARGV[i]) == 1 then
            lost[#lost + 1] = ARGV[i]
        elseif redis.call('EXISTS', 'atomq:left:' .. ARGV[i]) == 0 then
            redis.call('ZADD', KEYS[1], until_, ARGV[i])
        end
    end
end
return lost
"""

# Take a lease for the worker ARGV[2] for ARGV[1] seconds (a worker starting: a new life, so
# the tombstone or leaving mark of an earlier one under the same name goes).
_JOIN = """
redis.call('DEL', 'atomq:dead:' .. ARGV[2], 'atomq:left:' .. ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1]), ARGV[2])
return 1
"""

# Remove and return up to ARGV[1] leases that ran out (their workers are dead), leaving a
# tombstone for each (``atomq:dead:<name>``, an hour): a worker that comes back finds it and
# knows its jobs were handed on. Removing them here is what makes exactly one host recover each.
_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, name in ipairs(names) do
    redis.call('ZREM', KEYS[1], name)
    redis.call('SET', 'atomq:dead:' .. name, 1, 'EX', 3600)
end
return names
"""


class Leases:
    """The lease scripts, on one connection."""

    def __init__(self, connection: redis.Redis, seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.connection = connection
        self.seconds = seconds
        self._renew = Lua(connection, _RENEW)
        self._join = Lua(connection, _JOIN)
        self._expired = Lua(connection, _EXPIRED)

    def join(self, name: str) -> None:
        """Take ``name``'s lease (a worker registering)."""
        self._join([keys.LEASES], [self.seconds, name])

    def renew(self, names: Iterable[str]) -> list[str]:
        """Renew the leases of ``names``; return those that were lost (declared dead)."""
        names = list(names)
        if not names:
            return []
        lost = self._renew([keys.LEASES], [self.seconds, *names])
        return [name.decode() if isinstance(name, bytes) else str(name) for name in lost]

    def take_expired(self, limit: int = 50) -> list[str]:
        """Names of workers whose lease ran out, each handed to exactly one caller."""
        names = self._expired([keys.LEASES], [limit])
        return [name.decode() if isinstance(name, bytes) else str(name) for name in names]

    def leave(self, pipe: redis.client.Pipeline, name: str) -> None:
        """Queue on ``pipe``: give up ``name``'s lease (a clean exit)."""
        pipe.zrem(keys.LEASES, name)
        pipe.set(keys.left_key(name), 1, ex=LEFT_MARK_SECONDS)
        pipe.delete(keys.running_key(name))

    def publish_running(self, pipe: redis.client.Pipeline, name: str, job_ids: Iterable[str]) -> None:
        """Queue on ``pipe``: the jobs ``name`` runs now (what recovery counts as attempted)."""
        key = keys.running_key(name)
        ids = list(job_ids)
        pipe.delete(key)
        if ids:
            pipe.sadd(key, *ids)
            pipe.expire(key, 3600)
