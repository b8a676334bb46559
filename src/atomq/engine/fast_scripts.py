"""Lua scripts of the fast worker: claim-and-start a batch, finish a batch, give jobs back.

They write what RQ's worker writes, where RQ's readers look for it (job hash fields,
``rq:wip`` / ``rq:finished`` registries, ``rq:results`` streams, execution hashes and
registries, worker counters), so ``Job.fetch``, ``job.return_value()``, ``rq info`` and
rq-dashboard read jobs run by the fast worker as if RQ had run them. RQ spends ~58 commands
and a dozen round trips per job; here a batch of jobs costs two script calls, sent together
(the end of one batch with the start of the next), so one round trip serves many jobs.

Keys of individual jobs are built inside the scripts from RQ's fixed prefixes, as RQ's own
scripts do (standalone Redis or Sentinel; not Redis Cluster).
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.exceptions import NoScriptError

# Claim up to ARGV[1] queued jobs, highest-priority queue first, and mark each one started:
# moved into the worker's claimed list (a crash never loses it; it is also how the
# supervisor and the reaper find what a dead worker held), status, start time and worker on
# the job, and its execution (``<job id>:<worker name>``) in RQ's rq:wip:<queue> registry,
# which ``rq info`` counts. Jobs no longer "queued" (canceled meanwhile) are dropped.
#   KEYS[1] claimed list, KEYS[2] worker hash, KEYS[3..] queues
#   ARGV[1] batch size, ARGV[2] worker name, ARGV[3] now (RQ text), ARGV[4] now (epoch),
#   ARGV[5] registry margin (s), ARGV[6] default timeout (s), ARGV[7] queue key prefix length
# Returns a flat array: queue index (0-based), job id, {hash field, value, ...}, ...
CLAIM_START = """
local want = tonumber(ARGV[1])
local now = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local cut = tonumber(ARGV[7]) + 1
local suffix = ':' .. ARGV[2]
local out = {}
local got = 0
for i = 3, #KEYS do
    local queue = string.sub(KEYS[i], cut)
    while got < want do
        local job_id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
        if not job_id then break end
        local job_key = 'rq:job:' .. job_id
        local fields = redis.call('HGETALL', job_key)
        local status, timeout, ttl_field, due = false, false, false, false
        for j = 1, #fields, 2 do
            local name = fields[j]
            if name == 'status' then status = fields[j + 1]
            elseif name == 'timeout' then timeout = tonumber(fields[j + 1])
            elseif name == 'ttl' then ttl_field = true
            elseif name == 'atomq_due_at' then due = true end
        end
        if status == 'queued' then
            got = got + 1
            local ttl = math.floor((timeout or tonumber(ARGV[6])) + margin)
            redis.call('HSET', job_key, 'status', 'started', 'started_at', ARGV[3], 'last_heartbeat', ARGV[3],
                'worker_name', ARGV[2])
            if ttl_field then redis.call('PERSIST', job_key) end
            -- The due time was read (sent back in the hash) to measure lateness; a later run
            -- of the same job (a retry, a requeue) is not late.
            if due then redis.call('HDEL', job_key, 'atomq_due_at') end
            redis.call('ZADD', 'rq:wip:' .. queue, now + ttl, job_id .. suffix)
            out[#out + 1] = i - 3
            out[#out + 1] = job_id
            out[#out + 1] = fields
        else
            redis.call('LREM', KEYS[1], -1, job_id)
        end
    end
    if got >= want then break end
end
if got > 0 then redis.call('HSET', KEYS[2], 'state', 'busy') end
return out
"""

#: Arguments per job in FINISH_MANY.
FINISH_FIELDS = 10

# Record successful runs as RQ's worker does: status, start and end times, a Result stream
# entry, the finished registry and TTLs, the started-registry entry removed, the worker's
# counters and claimed list. A job that is no longer this worker's (the reaper took it back
# while this worker could not reach Redis) is left alone.
#   KEYS[1] worker hash, KEYS[2] claimed list
#   ARGV[1] worker name, then per job (FINISH_FIELDS values): job id, queue, started_at (RQ
#   text), ended_at (RQ text), result ttl (-1 forever, 0 delete the job), return value
#   (base64, '' for None), started (epoch), ended (epoch), seconds worked, finished score
# Returns per job its number of dependents (to enqueue), or -1 when the job was not ours.
FINISH_MANY = """
local out = {}
local ok, worked = 0, 0
local suffix = ':' .. ARGV[1]
for base = 2, #ARGV, 10 do
    local job_id, queue = ARGV[base], ARGV[base + 1]
    local job_key = 'rq:job:' .. job_id
    local results_key = 'rq:results:' .. job_id
    local dependents_key = job_key .. ':dependents'
    redis.call('LREM', KEYS[2], 1, job_id)
    if redis.call('ZREM', 'rq:wip:' .. queue, job_id .. suffix) == 0 then
        out[#out + 1] = -1
    else
        ok = ok + 1
        worked = worked + tonumber(ARGV[base + 8])
        local dependents = redis.call('SCARD', dependents_key)
        local ttl = tonumber(ARGV[base + 4])
        if ttl == 0 then
            redis.call('DEL', job_key, results_key, dependents_key, 'rq:job::' .. job_id .. ':dependencies')
        else
            redis.call('HSET', job_key, 'status', 'finished', 'started_at', ARGV[base + 2],
                'ended_at', ARGV[base + 3])
            if ARGV[base + 5] ~= '' then
                redis.call('XADD', results_key, 'MAXLEN', 10, '*', 'type', 1, 'worker_name', ARGV[1],
                    'return_value', ARGV[base + 5], 'execution_id', ARGV[1],
                    'execution_started_at', ARGV[base + 6], 'execution_ended_at', ARGV[base + 7])
            else
                redis.call('XADD', results_key, 'MAXLEN', 10, '*', 'type', 1, 'worker_name', ARGV[1],
                    'execution_id', ARGV[1], 'execution_started_at', ARGV[base + 6],
                    'execution_ended_at', ARGV[base + 7])
            end
            if ttl > 0 then
                redis.call('EXPIRE', results_key, ttl)
                redis.call('EXPIRE', job_key, ttl)
                redis.call('ZADD', 'rq:finished:' .. queue, ARGV[base + 9], job_id)
                if dependents > 0 then redis.call('EXPIRE', dependents_key, ttl) end
            else
                redis.call('PERSIST', results_key)
                redis.call('ZADD', 'rq:finished:' .. queue, '+inf', job_id)
            end
        end
        out[#out + 1] = dependents
    end
end
if ok > 0 then
    redis.call('HINCRBY', KEYS[1], 'successful_job_count', ok)
    redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', worked)
end
return out
"""

# Give started-but-not-run jobs back: a warm shutdown, a job that runs long (so the jobs
# waiting behind it go to other workers), or a dead worker's batch. Each job still this
# worker's is set back to queued, leaves the started registry, and goes to the front of its
# queue.
#   KEYS[1] claimed list; ARGV[1] worker name, then per job: job id, queue
# Returns the number of jobs given back.
REVERT = """
local given = 0
local suffix = ':' .. ARGV[1]
for base = 2, #ARGV, 2 do
    local job_id, queue = ARGV[base], ARGV[base + 1]
    if redis.call('ZREM', 'rq:wip:' .. queue, job_id .. suffix) == 1 then
        redis.call('LREM', KEYS[1], -1, job_id)
        redis.call('HSET', 'rq:job:' .. job_id, 'status', 'queued', 'started_at', '', 'worker_name', '')
        redis.call('LPUSH', 'rq:queue:' .. queue, job_id)
        redis.call('LPUSH', 'atomq:wake:' .. queue, 1)
        redis.call('LTRIM', 'atomq:wake:' .. queue, 0, 15)
        given = given + 1
    end
end
return given
"""

# Cancel a job that is still queued, atomically with respect to a worker's claim.
#   KEYS[1] job, KEYS[2] queue list, KEYS[3] canceled registry
#   ARGV[1] job id, ARGV[2] now (epoch)
# Returns 1 when canceled, 0 when the job was no longer queued.
CANCEL_QUEUED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'canceled')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""


class Lua:
    """A script run by SHA, in pipelines too.

    redis-py's Script objects send SCRIPT EXISTS before every pipeline that uses them — a
    second round trip per call. These are loaded once; a NOSCRIPT reply (Redis restarted or
    flushed its script cache) makes the caller reload and retry.
    """

    def __init__(self, connection: redis.Redis, source: str) -> None:
        self.connection = connection
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    def load(self) -> None:
        self.connection.script_load(self.source)

    def queue(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        """Add a call to ``pipe``."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        try:
            return self.connection.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load()
            return self.connection.evalsha(self.sha, len(keys), *keys, *args)


class FastScripts:
    """The fast worker's scripts, on one connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self.claim_start = Lua(connection, CLAIM_START)
        self.finish_many = Lua(connection, FINISH_MANY)
        self.revert = Lua(connection, REVERT)
        self.cancel_queued = Lua(connection, CANCEL_QUEUED)

    def load(self) -> None:
        """Load every script (at start, and after a NOSCRIPT reply)."""
        for script in (self.claim_start, self.finish_many, self.revert, self.cancel_queued):
            script.load()


def pairs(flat: list[Any]) -> dict[bytes, bytes]:
    """A Redis flat field/value reply as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
