"""Redis keys atomq adds next to RQ's own (``rq:queue:*``, ``rq:job:*``, registries...).

RQ's keys keep RQ's layout so the stock ``rq`` CLI and rq-dashboard read an atomq Redis;
the keys below hold only what RQ has no place for.
"""

from __future__ import annotations

from rq.defaults import RQ_KEY_PREFIX

#: Prefix of every atomq-specific key.
PREFIX = "atomq"

#: Job hashes, as RQ names them.
JOB_KEY_PREFIX = f"{RQ_KEY_PREFIX}:job:"

#: Queue lists, as RQ names them.
QUEUE_KEY_PREFIX = f"{RQ_KEY_PREFIX}:queue:"

#: Scheduled registries (zsets of job ids scored by due time), as RQ names them.
SCHEDULED_KEY_PREFIX = f"{RQ_KEY_PREFIX}:scheduled:"

#: Deferred registries (jobs waiting for their dependencies), as RQ names them.
DEFERRED_KEY_PREFIX = f"{RQ_KEY_PREFIX}:deferred:"

#: Canceled registries, as RQ names them.
CANCELED_KEY_PREFIX = f"{RQ_KEY_PREFIX}:canceled:"

#: Results streams (one per job: an entry per ended attempt), as RQ names them.
RESULTS_KEY_PREFIX = f"{RQ_KEY_PREFIX}:results:"

#: Wake-up token lists, one per queue (see :func:`wake_key`).
WAKE_KEY_PREFIX = f"{PREFIX}:wake:"

#: Set of every queue key (RQ's ``rq:queues``).
QUEUES_SET = f"{RQ_KEY_PREFIX}:queues"

#: RQ's set of live worker keys.
RQ_WORKERS_SET = f"{RQ_KEY_PREFIX}:workers"

#: Names of live atomq workers; a name whose ``rq:worker:<name>`` hash has expired belongs to a
#: dead worker whose jobs the reaper must recover.
WORKERS_SET = f"{PREFIX}:workers"

#: Holds the name of the scheduler currently moving due jobs (with an expiry, refreshed).
SCHEDULER_LEADER = f"{PREFIX}:scheduler:leader"

#: Pushed to when a job is scheduled, so a sleeping scheduler wakes before its next known due time.
SCHEDULER_WAKE = f"{PREFIX}:scheduler:wake"

#: Hash of queue name -> epoch seconds since which the queue is paused (issue 15): workers
#: skip a paused queue; the scheduler still moves due jobs onto it.
PAUSED_QUEUES = f"{PREFIX}:paused"

#: Hash of scheduler name -> "host pid started_at" for every running scheduler (leader or standby).
SCHEDULERS = f"{PREFIX}:schedulers"


#: Prefix of RQ's keys (``rq``): queues, jobs, registries, workers.
RQ_PREFIX = RQ_KEY_PREFIX


def started_key(queue: str) -> str:
    """RQ's StartedJobRegistry of ``queue``: executions (``<job id>:<worker or execution>``)
    scored by the time they are given up for dead."""
    return f"{RQ_KEY_PREFIX}:wip:{queue}"


def execution_member(job_id: str, worker_name: str) -> str:
    """A fast worker's entry in :func:`started_key` for a job it runs (its execution is named
    after the worker)."""
    return f"{job_id}:{worker_name}"


def finished_key(queue: str) -> str:
    """RQ's FinishedJobRegistry of ``queue``, scored by expiry."""
    return f"{RQ_KEY_PREFIX}:finished:{queue}"


def failed_key(queue: str) -> str:
    """RQ's FailedJobRegistry of ``queue``, scored by expiry."""
    return f"{RQ_KEY_PREFIX}:failed:{queue}"


def deferred_key(queue: str) -> str:
    """RQ's DeferredJobRegistry of ``queue`` (jobs waiting for their dependencies)."""
    return f"{DEFERRED_KEY_PREFIX}{queue}"


def canceled_key(queue: str) -> str:
    """RQ's CanceledJobRegistry of ``queue``."""
    return f"{CANCELED_KEY_PREFIX}{queue}"


def pubsub_channel(worker_name: str) -> str:
    """The channel RQ's workers listen on for commands (``stop-job``, ``shutdown``)."""
    return f"{RQ_KEY_PREFIX}:pubsub:{worker_name}"


#: Worker leases: worker name -> when its lease runs out (Redis's clock; atomq.engine.leases).
LEASES = f"{PREFIX}:leases"


def left_key(worker_name: str) -> str:
    """Marks a worker that gave its lease up on a clean exit, so no renewal takes it again."""
    return f"{PREFIX}:left:{worker_name}"


def dead_key(worker_name: str) -> str:
    """A worker's tombstone: its lease ran out and its jobs were handed on (an hour)."""
    return f"{PREFIX}:dead:{worker_name}"


def running_key(worker_name: str) -> str:
    """The jobs a worker runs now, as its supervisor last saw them (a set)."""
    return f"{PREFIX}:running:{worker_name}"


#: Job hash field naming a job's group: jobs of one group run one at a time (atomq.engine.groups).
GROUP_FIELD = "atomq_group"

#: Groups that have jobs parked (waiting for the group's running job to end).
GROUPS_PARKED = f"{PREFIX}:groups:parked"


def group_running_key(group: str) -> str:
    """The job of ``group`` running now (a set, of one job)."""
    return f"{PREFIX}:group:{group}:running"


def group_parked_key(group: str) -> str:
    """Jobs of ``group`` claimed while another of the group ran: they wait here, in order."""
    return f"{PREFIX}:group:{group}:parked"


#: Job hash field set on a job that was running when its worker crashed beside others (which
#: of them crashed it is unknown): its next runs happen in a process of their own.
SUSPECT_FIELD = "atomq_suspect"


def queue_key(queue: str) -> str:
    """RQ's list holding the ids of queued jobs."""
    return f"{QUEUE_KEY_PREFIX}{queue}"


def job_key(job_id: str) -> str:
    """RQ's hash holding a job."""
    return f"{JOB_KEY_PREFIX}{job_id}"


def scheduled_key(queue: str) -> str:
    """RQ's ScheduledJobRegistry zset for ``queue`` (atomq scores it with sub-second precision)."""
    return f"{SCHEDULED_KEY_PREFIX}{queue}"


def results_key(job_id: str) -> str:
    """RQ's stream of a job's results: one entry per ended attempt (finished, failed, ...)."""
    return f"{RESULTS_KEY_PREFIX}{job_id}"


#: Suffix of the set of jobs waiting for a job (``rq:job:<id>:dependents``).
DEPENDENTS_SUFFIX = ":dependents"

#: What a job's key prefix becomes in its dependencies set. RQ builds that key as
#: ``rq:job:`` + ``:<id>:dependencies``, with a doubled colon; readers expect it so.
DEPENDENCIES_KEY_PREFIX = f"{JOB_KEY_PREFIX}:"

#: Suffix of a job's dependencies set.
DEPENDENCIES_SUFFIX = ":dependencies"


def dependents_key(job_id: str) -> str:
    """RQ's set of the jobs that wait for ``job_id`` to finish."""
    return f"{JOB_KEY_PREFIX}{job_id}{DEPENDENTS_SUFFIX}"


def dependencies_key(job_id: str) -> str:
    """RQ's set of the jobs ``job_id`` waits for (note RQ's doubled colon)."""
    return f"{DEPENDENCIES_KEY_PREFIX}{job_id}{DEPENDENCIES_SUFFIX}"


def wake_key(queue: str) -> str:
    """A short list of wake-up tokens: pushed when jobs land on ``queue``, popped by idle workers.

    Tokens are hints, not jobs: losing one only means an idle worker notices new work at its
    next poll instead of at once.
    """
    return f"{WAKE_KEY_PREFIX}{queue}"


def claimed_key(worker_name: str) -> str:
    """Jobs a worker has taken off a queue but not yet started (its in-flight list)."""
    return f"{PREFIX}:claimed:{worker_name}"


def worker_key(worker_name: str) -> str:
    """RQ's hash describing a worker (expires when its heartbeats stop)."""
    return f"{RQ_KEY_PREFIX}:worker:{worker_name}"


#: Batches not yet complete, scored by creation time (the reconciler walks it).
ACTIVE_BATCHES = f"{PREFIX}:batches:active"

#: Every batch whose record may still exist, scored by creation time (the dashboard's list);
#: entries older than the batch TTL are trimmed when a batch is created.
ALL_BATCHES = f"{PREFIX}:batches:all"


def batch_key(batch_id: str) -> str:
    """The hash describing a batch (task, queue, total, times, state)."""
    return f"{PREFIX}:batch:{batch_id}"


def bits_key(batch_id: str, outcome: str) -> str:
    """The bitmap of items that reached ``outcome`` (or ``started``)."""
    return f"{PREFIX}:batch:{batch_id}:{outcome}"
