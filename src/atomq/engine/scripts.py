"""Lua scripts: each one a single atomic step that would otherwise race.

Scripts touch job hashes by key prefix as RQ's own scripts do (standalone Redis or Sentinel,
not Cluster). They need Redis >= 6.2 (LMOVE).
"""

from __future__ import annotations

from typing import Any

import redis

# Take the first job from the given queues (highest priority first) and remember it in the
# worker's claimed list, in one step: a worker that dies right after still leaves the job
# where the reaper finds it. Jobs canceled while queued are dropped on the way.
#   KEYS[1]     claimed list of the worker
#   KEYS[2..n]  queue lists in priority order
#   ARGV[1]     job key prefix
# Returns {queue_key, job_id} or nil.
CLAIM = """
for i = 2, #KEYS do
    while true do
        local job_id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
        if not job_id then break end
        local status = redis.call('HGET', ARGV[1] .. job_id, 'status')
        if status == 'queued' then
            return {KEYS[i], job_id}
        end
        -- Gone, canceled or otherwise not runnable: forget it and look further.
        redis.call('LREM', KEYS[1], -1, job_id)
    end
end
return nil
"""

# Move every scheduled job that is due (by Redis's clock) onto its queue, atomically, so
# several schedulers running at once still enqueue each job exactly once.
#   KEYS[1] scheduled registry (zset scored by due time, seconds, sub-second precision)
#   KEYS[2] queue list
#   KEYS[3] wake-up list for the queue's idle workers
#   ARGV[1] job key prefix
#   ARGV[2] most jobs to move in one call
#   ARGV[3] enqueued_at timestamp text (RQ's format)
#   ARGV[4] wake tokens to keep
# Returns {moved, next_due_score_or_false, now}.
MOVE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for _, job_id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], job_id)
    local job_key = ARGV[1] .. job_id
    local fields = redis.call('HMGET', job_key,
        'status', 'enqueue_at_front', 'enqueue_at_front_on_retry', 'ended_at')
    if fields[1] == 'scheduled' then
        redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', ARGV[3])
        local front = fields[2] == '1' or (fields[3] == '1' and fields[4] and fields[4] ~= '')
        if front then
            redis.call('LPUSH', KEYS[2], job_id)
        else
            redis.call('RPUSH', KEYS[2], job_id)
        end
        moved = moved + 1
    end
end
if moved > 0 then
    -- A token wakes one idle worker: one per job moved (at most ARGV[4]), so a burst due at
    -- one instant wakes every idle worker at once, not one while the others sleep their poll.
    local tokens = {}
    for k = 1, math.min(moved, tonumber(ARGV[4])) do tokens[k] = 1 end
    redis.call('LPUSH', KEYS[3], unpack(tokens))
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = false
if nxt[2] then next_due = nxt[2] end
return {moved, next_due, tostring(now)}
"""

# Put a dead worker's claimed-but-unstarted jobs back at the front of their queues.
#   KEYS[1] claimed list
#   ARGV[1] job key prefix, ARGV[2] queue key prefix
#   ARGV[3..] job ids that must be skipped (they have an execution and are handled as abandoned)
# Returns the number of jobs returned to their queues.
RETURN_CLAIMED = """
local skip = {}
for i = 3, #ARGV do skip[ARGV[i]] = true end
local returned = 0
while true do
    local job_id = redis.call('RPOP', KEYS[1])
    if not job_id then break end
    if not skip[job_id] then
        local fields = redis.call('HMGET', ARGV[1] .. job_id, 'status', 'origin')
        if fields[1] == 'queued' and fields[2] then
            redis.call('LPUSH', ARGV[2] .. fields[2], job_id)
            returned = returned + 1
        end
    end
end
return returned
"""

# Acquire or keep a lease: set KEYS[1] to ARGV[1] for ARGV[2] ms when free or already ours.
# Returns 1 when we hold it afterwards, 0 when someone else does.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
    return 1
end
return 0
"""

# Give a lease up only if we still hold it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Scripts:
    """Scripts registered on one connection (redis-py runs them by SHA, loading on demand)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.claim = connection.register_script(CLAIM)
        self.move_due = connection.register_script(MOVE_DUE)
        self.return_claimed = connection.register_script(RETURN_CLAIMED)
        self.lease = connection.register_script(LEASE)
        self.release = connection.register_script(RELEASE)


def decode(value: Any) -> str:
    """Text from a Redis reply item (bytes that are not UTF-8, written by someone else, come out
    escaped rather than failing the reader)."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
