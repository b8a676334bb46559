"""The producer's Lua scripts, their arguments and replies: one round trip per enqueue.

:data:`ENQUEUE` writes any number of jobs built by :func:`atomq.engine.producer.build_job`:
it refuses an existing id (or replaces the old job), checks dependencies, writes the job hash,
and puts the id where it belongs (queue list and wake-up token, scheduled registry and
scheduler wake-up, or deferred registry and dependency sets), all in one atomic step, in
RQ's layout. :data:`CANCEL` takes a waiting job back atomically.

Scripts build key names from :mod:`atomq.core.keys`'s prefixes (as RQ's own scripts do:
standalone Redis or Sentinel, not Cluster).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from atomq.core import keys
from atomq.core.errors import AtomqError, DuplicateJobError, JobNotFoundError, JobStateError
from atomq.engine.producer import NewJob
from atomq.engine.queues import WAKE_TOKENS_KEPT
from atomq.engine.script_calls import Script

#: Prefixes and names the scripts build keys from, substituted into their source once.
_NAMES = {
    "JOB": keys.JOB_KEY_PREFIX,
    "QUEUE": keys.QUEUE_KEY_PREFIX,
    "SCHEDULED": keys.SCHEDULED_KEY_PREFIX,
    "DEFERRED": keys.DEFERRED_KEY_PREFIX,
    "CANCELED": keys.CANCELED_KEY_PREFIX,
    "FINISHED": keys.finished_key(""),
    "FAILED": keys.failed_key(""),
    "RESULTS": keys.RESULTS_KEY_PREFIX,
    "WAKE": keys.WAKE_KEY_PREFIX,
    "QUEUES": keys.QUEUES_SET,
    "SCHEDULER_WAKE": keys.SCHEDULER_WAKE,
    "DEPS_PREFIX": keys.DEPENDENCIES_KEY_PREFIX,
    "DEPS_SUFFIX": keys.DEPENDENCIES_SUFFIX,
    "DEPENDENTS_SUFFIX": keys.DEPENDENTS_SUFFIX,
    "TOKENS_KEPT": str(WAKE_TOKENS_KEPT),
    "GROUP_FIELD": keys.GROUP_FIELD,
}


# Wake-up tokens: a token wakes one idle worker (or the scheduler), so a list holds up to
# TOKENS_KEPT of them. Only the missing ones are pushed: a full list means nobody is waiting
# on it (a blocked pop returns at once on a non-empty list), and reading its length costs
# Redis less than a push and a trim, which are writes. Producers that keep enqueueing while
# every worker is busy find it full and write nothing.
_ADD_TOKENS = """
local function add_tokens(key, n)
    local missing = math.min(n, tonumber(TOKENS_KEPT) - redis.call('LLEN', key))
    if missing > 0 then
        local tokens = {}
        for k = 1, missing do tokens[k] = 1 end
        redis.call('LPUSH', key, unpack(tokens))
    end
end
"""


def _source(template: str) -> str:
    head = "\n".join(f"local {name} = '{value}'" for name, value in _NAMES.items())
    return f"{head}\n{_ADD_TOKENS}\n{template}"


# ARGV[1] 'all' (every job is written or none: a refusal writes nothing) or 'each' (each job
#         stands alone, as for separate calls)
# ARGV[2] now, whole epoch seconds (RQ scores its deferred registry so)
# ARGV[3] number of templates, then per template: queue, n, n values (field/value pairs)
# then per job: id, template number, kind ('Q' queue now, 'S' schedule), at front ('1'/''),
#   due score, check ('' none, 'x' refuse an existing id, 'r' replace the existing job),
#   ttl ('' or seconds), enqueued_at text, n, n values (the job's own pairs, ending with its
#   status, and enqueued_at when queued: a job whose dependencies have not all finished is
#   set to 'deferred' instead), d, d dependency ids
# Returns per job its status ('queued', 'scheduled', 'deferred'), or why it was refused
# ('duplicate', 'running', 'missing:<dependency id>'), or '' (not written: another job of an
# 'all' call was refused).
ENQUEUE = _source("""
local all_or_none = ARGV[1] == 'all'
local now = ARGV[2]
local templates, jobs = {}, {}
local i = 4
for t = 1, tonumber(ARGV[3]) do
    local n = tonumber(ARGV[i + 1])
    templates[t] = {queue = ARGV[i], first = i + 2, last = i + 1 + n}
    i = i + 2 + n
end
while i <= #ARGV do
    local job = {id = ARGV[i], template = templates[tonumber(ARGV[i + 1])], kind = ARGV[i + 2],
        front = ARGV[i + 3] == '1', due = ARGV[i + 4], check = ARGV[i + 5],
        ttl = tonumber(ARGV[i + 6]), enqueued_at = ARGV[i + 7]}
    local n = tonumber(ARGV[i + 8])
    job.first, job.last = i + 9, i + 8 + n
    i = i + 9 + n
    local d = tonumber(ARGV[i])
    job.deps = {}
    for k = 1, d do job.deps[k] = ARGV[i + k] end
    i = i + 1 + d
    jobs[#jobs + 1] = job
end

-- Ids of the jobs checked so far in this call: a job may depend on an earlier one.
local coming = {}
local function refusal(job)
    if job.check ~= '' and redis.call('EXISTS', JOB .. job.id) == 1 then
        if job.check == 'x' then return 'duplicate' end
        if redis.call('HGET', JOB .. job.id, 'status') == 'started' then return 'running' end
    end
    for _, dep in ipairs(job.deps) do
        if not coming[dep] and redis.call('EXISTS', JOB .. dep) == 0 then return 'missing:' .. dep end
    end
    coming[job.id] = true
    return false
end

-- A replaced job leaves every list and registry it was in, with its results and dependencies.
local function clear(job_id)
    local origin = redis.call('HGET', JOB .. job_id, 'origin')
    if origin then
        redis.call('LREM', QUEUE .. origin, 0, job_id)
        for _, prefix in ipairs({SCHEDULED, DEFERRED, CANCELED, FINISHED, FAILED}) do
            redis.call('ZREM', prefix .. origin, job_id)
        end
    end
    redis.call('DEL', JOB .. job_id, RESULTS .. job_id, DEPS_PREFIX .. job_id .. DEPS_SUFFIX)
end

-- Jobs queued per queue by this call, and whether the scheduler was woken. A token wakes one
-- idle worker: a call that queues many jobs drops one per job (at most TOKENS_KEPT), so every
-- idle worker wakes, not one while the others sleep out their poll.
local woken, scheduler_woken = {}, false
local function wake_workers()
    for queue, n in pairs(woken) do add_tokens(WAKE .. queue, n) end
end
local function write(job)
    local key, t = JOB .. job.id, job.template
    if job.check == 'r' then clear(job.id) end
    redis.call('HSET', key, unpack(ARGV, t.first, t.last))
    redis.call('HSET', key, unpack(ARGV, job.first, job.last))
    local status = job.kind == 'S' and 'scheduled' or 'queued'
    if #job.deps > 0 and status == 'queued' then
        for _, dep in ipairs(job.deps) do
            if redis.call('HGET', JOB .. dep, 'status') ~= 'finished' then status = 'deferred' end
        end
        if status == 'queued' then
            redis.call('HSET', key, 'status', status, 'enqueued_at', job.enqueued_at)
        else
            redis.call('HSET', key, 'status', status)
        end
    end
    redis.call('SADD', QUEUES, QUEUE .. t.queue)
    if status == 'queued' then
        if job.front then
            redis.call('LPUSH', QUEUE .. t.queue, job.id)
        else
            redis.call('RPUSH', QUEUE .. t.queue, job.id)
        end
        woken[t.queue] = (woken[t.queue] or 0) + 1
    elseif status == 'scheduled' then
        redis.call('ZADD', SCHEDULED .. t.queue, job.due, job.id)
        if not scheduler_woken then
            scheduler_woken = true
            add_tokens(SCHEDULER_WAKE, 1)
        end
    else
        redis.call('ZADD', DEFERRED .. t.queue, now, job.id)
        for _, dep in ipairs(job.deps) do
            redis.call('SADD', JOB .. dep .. DEPENDENTS_SUFFIX, job.id)
        end
        redis.call('SADD', DEPS_PREFIX .. job.id .. DEPS_SUFFIX, unpack(job.deps))
    end
    if job.ttl and job.ttl > 0 then
        redis.call('EXPIRE', key, job.ttl)
        redis.call('EXPIRE', key .. DEPENDENTS_SUFFIX, job.ttl)
        redis.call('EXPIRE', DEPS_PREFIX .. job.id .. DEPS_SUFFIX, job.ttl)
    end
    return status
end

local out = {}
if all_or_none then
    local refused = false
    for k, job in ipairs(jobs) do
        out[k] = refusal(job) or ''
        if out[k] ~= '' then refused = true end
    end
    if refused then return out end
    for k, job in ipairs(jobs) do out[k] = write(job) end
else
    for k, job in ipairs(jobs) do out[k] = refusal(job) or write(job) end
end
wake_workers()
return out
""")

# The common case in fewer steps: one job, no dependencies, no replacing (ENQUEUE's work
# for it, without reading a general argument list).
#   ARGV[1] job id, ARGV[2] queue, ARGV[3] kind ('Q'/'S'), ARGV[4] at front ('1'/''),
#   ARGV[5] due score, ARGV[6] check ('' or 'x'), ARGV[7] ttl ('' or seconds),
#   ARGV[8..] the hash fields (template pairs, then the job's own, status included)
# Returns the job's status, or 'duplicate'.
ENQUEUE_ONE = _source("""
local job_id, queue = ARGV[1], ARGV[2]
local key = JOB .. job_id
if ARGV[6] == 'x' and redis.call('EXISTS', key) == 1 then return 'duplicate' end
redis.call('HSET', key, unpack(ARGV, 8))
redis.call('SADD', QUEUES, QUEUE .. queue)
local status = 'queued'
if ARGV[3] == 'S' then
    status = 'scheduled'
    redis.call('ZADD', SCHEDULED .. queue, ARGV[5], job_id)
    add_tokens(SCHEDULER_WAKE, 1)
else
    if ARGV[4] == '1' then
        redis.call('LPUSH', QUEUE .. queue, job_id)
    else
        redis.call('RPUSH', QUEUE .. queue, job_id)
    end
    add_tokens(WAKE .. queue, 1)
end
local ttl = tonumber(ARGV[7])
if ttl and ttl > 0 then
    redis.call('EXPIRE', key, ttl)
    redis.call('EXPIRE', key .. DEPENDENTS_SUFFIX, ttl)
    redis.call('EXPIRE', DEPS_PREFIX .. job_id .. DEPS_SUFFIX, ttl)
end
return status
""")

# Take a job back before it runs: off its queue, schedule or deferred registry, into RQ's
# canceled registry, in one step (a worker cannot claim it half-way).
#   ARGV[1] job id, ARGV[2] now (epoch seconds)
# Returns {status before, worker name}: the job was canceled when the status was 'queued',
# 'scheduled', 'deferred' or 'created'; any other status means it was left alone (and
# {false} when there is no such job).
CANCEL = _source("""
local job_id = ARGV[1]
local key = JOB .. job_id
local fields = redis.call('HMGET', key, 'status', 'origin', 'worker_name', GROUP_FIELD)
local status, origin = fields[1], fields[2]
if not status then return {false} end
if status == 'queued' or status == 'scheduled' or status == 'deferred' or status == 'created' then
    if fields[4] then
        -- parked while another job of its group runs (see atomq.engine.groups)
        redis.call('LREM', 'atomq:group:' .. fields[4] .. ':parked', 0, job_id)
    end
    if origin then
        redis.call('LREM', QUEUE .. origin, 0, job_id)
        redis.call('ZREM', SCHEDULED .. origin, job_id)
        redis.call('ZREM', DEFERRED .. origin, job_id)
        redis.call('ZADD', CANCELED .. origin, ARGV[2], job_id)
    end
    redis.call('HSET', key, 'status', 'canceled')
end
return {status, fields[3] or ''}
""")


def stop_message(worker_name: str, job_id: str) -> tuple[str, str]:
    """The channel and message that tell a worker to stop a job (RQ's ``stop-job`` command,
    as ``rq.command.send_command`` publishes it)."""
    return keys.pubsub_channel(worker_name), json.dumps({"command": "stop-job", "job_id": job_id})


ENQUEUE_SCRIPT = Script(ENQUEUE)
ENQUEUE_ONE_SCRIPT = Script(ENQUEUE_ONE)
CANCEL_SCRIPT = Script(CANCEL)


def enqueue_call(jobs: Sequence[NewJob], *, all_or_none: bool, now: int) -> tuple[Script, list[Any]]:
    """The script that writes ``jobs`` and its arguments: :data:`ENQUEUE_ONE` for a single job
    without dependencies or replacing (most enqueues), else :data:`ENQUEUE`."""
    if len(jobs) == 1 and not jobs[0].depends_on and jobs[0].check != "replace":
        job = jobs[0]
        return ENQUEUE_ONE_SCRIPT, [
            job.id,
            job.queue,
            "S" if job.kind == "schedule" else "Q",
            "1" if job.at_front else "",
            repr(job.due) if job.due is not None else "",
            _CHECKS[job.check],
            job.ttl or "",
            *job.template.pairs,
            *job.pairs,
        ]
    return ENQUEUE_SCRIPT, enqueue_args(jobs, all_or_none=all_or_none, now=now)


def enqueue_args(jobs: Sequence[NewJob], *, all_or_none: bool, now: int) -> list[Any]:
    """:data:`ENQUEUE`'s arguments for ``jobs`` (templates shared jobs send once)."""
    numbers: dict[int, int] = {}
    head: list[Any] = []
    body: list[Any] = []
    for job in jobs:
        number = numbers.get(id(job.template))
        if number is None:
            number = numbers[id(job.template)] = len(numbers) + 1
            head += [job.template.queue, len(job.template.pairs), *job.template.pairs]
        body += [
            job.id,
            number,
            "S" if job.kind == "schedule" else "Q",
            "1" if job.at_front else "",
            repr(job.due) if job.due is not None else "",
            _CHECKS[job.check],
            job.ttl or "",
            job.stamp,
            len(job.pairs),
            *job.pairs,
            len(job.depends_on),
            *job.depends_on,
        ]
    return ["all" if all_or_none else "each", now, len(numbers), *head, *body]


_CHECKS = {"none": "", "refuse": "x", "replace": "r"}


def text(value: Any) -> str:
    """A reply item as text (clients may or may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def statuses_or_raise(jobs: Sequence[NewJob], reply: Any) -> list[str]:
    """Each written job's status from the reply of :data:`ENQUEUE` (a list) or
    :data:`ENQUEUE_ONE` (one status), or the first refusal raised."""
    statuses = [text(item) for item in reply] if isinstance(reply, list) else [text(reply)]
    for job, status in zip(jobs, statuses, strict=True):
        error = refusal_error(job, status)
        if error is not None:
            raise error
    return statuses


def canceled_or_raise(job_id: str, reply: Sequence[Any]) -> str:
    """Read :data:`CANCEL`'s reply: the name of the worker running the job when it has to be
    told to stop, '' when the job was canceled; raise for a missing or ended job."""
    if not reply or reply[0] is None:
        raise JobNotFoundError(
            f"no job with id {job_id!r} (it never existed, or its result has expired)", field="job_id"
        )
    status, worker = text(reply[0]), text(reply[1])
    if status in {"queued", "scheduled", "deferred", "created"}:
        return ""
    if status in {"finished", "failed", "stopped", "canceled"}:
        raise JobStateError(f"job {job_id} has already ended ({status}); nothing to cancel", field="job_id")
    return worker if status == "started" else ""


def refusal_error(job: NewJob, reply: str) -> AtomqError | None:
    """The error a refused job raises (``reply`` is its item of :data:`ENQUEUE`'s reply)."""
    if reply == "duplicate":
        return DuplicateJobError(
            f"a job with id {job.id!r} already exists; choose another id, or pass replace=True to replace it",
            field="job_id",
        )
    if reply == "running":
        return JobStateError(
            f"job {job.id} is running and cannot be replaced; cancel it first", field="job_id"
        )
    if reply.startswith("missing:"):
        return JobNotFoundError(f"depends_on names unknown jobs: {reply[8:]}", field="depends_on")
    return None
