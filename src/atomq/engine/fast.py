"""The fast worker: jobs run in a persistent process, one Redis round trip each.

RQ forks a process per job and spends ~58 Redis commands on it; its ``SimpleWorker`` skips the
fork but not the commands. This worker:

* claims a small batch of jobs in one script call (into its claimed list, so nothing is lost
  if it dies) and sizes the batch to the jobs' speed — many for quick jobs, one for slow ones,
  so a long job never sits on work another worker could do;
* runs each job in-process under a time limit (SIGALRM), and for jobs whose task asks for it
  (``isolation="fork"``) in a child process;
* records a job's end and the next job's start in one pipelined round trip, writing exactly
  what RQ's worker writes where RQ's readers look;
* publishes the deadline of the running job so the supervisor can kill a job stuck in C code
  that no signal interrupts, and hand it back for retry.

Failures, retries and dependents take RQ's own (slower, rarer) code paths.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.exceptions import DeserializationError
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.results import Result
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException
from rq.utils import utcformat
from rq.version import VERSION

from atomq.connection import blocking_timeout, describe_client
from atomq.engine import keys
from atomq.engine.fast_scripts import FastScripts, pairs
from atomq.engine.process import die_with_parent, set_process_title
from atomq.engine.queues import AtomqQueue
from atomq.engine.scripts import Scripts, decode
from atomq.errors import PermanentError, RetryableError, UnknownTaskError
from atomq.jobs import AtomqJob
from atomq.observability.logging import log_context
from atomq.settings import Settings
from atomq.tasks import registry
from atomq.timeutil import utcnow

logger = logging.getLogger("atomq.worker")

#: Seconds an idle worker waits for a wake-up token before looking at its queues again.
IDLE_POLL_SECONDS = 1.0

#: The claimed batch holds about this much work (seconds of average job time), at most
#: MAX_BATCH jobs: quick jobs come in batches, slow ones one at a time.
BATCH_WINDOW_SECONDS = 0.02
MAX_BATCH = 32

#: Worker hash TTL is this plus 60 s; heartbeats come every HEARTBEAT_SECONDS.
WORKER_TTL = 20
HEARTBEAT_SECONDS = 5.0

#: Seconds past a job's time limit after which the supervisor kills a worker whose job did
#: not respond to SIGALRM (stuck in C code).
HARD_KILL_GRACE = 5.0

#: Margin added to a job's time limit for its entry in RQ's started registry.
REGISTRY_MARGIN = 60

#: Longest wait between attempts to reach Redis again.
MAX_REDIS_BACKOFF_SECONDS = 30.0


class JobStopped(Exception):
    """Raised inside a running job when it is stopped on request."""


class WarmShutdown(Exception):
    """Raised to leave the loop when a stop was asked while idle."""


@dataclass
class Claimed:
    """A job taken off a queue by this worker, not started yet."""

    job: AtomqJob
    queue: str
    execution_id: str


@dataclass
class Finished:
    """A successful run whose end is still to be recorded (sent with the next job's start)."""

    job: AtomqJob
    queue: str
    execution_id: str
    started: Any
    value: Any
    duration: float


class FastWorker:
    """A worker that runs jobs in-process, RQ-compatible, with one round trip per job."""

    def __init__(
        self,
        queues: Sequence[str],
        *,
        connection: redis.Redis,
        settings: Settings,
        name: str | None = None,
        default_timeout: int | None = None,
        deadline: Any = None,
    ) -> None:
        self.queues = list(queues)
        self.connection = connection
        self.settings = settings
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.default_timeout = default_timeout or settings.default_timeout
        self.deadline = deadline  # a shared double the supervisor watches, or None
        self.key = keys.worker_key(self.name)
        self.executions_key = f"{self.key}:executions"
        self.claimed_key = keys.claimed_key(self.name)
        self.queue_keys = [keys.queue_key(q) for q in self.queues]
        self.wake_keys = [keys.wake_key(q) for q in self.queues]
        self.scripts = FastScripts(connection)
        self.common_scripts = Scripts(connection)
        self.buffer: deque[Claimed] = deque()
        self.current: AtomqJob | None = None
        self.child_pid: int | None = None
        self.current_entry: tuple[str, str, int] | None = None
        self.successful = 0
        self.failed = 0
        self._avg_duration = 0.0
        self._stop_requested = False
        self._signals = 0
        self._stop_job: str | None = None
        self._timer_armed = False
        self._heartbeat_stop = threading.Event()
        self._pubsub: Any = None
        self._pubsub_thread: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    def work(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty). Returns jobs run.

        A Redis outage never loses a job: the worker waits, then re-sends what it could not
        record and carries on with the jobs it had claimed.
        """
        self._install_signals()
        self.register_birth()
        self._start_background()
        set_process_title(f"atomq worker {self.name}: listening on {','.join(self.queues)}")
        logger.info(
            "Worker %s: started with PID %d, listening on %s", self.name, os.getpid(), ", ".join(self.queues)
        )
        done = 0
        pending: Finished | None = None  # the previous job's end, sent with the next start
        resume: Claimed | None = None  # a job whose start may not have reached Redis
        try:
            while not self._stop_requested:
                try:
                    if resume is None:
                        if not self.buffer:
                            self._flush(pending)
                            pending = None
                            if not self._refill(wait=not burst):
                                if burst:
                                    break
                                continue
                        resume = self.buffer.popleft()
                    claimed, resume = resume, None
                    try:
                        pending = self._run(claimed, pending)
                    except (redis.ConnectionError, redis.TimeoutError):
                        resume = claimed  # started or not, it has not run: try again after the outage
                        raise
                    done += 1
                    if max_jobs is not None and done >= max_jobs:
                        logger.info("Worker %s: ran %d jobs (--max-jobs), quitting", self.name, done)
                        break
                except WarmShutdown:
                    break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self.wait_for_redis(
                        exc, keep=[c.job.id for c in self.buffer] + ([resume.job.id] if resume else [])
                    )
        finally:
            try:
                self._flush(pending)
            except (redis.ConnectionError, redis.TimeoutError):
                logger.warning(
                    "Worker %s: could not record the last job's end (Redis unreachable)", self.name
                )
            self.buffer.clear()
            self.teardown()
        return done

    def register_birth(self, *, again: bool = False) -> None:
        """Register as RQ does (``rq:worker:<name>``, ``rq:workers``), plus atomq's worker set.

        ``again`` re-registers after Redis lost our registration (no clash check).
        """
        if not again and self.connection.exists(self.key) and not self.connection.hexists(self.key, "death"):
            raise ValueError(f"There exists an active worker named {self.name!r} already")
        now = utcformat(utcnow())
        with self.connection.pipeline() as pipe:
            pipe.delete(self.key, self.executions_key)
            pipe.hset(
                self.key,
                mapping={
                    "birth": now,
                    "last_heartbeat": now,
                    "queues": ",".join(self.queues),
                    "pid": os.getpid(),
                    "hostname": socket.gethostname(),
                    "ip_address": "unknown",
                    "version": VERSION,
                    "python_version": sys.version,
                    "state": "idle",
                    "worker_class": "atomq.engine.fast.FastWorker",
                },
            )
            pipe.expire(self.key, WORKER_TTL + 60)
            pipe.sadd(keys.RQ_WORKERS_SET, self.key)
            for queue in self.queues:
                pipe.sadd(f"{keys.RQ_WORKERS_SET}:{queue}", self.key)
            pipe.sadd(keys.WORKERS_SET, self.name)
            pipe.execute()

    def teardown(self) -> None:
        """Give back unstarted jobs, stop the background threads, deregister."""
        self._heartbeat_stop.set()
        with contextlib.suppress(Exception):
            if self._pubsub_thread is not None:
                self._pubsub_thread.stop()
                self._pubsub_thread.join(2)
            if self._pubsub is not None:
                self._pubsub.close()
        try:
            returned = self.common_scripts.return_claimed(
                keys=[self.claimed_key], args=[keys.JOB_KEY_PREFIX, keys.QUEUE_KEY_PREFIX]
            )
            with self.connection.pipeline() as pipe:
                pipe.srem(keys.RQ_WORKERS_SET, self.key)
                for queue in self.queues:
                    pipe.srem(f"{keys.RQ_WORKERS_SET}:{queue}", self.key)
                pipe.hset(self.key, "death", utcformat(utcnow()))
                pipe.expire(self.key, 60)
                pipe.delete(self.executions_key, self.claimed_key)
                pipe.srem(keys.WORKERS_SET, self.name)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("Worker %s: could not deregister, Redis unreachable (%s)", self.name, exc)
            return
        if returned:
            logger.info("Worker %s: returned %s unstarted job(s) to their queues", self.name, returned)
        logger.info("Worker %s: stopped after %d ok, %d failed", self.name, self.successful, self.failed)

    # -- claiming ---------------------------------------------------------------------------

    def _batch_size(self) -> int:
        if self._avg_duration <= 0:
            return 4
        return max(1, min(MAX_BATCH, int(BATCH_WINDOW_SECONDS / self._avg_duration)))

    def _refill(self, *, wait: bool) -> bool:
        """Claim a batch; when there is none, wait for a wake-up (unless ``wait`` is False)."""
        if is_suspended(self.connection):
            logger.info("Worker %s: suspended (rq suspend); waiting", self.name)
            time.sleep(1)
            return False
        reply = self.scripts.claim_batch(
            keys=[self.claimed_key, *self.queue_keys], args=[keys.JOB_KEY_PREFIX, self._batch_size()]
        )
        if not reply:
            self.connection.hset(self.key, "state", "idle")
            if wait:
                self.connection.blpop(
                    self.wake_keys, timeout=blocking_timeout(self.connection, IDLE_POLL_SECONDS)
                )
            return False
        for index in range(0, len(reply), 3):
            queue = self.queues[int(reply[index])]
            job_id = decode(reply[index + 1])
            job = AtomqJob(job_id, connection=self.connection)
            job.restore(pairs(reply[index + 2]))
            self.buffer.append(Claimed(job, queue, uuid.uuid4().hex))
        return True

    # -- running ----------------------------------------------------------------------------

    def _run(self, claimed: Claimed, pending: Finished | None) -> Finished | None:
        """Start ``claimed`` (sending the previous job's end along), run it, record a failure.

        Returns this job's end, still to be recorded, when it succeeded.
        """
        job, queue, execution_id = claimed.job, claimed.queue, claimed.execution_id
        refusal = _refusal(job)
        if refusal:
            self._flush(pending)
            self._refuse(job, refusal)
            return None
        timeout = job.timeout or self.default_timeout
        job.timeout = timeout
        started = utcnow()
        now = started.timestamp()
        ttl = int(timeout) + REGISTRY_MARGIN
        with self.connection.pipeline(transaction=False) as pipe:
            if pending is not None:
                self._queue_finish(pipe, pending)
            self.scripts.start(
                keys=[
                    job.key,
                    f"rq:wip:{queue}",
                    self.key,
                    self.executions_key,
                    f"rq:execution:{job.id}:{execution_id}",
                    f"rq:executions:{job.id}",
                    self.claimed_key,
                ],
                args=[job.id, execution_id, self.name, utcformat(started), now, now + ttl, ttl],
                client=pipe,
            )
            replies = pipe.execute()
        if pending is not None:
            self._after_finish(pending, replies[0])
        if not replies[-1]:
            logger.info("Worker %s: job %s was canceled or taken back before it started", self.name, job.id)
            return None
        job.started_at = started
        job.worker_name = self.name
        job._status = JobStatus.STARTED
        self.current_entry = (queue, execution_id, ttl)
        with log_context(job_id=job.id, task=job.func_name, queue=queue):
            logger.info("Worker %s: %s: %s (%s)", self.name, queue, job.description, job.id)
            clock = time.perf_counter()
            outcome, value = self._execute(job, timeout)
            duration = time.perf_counter() - clock
            self._avg_duration = (
                duration if self._avg_duration == 0 else 0.8 * self._avg_duration + 0.2 * duration
            )
            if outcome == "ok":
                self.successful += 1
                logger.info("Worker %s: %s: Job OK (%s) in %.3f s", self.name, queue, job.id, duration)
                return Finished(job, queue, execution_id, started, value, duration)
            self.failed += 1
            retries_left = job.retries_left
            while True:
                # The job has run: its failure must be recorded, however long Redis is away.
                try:
                    self._fail(job, queue, execution_id, started, value, outcome)
                    break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    job.retries_left = retries_left
                    self.wait_for_redis(exc, keep=[c.job.id for c in self.buffer] + [job.id])
                    if self._stop_requested:
                        break
        return None

    def _execute(self, job: AtomqJob, timeout: float) -> tuple[str, Any]:
        """Run the job; return ("ok", value) or (outcome, exc_info)."""
        spec = registry.get(job.func_name or "")
        if spec.isolation == "fork":
            from atomq.engine.isolation import run_forked

            forked: tuple[str, Any] = run_forked(self, job, timeout)
            return forked
        self.current = job
        self._stop_job = None
        if self.deadline is not None:
            self.deadline.value = time.monotonic() + timeout + HARD_KILL_GRACE
        signal.setitimer(signal.ITIMER_REAL, timeout)
        self._timer_armed = True
        try:
            value = job.perform()
        except BaseException as exc:  # a job's SystemExit must not end the worker
            self._disarm()
            outcome = "stopped" if isinstance(exc, JobStopped) else "failed"
            return outcome, (exc, "".join(traceback.format_exception(exc)))
        finally:
            self._disarm()
            self.current = None
            self.current_entry = None
            if self.deadline is not None:
                self.deadline.value = 0.0
        return "ok", value

    def _disarm(self) -> None:
        if self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._timer_armed = False

    # -- recording outcomes -----------------------------------------------------------------

    def _queue_finish(self, pipe: Any, pending: Finished) -> None:
        job, queue, execution_id = pending.job, pending.queue, pending.execution_id
        started, value, duration = pending.started, pending.value, pending.duration
        ended = utcnow()
        result_ttl = job.result_ttl if job.result_ttl is not None else self.settings.result_ttl
        encoded = ""
        if value is not None:
            try:
                payload = json.dumps(value).encode()
            except (TypeError, ValueError):
                payload = json.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD).encode()
            encoded = base64.b64encode(payload).decode()
        job.ended_at = ended
        self.scripts.finish_ok(
            keys=[
                job.key,
                f"rq:wip:{queue}",
                f"rq:finished:{queue}",
                Result.get_key(job.id),
                self.key,
                self.executions_key,
                f"rq:execution:{job.id}:{execution_id}",
                f"rq:executions:{job.id}",
                self.claimed_key,
                job.dependents_key,
                job.dependencies_key,
            ],
            args=[
                job.id,
                execution_id,
                self.name,
                utcformat(ended),
                result_ttl,
                encoded,
                started.timestamp(),
                ended.timestamp(),
                round(duration, 6),
                ended.timestamp() + result_ttl if result_ttl > 0 else 0,
            ],
            client=pipe,
        )

    def _flush(self, pending: Finished | None) -> None:
        """Send a pending finish on its own (no next job to pair it with)."""
        if pending is None:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            self._queue_finish(pipe, pending)
            reply = pipe.execute()[0]
        self._after_finish(pending, reply)

    def _after_finish(self, pending: Finished, dependents: Any) -> None:
        if dependents == -1:
            logger.warning(
                "Worker %s: job %s finished after it was handed to another worker; its end is not recorded",
                self.name,
                pending.job.id,
            )
        elif dependents:
            job, queue = pending.job, pending.queue
            try:
                job._status = JobStatus.FINISHED
                AtomqQueue(queue, connection=self.connection).enqueue_dependents(job)
            except redis.RedisError:
                logger.exception("Worker %s: could not enqueue dependents of %s", self.name, job.id)

    def _fail(
        self,
        job: AtomqJob,
        queue: str,
        execution_id: str,
        started: Any,
        error: tuple[BaseException, str],
        outcome: str,
    ) -> None:
        """Record a failed (or stopped) run through RQ's own failure paths: retry or fail."""
        exc, exc_string = error
        ended = utcnow()
        job.ended_at = ended
        stopped = outcome == "stopped"
        if isinstance(exc, PermanentError | UnknownTaskError):
            job.retries_left = 0
        elif isinstance(exc, RetryableError) and exc.delay is not None and job.should_retry:
            from atomq.engine.worker import _override_next_interval

            _override_next_interval(job, exc.delay)
        retry = job.should_retry and not stopped
        failure_ttl = job.failure_ttl or self.settings.failure_ttl
        level = logging.WARNING if retry else logging.ERROR
        logger.log(
            level,
            "Worker %s: job %s %s%s\n%s",
            self.name,
            job.id,
            outcome,
            " (will retry)" if retry else "",
            exc_string.rstrip(),
        )
        aq = AtomqQueue(queue, connection=self.connection)
        with self.connection.pipeline() as pipe:
            Result.create_failure(
                job,
                failure_ttl,
                exc_string=exc_string,
                worker_name=self.name,
                pipeline=pipe,
                execution_id=execution_id,
                execution_started_at=started,
                execution_ended_at=ended,
            )
            if retry:
                job.retry(aq, pipe)
            else:
                job.set_status(JobStatus.STOPPED if stopped else JobStatus.FAILED, pipeline=pipe)
                job.save(pipeline=pipe, include_meta=False, include_result=False)
                pipe.zadd(f"rq:failed:{queue}", {job.id: ended.timestamp() + failure_ttl})
                pipe.expire(job.key, failure_ttl)
            self._end_execution(pipe, job, queue, execution_id)
            pipe.hincrby(self.key, "failed_job_count", 1)
            pipe.execute()
        if not retry:
            with contextlib.suppress(redis.RedisError):
                if self.connection.scard(job.dependents_key):
                    aq.enqueue_dependents(job)

    def _end_execution(self, pipe: Any, job: AtomqJob, queue: str, execution_id: str) -> None:
        member = f"{job.id}:{execution_id}"
        pipe.zrem(f"rq:wip:{queue}", member)
        pipe.delete(f"rq:execution:{job.id}:{execution_id}")
        pipe.zrem(f"rq:executions:{job.id}", execution_id)
        pipe.srem(self.executions_key, member)
        pipe.lrem(self.claimed_key, -1, job.id)

    def _refuse(self, job: AtomqJob, reason: str) -> None:
        logger.error("Worker %s: refusing job %s: %s", self.name, job.id, reason)
        with self.connection.pipeline() as pipe:
            record_job_failure(job, f"Refused by worker {self.name}: {reason}", pipe)
            pipe.lrem(self.claimed_key, -1, job.id)
            pipe.execute()

    # -- background: heartbeat, stop commands, signals --------------------------------------

    def _start_background(self) -> None:
        threading.Thread(target=self._heartbeat_loop, name="atomq-heartbeat", daemon=True).start()
        channel = f"rq:pubsub:{self.name}"
        self._pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{channel: self._on_command})
        self._pubsub_thread = self._pubsub.run_in_thread(
            sleep_time=0.2, daemon=True, exception_handler=_pubsub_error
        )

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                logger.debug("heartbeat failed: %s", exc)

    def heartbeat(self) -> None:
        """Keep the worker (and a long job's started-registry entry) alive."""
        now = utcnow()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, "last_heartbeat", utcformat(now))
            pipe.expire(self.key, WORKER_TTL + 60)
            pipe.expire(self.executions_key, WORKER_TTL + 60)
            job, entry = self.current, self.current_entry
            if job is not None and entry is not None:
                queue, execution_id, ttl = entry
                pipe.hset(job.key, "last_heartbeat", utcformat(now))
                # A long job keeps its started-registry entry alive, so no cleanup mistakes it
                # for abandoned.
                pipe.zadd(f"rq:wip:{queue}", {f"{job.id}:{execution_id}": now.timestamp() + ttl}, xx=True)
                pipe.expire(f"rq:execution:{job.id}:{execution_id}", ttl)
            pipe.execute()

    def _on_command(self, message: dict[str, Any]) -> None:
        try:
            payload = json.loads(message["data"])
        except (ValueError, TypeError):
            return
        command = payload.get("command")
        if command == "shutdown":
            logger.info("Worker %s: shutdown command received", self.name)
            os.kill(os.getpid(), signal.SIGTERM)
        elif command in ("stop-job", "kill-horse"):
            job = self.current
            wanted = payload.get("job_id")
            if job is not None and (wanted is None or wanted == job.id):
                self._stop_job = job.id
                # Python runs signal handlers in the main thread, where the job runs.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            else:
                logger.warning("Worker %s: not running job %s; stop ignored", self.name, wanted)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR1, self._on_stop_job)
        signal.signal(signal.SIGTERM, self._on_shutdown)
        signal.signal(signal.SIGINT, self._on_shutdown)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.current is not None and self._timer_armed:
            self._timer_armed = False
            timeout = self.current.timeout
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({timeout} seconds)")

    def _on_stop_job(self, signum: int, frame: FrameType | None) -> None:
        job = self.current
        if job is not None and self._stop_job == job.id:
            raise JobStopped(f"job {job.id} stopped on request")

    def _on_shutdown(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop_requested = True
        if self._signals == 1:
            logger.info("Worker %s: warm shutdown requested (running job finishes)", self.name)
            if self.current is None:
                raise WarmShutdown
            return
        logger.warning("Worker %s: cold shutdown: stopping the running job", self.name)
        if self.current is not None:
            self._stop_job = self.current.id
            raise JobStopped("worker shut down while the job ran")
        raise WarmShutdown

    # -- outages ----------------------------------------------------------------------------

    def wait_for_redis(self, error: BaseException, keep: list[str]) -> None:
        """Block until Redis answers again (exponential backoff), re-register, and give back any
        claimed job this worker no longer holds in memory (``keep`` lists those it does)."""
        where = describe_client(self.connection)
        delay = 1.0
        logger.error(
            "Worker %s: Redis at %s unreachable (%s); retrying in %.0f s", self.name, where, error, delay
        )
        while not self._stop_requested:
            time.sleep(delay)
            try:
                self.connection.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = min(delay * 2, MAX_REDIS_BACKOFF_SECONDS)
                logger.warning(
                    "Worker %s: Redis still unreachable (%s); retrying in %.0f s", self.name, exc, delay
                )
        if self._stop_requested:
            return
        logger.info("Worker %s: Redis at %s is back; resuming", self.name, where)
        # The heartbeat thread may have recreated part of our hash already; set membership
        # tells whether Redis still knows us.
        if not self.connection.sismember(keys.RQ_WORKERS_SET, self.key):
            self.register_birth(again=True)
        # A claim whose reply was lost left jobs in our list that we do not know about.
        listed = [decode(job_id) for job_id in self.connection.lrange(self.claimed_key, 0, -1)]
        strays = [job_id for job_id in listed if job_id not in set(keep)]
        if strays:
            self.scripts.return_ids(
                keys=[self.claimed_key], args=[keys.JOB_KEY_PREFIX, keys.QUEUE_KEY_PREFIX, *strays]
            )


def _pubsub_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
    if isinstance(exc, redis.ConnectionError):
        time.sleep(2)
        return
    logger.warning("stop-command listener stopped: %s", exc)
    raise exc


def _refusal(job: AtomqJob) -> str | None:
    """Why ``job`` must not run (undecodable payload, unregistered task), or ``None``."""
    try:
        name = job.func_name
    except DeserializationError:
        return "its payload is not JSON (atomq never unpickles job data)"
    try:
        registry.get(name or "")
    except UnknownTaskError as exc:
        return str(exc)
    return None


def child_setup() -> None:
    """For processes forked to isolate one job: die with the worker."""
    die_with_parent()
