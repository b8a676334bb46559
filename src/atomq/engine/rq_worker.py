"""atomq's worker: RQ's forking worker, made to survive and to lose nothing.

It keeps RQ's execution model (a work-horse process per job, time limits, stop commands,
registries, results) and fixes where RQ loses or delays jobs:

* **Reliable multi-queue dequeue.** RQ pops with BLPOP when a worker listens on several
  queues, so a crash right after the pop loses the job. Here one Lua script moves the job
  from the highest-priority non-empty queue into the worker's *claimed* list; the
  supervisor (or the scheduler's reaper) returns claimed jobs of a dead worker.
* **Redis outages.** RQ exits when Redis stops answering mid-loop. This worker waits with
  exponential backoff, re-registers itself when Redis comes back and carries on.
* **Orphaned work-horses.** A horse whose worker was SIGKILLed is killed with it, so a job is
  never run by an orphan while the supervisor hands it to another worker.
* **Retry control from task code.** :class:`~atomq.core.errors.PermanentError` fails a job without
  using its retries; :class:`~atomq.core.errors.RetryableError` may set the next delay. Every failed
  attempt is kept as a Result, so the job's status shows the last error even while a retry
  is pending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import redis
from rq.command import handle_stop_job_command, parse_payload
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import Worker as RQWorker
from rq.worker import WorkerStatus

from atomq.core import keys
from atomq.core.connection import MAX_RECONNECT_BACKOFF_SECONDS, blocking_timeout, describe_client
from atomq.core.logging import job_log_fields, log_context
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.engine import hooks, outcomes, pause, plugins, stats
from atomq.engine.jobs import AtomqJob, resolve_task
from atomq.engine.process import die_with_parent, limit_memory
from atomq.engine.queues import AtomqQueue
from atomq.engine.scripts import Scripts, decode
from atomq.engine.tasks import TaskRegistry, preload, registry

logger = logging.getLogger("atomq.worker")

#: Seconds an idle worker waits for a wake-up token before looking at its queues again. Jobs
#: queued by atomq wake it at once; jobs pushed by other RQ clients are seen within this time.
IDLE_POLL_SECONDS = 1.0

#: RQ's worker TTL: the worker hash expires this long (+60 s) after the last heartbeat, which
#: is when the reaper treats a silent worker as dead and recovers its jobs.
WORKER_TTL = 20

#: Seconds between heartbeats while a job runs (RQ's job monitoring interval).
JOB_MONITORING_INTERVAL = 10

#: Longest wait of the command listener between two looks at its stop flag.
PUBSUB_POLL_SECONDS = 1.0

#: Seconds between heartbeats while idle.
IDLE_HEARTBEAT_SECONDS = 5.0


class Worker(RQWorker):
    """RQ's forking worker with reliable dequeue, Redis-outage survival and retry control."""

    queue_class = AtomqQueue  # type: ignore[assignment]
    job_class = AtomqJob
    log_result_lifespan = False

    def __init__(
        self,
        queues: Sequence[str],
        *,
        connection: redis.Redis,
        settings: Settings,
        name: str | None = None,
        default_timeout: int | None = None,
        idle_poll: float = IDLE_POLL_SECONDS,
        tasks: TaskRegistry | None = None,
    ) -> None:
        plugins.load("hooks")  # what the features follow at each step of a job (batches, progress)
        self.tasks = tasks if tasks is not None else registry  # the tasks this worker may run
        # Read by RQ's constructor (through connection_timeout), so set before it runs.
        self.settings = settings
        self.default_job_timeout = default_timeout or settings.default_timeout
        self.idle_poll = idle_poll
        self._failure_exc: BaseException | None = None
        self._job_in_hand: Job | None = None  # for the statistics hooks below
        self._failure_outcome: str | None = None
        self._heartbeat_at = 0.0
        super().__init__(
            list(queues),
            name=name,
            connection=connection,
            serializer=JSONSerializer,
            job_class=AtomqJob,
            queue_class=AtomqQueue,
            default_result_ttl=settings.result_ttl,
            worker_ttl=WORKER_TTL,
            job_monitoring_interval=JOB_MONITORING_INTERVAL,
        )
        self.scripts = Scripts(connection)
        self.claimed_key = keys.claimed_key(self.name)
        # Work-horses are forked per job: import what tasks need once, here, not in every horse.
        preload()
        self.wake_keys = [keys.wake_key(q.name) for q in self.queues]
        self.pauses = pause.PauseWatch(connection, [q.name for q in self.queues])  # issue 15

    @property
    def connection_timeout(self) -> int:
        # RQ raises the socket timeout above its long BLPOP; atomq never blocks that long.
        return int(self.settings.redis_socket_timeout)

    # -- registration -----------------------------------------------------------------------

    def register_birth(self) -> None:
        super().register_birth()
        self.connection.sadd(keys.WORKERS_SET, self.name)
        self._heartbeat_at = time.monotonic()

    def register_death(self) -> None:
        super().register_death()
        self.connection.srem(keys.WORKERS_SET, self.name)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        self._heartbeat_at = time.monotonic()

    def teardown(self) -> None:
        try:
            # A stop can land between claiming a job and starting it: give such jobs back.
            returned = self.scripts.return_claimed(
                keys=[self.claimed_key], args=[keys.JOB_KEY_PREFIX, keys.QUEUE_KEY_PREFIX]
            )
            if returned:
                self.log.info("Worker %s: returned %s unstarted job(s) to their queues", self.name, returned)
            super().teardown()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.log.warning("Worker %s: could not deregister, Redis unreachable (%s)", self.name, exc)

    # -- the loop ---------------------------------------------------------------------------

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = None,
        max_jobs: int | None = None,
        **_: Any,
    ) -> bool:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty).

        Unlike RQ's loop this one never exits because Redis went away: it waits for it.
        """
        self.bootstrap(logging_level)
        self._install_signal_handlers()
        completed = 0
        try:
            while True:
                try:
                    self.check_for_suspension(burst)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    if self._stop_requested:
                        self.log.info("Worker %s: stopping on request", self.name)
                        break
                    claimed = self.claim_next(wait=not burst)
                    if claimed is None:
                        if burst:
                            self.log.info("Worker %s: queues empty, quitting (burst)", self.name)
                            break
                        continue
                    job, queue = claimed
                    self.execute_job(job, queue)
                    self.heartbeat()
                    completed += 1
                    if max_jobs is not None and completed >= max_jobs:
                        self.log.info("Worker %s: ran %d jobs (--max-jobs), quitting", self.name, completed)
                        break
                except StopRequested:
                    break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self.wait_for_redis(exc)
                except Exception:
                    self.log.exception("Worker %s: unexpected error; carrying on in 1 s", self.name)
                    time.sleep(1)
        finally:
            self.teardown()
        return bool(completed)

    def claim_next(self, *, wait: bool) -> tuple[Job, Queue] | None:
        """Claim the next job from the highest-priority non-empty queue, or wait for a wake-up."""
        if self.get_state() != WorkerStatus.IDLE:
            self.set_state(WorkerStatus.IDLE)
            self.procline("Listening on " + ",".join(self.queue_names()))
        if time.monotonic() - self._heartbeat_at > IDLE_HEARTBEAT_SECONDS:
            self.heartbeat()
        while True:
            claimable = self.pauses.current()  # issue 15: paused queues are neither claimed nor waited on
            reply = (
                self.scripts.claim(keys=[self.claimed_key, *claimable.queue_keys], args=[keys.JOB_KEY_PREFIX])
                if claimable.names
                else None
            )
            if not reply:
                if wait and claimable.names:
                    self.connection.blpop(
                        claimable.wake_keys, timeout=blocking_timeout(self.connection, self.idle_poll)
                    )
                elif wait:
                    time.sleep(pause.REFRESH_SECONDS)
                return None
            queue_key, job_id = decode(reply[0]), decode(reply[1])
            try:
                job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:
                self.connection.lrem(self.claimed_key, -1, job_id)
                continue
            assert isinstance(job, AtomqJob)  # job_class is AtomqJob
            refusal = resolve_task(job, self.tasks)
            if refusal:
                self._refuse(job, refusal)
                continue
            break
        queue = self.queue_class.from_queue_key(
            queue_key, connection=self.connection, job_class=self.job_class, serializer=self.serializer
        )
        if job.timeout is None:
            job.timeout = self.default_job_timeout
        job.redis_server_version = self.get_redis_server_version()
        self.log.info(
            "Worker %s: %s: %s (%s)",
            self.name,
            queue.name,
            job.description,
            job.id,
            extra=job_log_fields(job, queue.name),
        )
        return job, queue

    def _refuse(self, job: AtomqJob, reason: str) -> None:
        """Fail a job that must not run, without running anything of it."""
        self.log.error("Worker %s: refusing job %s: %s", self.name, job.id, reason)
        with self.connection.pipeline() as pipeline:
            outcomes.record_refusal(pipeline, job, reason, self.name)
            pipeline.lrem(self.claimed_key, -1, job.id)
            pipeline.execute()

    def wait_for_redis(self, error: BaseException) -> None:
        """Block until Redis answers again, backing off exponentially; then re-register."""
        where = describe_client(self.connection)
        delay = 1.0
        self.log.error(
            "Worker %s: Redis at %s unreachable (%s); retrying in %.0f s", self.name, where, error, delay
        )
        while True:
            time.sleep(delay)
            try:
                self.connection.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = min(delay * 2, MAX_RECONNECT_BACKOFF_SECONDS)
                self.log.warning(
                    "Worker %s: Redis still unreachable (%s); retrying in %.0f s", self.name, exc, delay
                )
        self.log.info("Worker %s: Redis at %s is back; resuming", self.name, where)
        if not self.connection.sismember(keys.RQ_WORKERS_SET, self.key):
            # Redis lost our registration (restart without persistence, or it expired).
            self.connection.delete(self.key)
            self.register_birth()
            self.set_state(WorkerStatus.IDLE)

    # -- execution --------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._job_in_hand = job
        with log_context(**job_log_fields(job, queue.name)):
            super().execute_job(job, queue)

    def prepare_execution(self, job: Job) -> Execution:
        """Record the execution, mark the job started and drop it from the claimed list, atomically.

        RQ marks the job started only inside the work-horse; a worker dying in between would
        leave a job that no registry cleanup recognises as abandoned.
        """
        with self.connection.pipeline() as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            pipeline.lrem(self.claimed_key, -1, job.id)
            hooks.started([job], pipeline)
            stats.job_started(pipeline, job)
            pipeline.execute()
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # The claimed list replaced RQ's intermediate queue; nothing to remove from it here.
        super().prepare_job_execution(job, remove_from_intermediate_queue=False)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent()
        limit_memory(self.settings.job_memory_limit_mb)
        hooks.running(job, self.connection)
        super().main_work_horse(job, queue)

    def handle_payload(self, message: Any) -> None:
        if not hooks.command(self, parse_payload(message), self._running, self._stop_now):
            super().handle_payload(message)

    def subscribe(self) -> None:
        """Listen for commands as RQ does, but wake every second: redis-py 8.2 made stopping
        the listener wait for its current read, and RQ's 60 s read made a burst worker hang
        for up to a minute at exit."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ types it None
            sleep_time=PUBSUB_POLL_SECONDS, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _running(self, job_id: str | None = None) -> tuple[str | None, object]:
        """The running job's id, and its execution as the token of this run of it (one job
        at a time: ``job_id`` only has to match it)."""
        current = self.get_current_job_id()
        if job_id is not None and current != job_id:
            return None, None
        return current, getattr(getattr(self, "execution", None), "id", None)

    def _stop_now(self, job_id: str) -> None:
        handle_stop_job_command(self, {"job_id": job_id})

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution
    ) -> None:
        super().handle_job_success(job, queue, started_job_registry, execution)
        hooks.ended_now(self.connection, job, _status_text(job))

    def _finalize_failure(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    ) -> None:
        self._failure_exc = exc_info[1]
        try:
            super()._finalize_failure(job, queue, execution, exc_info)
        finally:
            self._failure_exc = None

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """Record a failed, stopped or deferred run through :mod:`atomq.engine.outcomes`, as the
        fast worker does (RQ's own version retries with ``Job.retry``, which writes the new
        status outside the pipeline that records the failure)."""
        assert isinstance(job, AtomqJob)  # job_class is AtomqJob
        exc = self._failure_exc
        stopped = self._stopped_job_id == job.id
        self._stopped_job_id = None
        judgement = outcomes.judge(job, exc, stopped=stopped)
        aq = AtomqQueue(queue.name, connection=self.connection)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            if judgement.verdict == "deferred":
                self.log.info(
                    "Worker %s: job %s deferred by %.1f s: %s", self.name, job.id, judgement.delay, exc
                )
                outcomes.record_deferral(pipe, job, aq, judgement.delay)
                pipe.execute()
                return
            outcomes.record_failure(
                pipe,
                job,
                aq,
                judgement,
                exc_string=exc_string,
                worker_name=self.name,
                execution_id=execution.id if execution else None,
                started=execution.created_at if execution else job.started_at,
                ended=job.ended_at or utcnow(),
                failure_ttl=job.failure_ttl or self.settings.failure_ttl,
            )
            self._failure_outcome = judgement.verdict
            try:
                self.increment_failed_job_count(pipe)
            finally:
                self._failure_outcome = None
            if job.started_at and job.ended_at:
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            try:
                pipe.execute()
            except redis.RedisError:
                self.log.exception("Worker %s: could not record the failure of job %s", self.name, job.id)
                return
        if judgement.final:
            outcomes.enqueue_dependents(aq, job)

    # RQ calls these two in the pipeline that records a job's end: the statistics ride along.
    def increment_successful_job_count(self, pipeline: Any = None) -> None:
        super().increment_successful_job_count(pipeline)
        if self._job_in_hand is not None:
            stats.job_ended(self._stats_pipe(pipeline), self._job_in_hand, "finished")

    def increment_failed_job_count(self, pipeline: Any = None) -> None:
        super().increment_failed_job_count(pipeline)
        if self._job_in_hand is not None:
            stats.job_ended(self._stats_pipe(pipeline), self._job_in_hand, self._failure_outcome or "failed")

    def _stats_pipe(self, pipeline: Any) -> Any:
        # An empty pipeline is falsy (it has a length), hence no `pipeline or ...`.
        return pipeline if pipeline is not None else self.connection


def _status_text(job: Job) -> str:
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status))
