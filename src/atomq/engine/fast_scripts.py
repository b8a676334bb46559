"""Lua scripts of the fast worker: claim a batch, start a job, finish a job — each one round trip.

They write exactly what RQ's worker writes, where RQ's readers look for it (job hash fields,
``rq:wip`` / ``rq:finished`` registries, ``rq:results`` streams, execution hashes and
registries, worker counters), so ``Job.fetch``, ``job.return_value()``, ``rq info`` and
rq-dashboard read jobs run by the fast worker as if RQ had run them. Where RQ spends ~58
commands and a dozen round trips per job, a job here costs about 25 commands in one round
trip (its finish pipelined with the next job's start).
"""

from __future__ import annotations

from typing import Any

import redis

# Claim up to ARGV[2] jobs, highest-priority queue first, moving each id into the worker's
# claimed list (so a crash never loses one) and returning its hash (saving a fetch).
# Jobs whose status is no longer "queued" (canceled meanwhile) are dropped on the way.
#   KEYS[1] claimed list, KEYS[2..n] queue lists
#   ARGV[1] job key prefix, ARGV[2] batch size
# Returns a flat array: queue_index, job_id, {hash field, value, ...}, ...
CLAIM_BATCH = """
local out = {}
local want = tonumber(ARGV[2])
local got = 0
for i = 2, #KEYS do
    while got < want do
        local job_id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
        if not job_id then break end
        local fields = redis.call('HGETALL', ARGV[1] .. job_id)
        local status = false
        for j = 1, #fields, 2 do
            if fields[j] == 'status' then status = fields[j + 1] break end
        end
        if status == 'queued' then
            got = got + 1
            out[#out + 1] = i - 2
            out[#out + 1] = job_id
            out[#out + 1] = fields
        else
            redis.call('LREM', KEYS[1], -1, job_id)
        end
    end
    if got >= want then break end
end
return out
"""

# Mark a claimed job started, unless it was canceled since it was claimed or is no longer in
# this worker's claimed list (the reaper gave it back while this worker could not reach
# Redis): status, times and worker on the job; the execution in RQ's started registry, the
# job's execution registry, the execution hash and the worker's execution set; the worker
# busy. Sending it again for the same execution is harmless (after a lost reply).
#   KEYS[1] job, KEYS[2] rq:wip:<queue>, KEYS[3] worker hash, KEYS[4] worker executions set,
#   KEYS[5] execution hash, KEYS[6] job executions registry, KEYS[7] claimed list
#   ARGV[1] job id, ARGV[2] execution id, ARGV[3] worker name, ARGV[4] now (RQ text),
#   ARGV[5] now (epoch seconds), ARGV[6] registry score (expiry), ARGV[7] ttl seconds
# Returns 1 when started, 0 when the job must be skipped.
START = """
local member = ARGV[1] .. ':' .. ARGV[2]
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'started' and redis.call('ZSCORE', KEYS[2], member) then return 1 end
if status ~= 'queued' or not redis.call('LPOS', KEYS[7], ARGV[1]) then
    redis.call('LREM', KEYS[7], -1, ARGV[1])
    return 0
end
redis.call('HSET', KEYS[1], 'status', 'started', 'started_at', ARGV[4], 'last_heartbeat', ARGV[4],
    'worker_name', ARGV[3])
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[6], member)
redis.call('HSET', KEYS[5], 'id', ARGV[2], 'job_id', ARGV[1], 'created_at', ARGV[5],
    'last_heartbeat', ARGV[5], 'worker_name', ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[7])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[2])
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[7]) + 60)
redis.call('SADD', KEYS[4], member)
redis.call('HSET', KEYS[3], 'state', 'busy')
return 1
"""

# Record a successful run as RQ's worker does: status and end time, a Result stream entry,
# the finished registry and TTLs, the execution cleaned up, worker counters, claimed list.
#   KEYS[1] job, KEYS[2] rq:wip:<queue>, KEYS[3] rq:finished:<queue>, KEYS[4] rq:results:<id>,
#   KEYS[5] worker hash, KEYS[6] worker executions set, KEYS[7] execution hash,
#   KEYS[8] job executions registry, KEYS[9] claimed list, KEYS[10] dependents set,
#   KEYS[11] dependencies set
#   ARGV[1] job id, ARGV[2] execution id, ARGV[3] worker name, ARGV[4] ended_at (RQ text),
#   ARGV[5] result ttl (-1 keeps forever, 0 deletes the job), ARGV[6] return value (base64,
#   '' for None), ARGV[7] started (epoch), ARGV[8] ended (epoch), ARGV[9] seconds worked,
#   ARGV[10] finished-registry score
# Returns the number of dependents (the worker enqueues them when there are any), or -1 when
# the job is no longer this execution's (the reaper took it back during an outage).
FINISH_OK = """
local member = ARGV[1] .. ':' .. ARGV[2]
if not redis.call('ZSCORE', KEYS[2], member) then
    redis.call('LREM', KEYS[9], -1, ARGV[1])
    return -1
end
redis.call('ZREM', KEYS[2], member)
redis.call('DEL', KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('SREM', KEYS[6], member)
redis.call('LREM', KEYS[9], -1, ARGV[1])
redis.call('HINCRBY', KEYS[5], 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'total_working_time', ARGV[9])
local dependents = redis.call('SCARD', KEYS[10])
local ttl = tonumber(ARGV[5])
if ttl == 0 then
    redis.call('DEL', KEYS[1], KEYS[4], KEYS[10], KEYS[11], KEYS[8])
    return dependents
end
redis.call('HSET', KEYS[1], 'status', 'finished', 'ended_at', ARGV[4])
if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', 10, '*', 'type', 1, 'worker_name', ARGV[3], 'return_value', ARGV[6],
        'execution_id', ARGV[2], 'execution_started_at', ARGV[7], 'execution_ended_at', ARGV[8])
else
    redis.call('XADD', KEYS[4], 'MAXLEN', 10, '*', 'type', 1, 'worker_name', ARGV[3],
        'execution_id', ARGV[2], 'execution_started_at', ARGV[7], 'execution_ended_at', ARGV[8])
end
if ttl > 0 then
    redis.call('EXPIRE', KEYS[4], ttl)
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('ZADD', KEYS[3], ARGV[10], ARGV[1])
    if dependents > 0 then redis.call('EXPIRE', KEYS[10], ttl) end
else
    redis.call('PERSIST', KEYS[4])
    redis.call('ZADD', KEYS[3], '+inf', ARGV[1])
end
return dependents
"""

# Give back claimed jobs this worker will not run (after an outage left them in its list):
# each id is removed from the claimed list and, if still queued, put back at the front.
#   KEYS[1] claimed list; ARGV[1] job key prefix, ARGV[2] queue key prefix, ARGV[3..] ids
RETURN_IDS = """
local returned = 0
for i = 3, #ARGV do
    local job_id = ARGV[i]
    redis.call('LREM', KEYS[1], -1, job_id)
    local fields = redis.call('HMGET', ARGV[1] .. job_id, 'status', 'origin')
    if fields[1] == 'queued' and fields[2] then
        redis.call('LPUSH', ARGV[2] .. fields[2], job_id)
        returned = returned + 1
    end
end
return returned
"""

# Cancel a job that is still queued (in its queue, or claimed by a worker that has not
# started it yet), atomically with respect to a worker's START.
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


class FastScripts:
    """The fast worker's scripts, registered on one connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self.claim_batch = connection.register_script(CLAIM_BATCH)
        self.start = connection.register_script(START)
        self.finish_ok = connection.register_script(FINISH_OK)
        self.cancel_queued = connection.register_script(CANCEL_QUEUED)
        self.return_ids = connection.register_script(RETURN_IDS)


def pairs(flat: list[Any]) -> dict[bytes, bytes]:
    """A Redis flat field/value reply as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
