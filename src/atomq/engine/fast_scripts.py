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

# Job groups (see atomq.engine.groups): one job of a group runs at a time.
#   group_enter(group, job_id): true when the job may run now (it joins the running set);
#     a member whose job is no longer started (its end was recorded without the group, or its
#     worker vanished) is dropped first, so a group never stays blocked by a job that ended.
#   group_leave(group, job_id): the job stopped running; the next parked job of the group goes
#     to the front of its queue, with a wake-up token.
GROUP_FUNCTIONS = """
local function group_enter(group, job_id)
    local running = 'atomq:group:' .. group .. ':running'
    for _, member in ipairs(redis.call('SMEMBERS', running)) do
        if member ~= job_id and redis.call('HGET', 'rq:job:' .. member, 'status') ~= 'started' then
            redis.call('SREM', running, member)
        end
    end
    if redis.call('SCARD', running) >= 1 and redis.call('SISMEMBER', running, job_id) == 0 then
        return false
    end
    redis.call('SADD', running, job_id)
    return true
end

local function group_leave(group, job_id)
    local running = 'atomq:group:' .. group .. ':running'
    redis.call('SREM', running, job_id)
    if redis.call('SCARD', running) > 0 then return end
    local parked = 'atomq:group:' .. group .. ':parked'
    while true do
        local nxt = redis.call('LPOP', parked)
        if not nxt then
            redis.call('SREM', 'atomq:groups:parked', group)
            return
        end
        local fields = redis.call('HMGET', 'rq:job:' .. nxt, 'status', 'origin')
        if fields[1] == 'queued' and fields[2] then
            redis.call('LPUSH', 'rq:queue:' .. fields[2], nxt)
            redis.call('LPUSH', 'atomq:wake:' .. fields[2], 1)
            redis.call('LTRIM', 'atomq:wake:' .. fields[2], 0, 15)
            if redis.call('LLEN', parked) == 0 then redis.call('SREM', 'atomq:groups:parked', group) end
            return
        end
    end
end
"""

# Release a job's group from a caller's pipeline (failures, stops, deferrals, recovery).
#   ARGV[1] group, ARGV[2] job id
GROUP_LEAVE = (
    GROUP_FUNCTIONS
    + """
group_leave(ARGV[1], ARGV[2])
return 1
"""
)

# Claim up to ARGV[1] queued jobs, highest-priority queue first, and mark each one started:
# status, start time and worker on the job, and its execution (``<job id>:<worker name>``) in
# RQ's rq:wip:<queue> registry, which ``rq info`` counts and which is the worker's record of
# what it holds: a crash never loses a claimed job, and the supervisor or a reaper finds it
# there. Jobs no longer "queued" (canceled meanwhile) are dropped. Queues are popped many ids
# at a time and the registry written once per queue, so a batch costs two commands per job
# (HGETALL, HSET) and a few per batch.
# Jobs of a group (hash field atomq_group) run one at a time: while another job of its group
# runs, a claimed job is parked in the group's list instead (its status stays queued) and the
# claim looks further, so a group's backlog neither holds a worker's slots nor delays others.
# A worker without a lease (declared dead while cut off, see atomq.engine.leases) claims nothing:
# the reply is 'LEASE'.
#   KEYS[1] worker hash, KEYS[2..] queues
#   ARGV[1] batch size, ARGV[2] worker name, ARGV[3] now (RQ text), ARGV[4] now (epoch),
#   ARGV[5] registry margin (s), ARGV[6] default timeout (s), ARGV[7] queue key prefix length,
#   ARGV[8] lease seconds (to take the lease again when Redis lost it)
# Returns a flat array: queue index (0-based), job id, {hash field, value, ...}, ...
CLAIM_START = (
    GROUP_FUNCTIONS
    + """
if not redis.call('ZSCORE', 'atomq:leases', ARGV[2]) then
    -- Declared dead (its tombstone is there): nothing is this worker's any more. Otherwise
    -- Redis lost the lease with its data: take it again.
    if redis.call('EXISTS', 'atomq:dead:' .. ARGV[2]) == 1 then return 'LEASE' end
    local t = redis.call('TIME')
    redis.call('ZADD', 'atomq:leases', tonumber(t[1]) + tonumber(ARGV[8]), ARGV[2])
end
local want = tonumber(ARGV[1])
local now = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local cut = tonumber(ARGV[7]) + 1
local suffix = ':' .. ARGV[2]
local out = {}
local got = 0
for i = 2, #KEYS do
    local queue = string.sub(KEYS[i], cut)
    local wip = {}
    while got < want do
        local ids = redis.call('LPOP', KEYS[i], want - got)
        if not ids then break end
        for _, job_id in ipairs(ids) do
            local job_key = 'rq:job:' .. job_id
            local fields = redis.call('HGETALL', job_key)
            local status, timeout, ttl_field, due, group = false, false, false, false, false
            for j = 1, #fields, 2 do
                local name = fields[j]
                if name == 'status' then status = fields[j + 1]
                elseif name == 'timeout' then timeout = tonumber(fields[j + 1])
                elseif name == 'ttl' then ttl_field = true
                elseif name == 'atomq_due_at' then due = true
                elseif name == 'atomq_group' then group = fields[j + 1] end
            end
            if status == 'queued' and group and not group_enter(group, job_id) then
                redis.call('RPUSH', 'atomq:group:' .. group .. ':parked', job_id)
                redis.call('SADD', 'atomq:groups:parked', group)
            elseif status == 'queued' then
                got = got + 1
                local ttl = math.floor((timeout or tonumber(ARGV[6])) + margin)
                redis.call('HSET', job_key, 'status', 'started', 'started_at', ARGV[3],
                    'last_heartbeat', ARGV[3], 'worker_name', ARGV[2])
                if ttl_field then redis.call('PERSIST', job_key) end
                -- The due time was read (sent back in the hash) to measure lateness; a later
                -- run of the same job (a retry, a requeue) is not late.
                if due then redis.call('HDEL', job_key, 'atomq_due_at') end
                wip[#wip + 1] = now + ttl
                wip[#wip + 1] = job_id .. suffix
                out[#out + 1] = i - 2
                out[#out + 1] = job_id
                out[#out + 1] = fields
            end
        end
    end
    if #wip > 0 then redis.call('ZADD', 'rq:wip:' .. queue, unpack(wip)) end
    if got >= want then break end
end
if got > 0 then redis.call('HSET', KEYS[1], 'state', 'busy') end
return out
"""
)

#: Arguments per job in FINISH_MANY.
FINISH_FIELDS = 11

# Record successful runs as RQ's worker does: status, start and end times, a Result stream
# entry, the finished registry and TTLs, the started-registry entry removed, the worker's
# counters. A job that is no longer this worker's (the reaper took it back while this worker
# could not reach Redis) is left alone. Registries are read and written once per queue, and
# dependents looked for once per batch, so a job costs four commands (HSET, XADD, two EXPIREs).
#   KEYS[1] worker hash
#   ARGV[1] worker name, then per job (FINISH_FIELDS values): job id, queue, started_at (RQ
#   text), ended_at (RQ text), result ttl (-1 forever, 0 delete the job), return value
#   (base64, '' for None), started (epoch), ended (epoch), seconds worked, finished score,
#   group ('' for none: the next parked job of the group goes to the front of its queue)
# Returns per job its number of dependents (to enqueue), or -1 when the job was not ours; the
# reply is 'LEASE' (nothing recorded) when the worker lost its lease.
FINISH_MANY = (
    GROUP_FUNCTIONS
    + """
if not redis.call('ZSCORE', 'atomq:leases', ARGV[1])
    and redis.call('EXISTS', 'atomq:dead:' .. ARGV[1]) == 1 then
    return 'LEASE'
end
local suffix = ':' .. ARGV[1]
local by_queue, order = {}, {}
for base = 2, #ARGV, 11 do
    local queue = ARGV[base + 1]
    if not by_queue[queue] then
        by_queue[queue] = {}
        order[#order + 1] = queue
    end
    local list = by_queue[queue]
    list[#list + 1] = base
end
local ours = {}
for _, queue in ipairs(order) do
    local bases = by_queue[queue]
    local members = {}
    for k, base in ipairs(bases) do members[k] = ARGV[base] .. suffix end
    local scores = redis.call('ZMSCORE', 'rq:wip:' .. queue, unpack(members))
    local mine = {}
    for k, base in ipairs(bases) do
        if scores[k] then
            ours[base] = true
            mine[#mine + 1] = members[k]
        end
    end
    if #mine > 0 then redis.call('ZREM', 'rq:wip:' .. queue, unpack(mine)) end
end
local dependents_keys = {}
for base = 2, #ARGV, 11 do
    if ours[base] then dependents_keys[#dependents_keys + 1] = 'rq:job:' .. ARGV[base] .. ':dependents' end
end
local any_dependents = #dependents_keys > 0 and redis.call('EXISTS', unpack(dependents_keys)) > 0
local out = {}
local ok, worked = 0, 0
local finished = {}
for base = 2, #ARGV, 11 do
    local job_id, queue = ARGV[base], ARGV[base + 1]
    if not ours[base] then
        out[#out + 1] = -1
    else
        local job_key = 'rq:job:' .. job_id
        local results_key = 'rq:results:' .. job_id
        local dependents_key = job_key .. ':dependents'
        ok = ok + 1
        worked = worked + tonumber(ARGV[base + 8])
        local dependents = 0
        if any_dependents then dependents = redis.call('SCARD', dependents_key) end
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
            if not finished[queue] then finished[queue] = {} end
            local entries = finished[queue]
            if ttl > 0 then
                redis.call('EXPIRE', results_key, ttl)
                redis.call('EXPIRE', job_key, ttl)
                entries[#entries + 1] = ARGV[base + 9]
                if dependents > 0 then redis.call('EXPIRE', dependents_key, ttl) end
            else
                redis.call('PERSIST', results_key)
                entries[#entries + 1] = '+inf'
            end
            entries[#entries + 1] = job_id
        end
        out[#out + 1] = dependents
    end
    if ARGV[base + 10] ~= '' then group_leave(ARGV[base + 10], job_id) end
end
for queue, entries in pairs(finished) do
    redis.call('ZADD', 'rq:finished:' .. queue, unpack(entries))
end
if ok > 0 then
    redis.call('HINCRBY', KEYS[1], 'successful_job_count', ok)
    redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', worked)
end
return out
"""
)

# Give started-but-not-run jobs back: a warm shutdown, a job that runs long (so the jobs
# waiting behind it go to other workers), or a dead worker's batch. Each job still this
# worker's is set back to queued, leaves the started registry (and its group's running set),
# and goes to the front of its queue.
#   ARGV[1] worker name, then per job: job id, queue
# Returns the number of jobs given back.
REVERT = (
    GROUP_FUNCTIONS
    + """
local given = 0
local suffix = ':' .. ARGV[1]
for base = 2, #ARGV, 2 do
    local job_id, queue = ARGV[base], ARGV[base + 1]
    if redis.call('ZREM', 'rq:wip:' .. queue, job_id .. suffix) == 1 then
        redis.call('HSET', 'rq:job:' .. job_id, 'status', 'queued', 'started_at', '', 'worker_name', '')
        local group = redis.call('HGET', 'rq:job:' .. job_id, 'atomq_group')
        if group then redis.call('SREM', 'atomq:group:' .. group .. ':running', job_id) end
        redis.call('LPUSH', 'rq:queue:' .. queue, job_id)
        redis.call('LPUSH', 'atomq:wake:' .. queue, 1)
        redis.call('LTRIM', 'atomq:wake:' .. queue, 0, 15)
        given = given + 1
    end
end
return given
"""
)

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
