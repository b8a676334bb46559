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
    return f"{RQ_KEY_PREFIX}:deferred:{queue}"


def canceled_key(queue: str) -> str:
    """RQ's CanceledJobRegistry of ``queue``."""
    return f"{RQ_KEY_PREFIX}:canceled:{queue}"


def pubsub_channel(worker_name: str) -> str:
    """The channel RQ's workers listen on for commands (``stop-job``, ``shutdown``)."""
    return f"{RQ_KEY_PREFIX}:pubsub:{worker_name}"


def queue_key(queue: str) -> str:
    """RQ's list holding the ids of queued jobs."""
    return f"{QUEUE_KEY_PREFIX}{queue}"


def job_key(job_id: str) -> str:
    """RQ's hash holding a job."""
    return f"{JOB_KEY_PREFIX}{job_id}"


def scheduled_key(queue: str) -> str:
    """RQ's ScheduledJobRegistry zset for ``queue`` (atomq scores it with sub-second precision)."""
    return f"{RQ_KEY_PREFIX}:scheduled:{queue}"


def wake_key(queue: str) -> str:
    """A short list of wake-up tokens: pushed when jobs land on ``queue``, popped by idle workers.

    Tokens are hints, not jobs: losing one only means an idle worker notices new work at its
    next poll instead of at once.
    """
    return f"{PREFIX}:wake:{queue}"


def claimed_key(worker_name: str) -> str:
    """Jobs a worker has taken off a queue but not yet started (its in-flight list)."""
    return f"{PREFIX}:claimed:{worker_name}"


def worker_key(worker_name: str) -> str:
    """RQ's hash describing a worker (expires when its heartbeats stop)."""
    return f"{RQ_KEY_PREFIX}:worker:{worker_name}"


#: Batches not yet complete, scored by creation time (the reconciler walks it).
ACTIVE_BATCHES = f"{PREFIX}:batches:active"


def batch_key(batch_id: str) -> str:
    """The hash describing a batch (task, queue, total, times, state)."""
    return f"{PREFIX}:batch:{batch_id}"


def bits_key(batch_id: str, outcome: str) -> str:
    """The bitmap of items that reached ``outcome`` (or ``started``)."""
    return f"{PREFIX}:batch:{batch_id}:{outcome}"
