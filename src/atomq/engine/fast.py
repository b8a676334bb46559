"""The fast worker: jobs run in a persistent process, a batch of them per Redis round trip.

RQ forks a process per job and spends ~58 Redis commands and a dozen round trips on it; its
``SimpleWorker`` skips the fork but not the rest. This worker:

* claims and starts a batch of jobs in one script call, into its claimed list, so nothing is
  lost if it dies; the batch holds about ``BATCH_WINDOW_SECONDS`` of work (many quick jobs,
  one slow one), and when a job runs long the jobs waiting behind it are handed back to the
  queue for other workers;
* runs each job in-process under a time limit (SIGALRM), or in a child process for tasks that
  ask for it (``isolation="fork"``);
* records the batch's successes with the next batch's claim in one pipelined round trip,
  writing exactly what RQ's worker writes where RQ's readers look;
* shares the id and deadline of the running job with its supervisor, which kills a job stuck
  in C code past its limit, and after a crash retries (or fails) only the job that was
  running and requeues the rest of the batch untouched.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis
from redis.exceptions import NoScriptError
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.job import JobStatus
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException
from rq.utils import utcformat
from rq.version import VERSION

from atomq.core import keys
from atomq.core.connection import MAX_RECONNECT_BACKOFF_SECONDS, blocking_timeout, describe_client
from atomq.core.errors import JobStopped
from atomq.core.logging import job_log_fields, log_context
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.engine import hooks, outcomes, plugins, stats
from atomq.engine.fast_scripts import FastScripts, pairs
from atomq.engine.isolation import run_forked
from atomq.engine.jobs import AtomqJob, error_summary, resolve_task
from atomq.engine.process import set_process_title
from atomq.engine.queues import AtomqQueue
from atomq.engine.scripts import Scripts, decode
from atomq.engine.tasks import TaskRegistry, preload, registry

logger = logging.getLogger("atomq.worker")

#: Seconds an idle worker waits for a wake-up token before looking at its queues again.
IDLE_POLL_SECONDS = 1.0

#: A batch holds about this much work (seconds of average job time), at most MAX_BATCH jobs.
BATCH_WINDOW_SECONDS = 0.02
MAX_BATCH = 64

#: When a job has run this long, the jobs claimed behind it go back to the queue.
RELEASE_AFTER_SECONDS = 0.25

#: Worker hash TTL is this plus 60 s; heartbeats come every HEARTBEAT_SECONDS.
WORKER_TTL = 20
HEARTBEAT_SECONDS = 5.0

#: Seconds past a job's time limit after which the supervisor kills a worker whose job did
#: not respond to SIGALRM (stuck in C code).
HARD_KILL_GRACE = 5.0

#: Margin added to a job's time limit for its entry in RQ's started registry.
REGISTRY_MARGIN = 60


#: Bytes of shared memory holding the running job's id (job ids are at most 128 characters).
RUNNING_ID_BYTES = 160


@dataclass
class Claimed:
    """A job this worker claimed and marked started, not run yet."""

    job: AtomqJob
    queue: str


@dataclass
class Finished:
    """A successful run whose end is still to be recorded (sent with the next claim)."""

    claimed: Claimed
    started: Any
    ended: Any
    value: Any
    duration: float


@dataclass
class Shared:
    """Memory the worker shares with its supervisor: what runs now, and until when."""

    deadline: Any = None  # c_double: monotonic time by which the running job must end (0: idle)
    running: Any = None  # c_char array: id of the running job (empty: idle)
    jobs: Any = None  # c_long: jobs started since the process started (the supervisor resets it)

    def set(self, job_id: str, deadline: float) -> None:
        if self.running is not None:
            self.running.value = job_id.encode()[: RUNNING_ID_BYTES - 1]
        if self.deadline is not None:
            self.deadline.value = deadline
        if self.jobs is not None:
            self.jobs.value += 1

    def clear(self) -> None:
        if self.deadline is not None:
            self.deadline.value = 0.0
        if self.running is not None:
            self.running.value = b""


class FastWorker:
    """A worker that runs jobs in-process, RQ-compatible, a batch per round trip."""

    def __init__(
        self,
        queues: Sequence[str],
        *,
        connection: redis.Redis,
        settings: Settings,
        name: str | None = None,
        default_timeout: int | None = None,
        shared: Shared | None = None,
        tasks: TaskRegistry | None = None,
    ) -> None:
        plugins.load("hooks")  # what the features follow at each step of a job (batches, progress)
        self.queues = list(queues)
        self.tasks = tasks if tasks is not None else registry  # the tasks this worker may run
        self.connection = connection
        self.settings = settings
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.default_timeout = default_timeout or settings.default_timeout
        self.shared = shared or Shared()
        self.key = keys.worker_key(self.name)
        self.executions_key = f"{self.key}:executions"
        self.claimed_key = keys.claimed_key(self.name)
        self.queue_keys = [keys.queue_key(q) for q in self.queues]
        self.wake_keys = [keys.wake_key(q) for q in self.queues]
        self.scripts = FastScripts(connection)
        self.common_scripts = Scripts(connection)
        self.buffer: deque[Claimed] = deque()
        self.finished: list[Finished] = []
        self.current: Claimed | None = None
        self.current_started = 0.0
        self.child_pid: int | None = None
        self.successful = 0
        self.failed = 0
        self._avg_duration = 0.0
        self._stop_requested = False
        self._signals = 0
        self._stop_job: str | None = None
        self._stop_buffered: set[str] = set()
        self._timer_armed = False
        self._in_job = False  # True only while a job's own code runs (signals may raise then)
        self._suspended = False  # `rq suspend`, checked by the background thread, not per batch
        self._background_stop = threading.Event()
        self._lock = threading.Lock()
        self._pubsub: Any = None
        self._pubsub_thread: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    def work(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty). Returns jobs run.

        A Redis outage never loses a job: the worker waits, then records what it could not
        and carries on with the jobs it holds (unless they were handed to someone else).
        """
        self._install_signals()
        self.scripts.load()
        self.register_birth()
        self._start_background()
        set_process_title(f"atomq worker {self.name}: listening on {','.join(self.queues)}")
        logger.info(
            "Worker %s: started with PID %d, listening on %s", self.name, os.getpid(), ", ".join(self.queues)
        )
        done = 0
        try:
            while not self._stop_requested:
                try:
                    if not self.buffer and not self._next_batch(wait=not burst):
                        if burst:
                            break
                        continue
                    claimed = self._take()
                    if claimed is None:
                        continue
                    self._run(claimed)
                    done += 1
                    if max_jobs is not None and done >= max_jobs:
                        logger.info("Worker %s: ran %d jobs (--max-jobs), quitting", self.name, done)
                        break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self.wait_for_redis(exc)
        finally:
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
            if not again:
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
        """Record what ran, give back what did not, stop the background threads, deregister."""
        self._background_stop.set()
        with contextlib.suppress(Exception):
            if self._pubsub_thread is not None:
                self._pubsub_thread.stop()
                self._pubsub_thread.join(2)
            if self._pubsub is not None:
                self._pubsub.close()
        try:
            self._flush()
            self.buffer.clear()
            given = self._give_back_claimed()
            returned = self.common_scripts.return_claimed(
                keys=[self.claimed_key], args=[keys.JOB_KEY_PREFIX, keys.QUEUE_KEY_PREFIX]
            )
            with self.connection.pipeline() as pipe:
                pipe.srem(keys.RQ_WORKERS_SET, self.key)
                for queue in self.queues:
                    pipe.srem(f"{keys.RQ_WORKERS_SET}:{queue}", self.key)
                pipe.hset(self.key, mapping={"death": utcformat(utcnow()), "state": "dead"})
                pipe.expire(self.key, 60)
                pipe.delete(self.executions_key, self.claimed_key)
                pipe.srem(keys.WORKERS_SET, self.name)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("Worker %s: could not deregister, Redis unreachable (%s)", self.name, exc)
            return
        if given or returned:
            logger.info(
                "Worker %s: gave %d unstarted job(s) back to their queues", self.name, given + returned
            )
        logger.info("Worker %s: stopped after %d ok, %d failed", self.name, self.successful, self.failed)

    # -- claiming ---------------------------------------------------------------------------

    def _batch_size(self) -> int:
        if self._avg_duration <= 0:
            return 1  # nothing known yet: don't hold jobs another worker could run
        return max(1, min(MAX_BATCH, int(BATCH_WINDOW_SECONDS / self._avg_duration)))

    def _next_batch(self, *, wait: bool) -> bool:
        """Record the last batch's successes and claim the next batch, in one round trip.

        Without a new batch, wait for a wake-up (unless ``wait`` is False). Returns whether
        jobs were claimed.
        """
        if self._suspended:
            self._flush()
            logger.info("Worker %s: suspended (rq suspend); waiting", self.name)
            time.sleep(1)
            return False
        now = utcnow()
        claim_keys = [self.claimed_key, self.key, *self.queue_keys]
        claim_args = [
            self._batch_size(),
            self.name,
            utcformat(now),
            now.timestamp(),
            REGISTRY_MARGIN,
            self.default_timeout,
            len(keys.QUEUE_KEY_PREFIX),
        ]
        finished = self.finished

        def build(pipe: Any) -> None:
            if finished:
                self._queue_finish(pipe, finished)
            self.scripts.claim_start.queue(pipe, claim_keys, claim_args)

        replies = self._pipeline(build)
        self.finished = []
        if finished:
            self._after_finish(finished, replies[0])
        reply = replies[-1]
        if not reply:
            self.connection.hset(self.key, "state", "idle")
            if wait:
                self.connection.blpop(
                    self.wake_keys, timeout=blocking_timeout(self.connection, IDLE_POLL_SECONDS)
                )
            return False
        for index in range(0, len(reply), 3):
            job = AtomqJob(decode(reply[index + 1]), connection=self.connection)
            job.restore(pairs(reply[index + 2]))
            job.started_at = now
            job.worker_name = self.name
            job._status = JobStatus.STARTED
            self.buffer.append(Claimed(job, self.queues[int(reply[index])]))
        self._hooks_started([c.job for c in list(self.buffer)[-(len(reply) // 3) :]])
        return True

    def _hooks_started(self, jobs: list[AtomqJob]) -> None:
        """Tell the features these jobs started; their writes share one round trip (none when
        no feature wrote anything)."""
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                hooks.started(jobs, pipe)
                if len(pipe):
                    pipe.execute()
        except redis.RedisError:
            logger.exception(
                "Worker %s: could not record the start of %d job(s) for features", self.name, len(jobs)
            )

    def _take(self) -> Claimed | None:
        """The next claimed job to run, skipping ones stopped while they waited."""
        with self._lock:
            claimed = self.buffer.popleft() if self.buffer else None
            if claimed is None:
                return None
            self.current = claimed
            self.current_started = time.monotonic()
            stopped = claimed.job.id in self._stop_buffered
        if stopped:
            self._stop_buffered.discard(claimed.job.id)
            error = JobStopped(f"job {claimed.job.id} stopped on request before it ran")
            self._record_failure(claimed, utcnow(), (error, str(error)), "stopped")
            return None
        return claimed

    # -- running ----------------------------------------------------------------------------

    def _run(self, claimed: Claimed) -> None:
        """Run one claimed job; keep its success for the next round trip, record a failure now."""
        job, queue = claimed.job, claimed.queue
        refusal = resolve_task(job, self.tasks)
        if refusal:
            self.current = None
            self._refuse(claimed, refusal)
            return
        timeout = job.timeout or self.default_timeout
        job.timeout = timeout
        started = utcnow()
        with log_context(**job_log_fields(job, queue)):
            logger.debug("Worker %s: %s: %s (%s) started", self.name, queue, job.description, job.id)
            clock = time.perf_counter()
            outcome, value = self._execute(claimed, timeout)
            duration = time.perf_counter() - clock
            self._avg_duration = (
                duration if self._avg_duration == 0 else 0.8 * self._avg_duration + 0.2 * duration
            )
            if outcome == "ok":
                self.successful += 1
                logger.info(
                    "Worker %s: %s: Job OK: %s in %.3f s (%s)",
                    self.name,
                    queue,
                    job.description,
                    duration,
                    job.id,
                )
                self.finished.append(Finished(claimed, started, utcnow(), value, duration))
                return
            self.failed += 1
            self._record_failure(claimed, started, value, outcome)

    def _execute(self, claimed: Claimed, timeout: float) -> tuple[str, Any]:
        """Run the job; return ("ok", value) or (outcome, (exception, traceback text))."""
        job = claimed.job
        spec = job.spec
        self._stop_job = None
        self.shared.set(job.id, time.monotonic() + timeout + HARD_KILL_GRACE)
        try:
            if spec.isolation == "fork":
                preload([spec])  # once per process; the child starts with the imports done
                self._in_job = True
                forked: tuple[str, Any] = run_forked(self, job, timeout)
                return forked
            signal.setitimer(signal.ITIMER_REAL, timeout)
            self._timer_armed = True
            try:
                hooks.running(job, self.connection)
                self._in_job = True
                value = job.perform()
            except BaseException as exc:  # a job's SystemExit must not end the worker
                self._disarm()
                outcome = "stopped" if isinstance(exc, JobStopped) else "failed"
                return outcome, (exc, "".join(traceback.format_exception(exc)))
            finally:
                self._in_job = False
                self._disarm()
            return "ok", value
        finally:
            self._in_job = False
            hooks.returned(job)
            with self._lock:
                self.current = None
            self.shared.clear()

    def _disarm(self) -> None:
        if self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._timer_armed = False

    # -- recording outcomes -----------------------------------------------------------------

    def _pipeline(self, build: Callable[[Any], None]) -> list[Any]:
        """Build and send one pipeline (one round trip); reload the scripts after a NOSCRIPT."""
        for attempt in (1, 2):
            with self.connection.pipeline(transaction=False) as pipe:
                build(pipe)
                try:
                    replies: list[Any] = pipe.execute()
                    return replies
                except NoScriptError:
                    if attempt == 2:
                        raise
                    self.scripts.load()
        raise AssertionError("unreachable")

    def _queue_finish(self, pipe: Any, finished: list[Finished]) -> None:
        args: list[Any] = [self.name]
        for item in finished:
            job, claimed = item.claimed.job, item.claimed
            result_ttl = job.result_ttl if job.result_ttl is not None else self.settings.result_ttl
            encoded = ""
            if item.value is not None:
                try:
                    payload = json.dumps(item.value).encode()
                except (TypeError, ValueError):
                    payload = json.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD).encode()
                encoded = base64.b64encode(payload).decode()
            ended = item.ended.timestamp()
            args += [
                job.id,
                claimed.queue,
                utcformat(item.started),
                utcformat(item.ended),
                result_ttl,
                encoded,
                item.started.timestamp(),
                ended,
                round(item.duration, 6),
                ended + result_ttl if result_ttl > 0 else 0,
            ]
        self.scripts.finish_many.queue(pipe, [self.key, self.claimed_key], args)
        hooks.ended([(item.claimed.job, "finished") for item in finished], pipe)
        tally = stats.Tally()
        for item in finished:
            job = item.claimed.job
            late = item.started.timestamp() - job.due_at if job.due_at is not None else None
            tally.add(
                queue=item.claimed.queue,
                task=job.func_name,
                outcome="finished",
                duration=item.duration,
                late=late,
            )
        tally.write(pipe)

    def _flush(self) -> None:
        """Record pending successes on their own (no claim to pair them with)."""
        finished = self.finished
        if not finished:
            return
        replies = self._pipeline(lambda pipe: self._queue_finish(pipe, finished))
        self.finished = []
        self._after_finish(finished, replies[0])

    def _after_finish(self, finished: list[Finished], replies: list[Any]) -> None:
        for item, dependents in zip(finished, replies, strict=True):
            job = item.claimed.job
            if dependents == -1:
                logger.warning(
                    "Worker %s: job %s ran after it was handed to another worker; its end is not recorded",
                    self.name,
                    job.id,
                )
            elif dependents:
                try:
                    job._status = JobStatus.FINISHED
                    AtomqQueue(item.claimed.queue, connection=self.connection).enqueue_dependents(job)
                except redis.RedisError:
                    logger.exception("Worker %s: could not enqueue dependents of %s", self.name, job.id)

    def _record_failure(
        self, claimed: Claimed, started: Any, error: tuple[BaseException, str], outcome: str
    ) -> None:
        """Record a failure, however long Redis is away: the job has run (or been stopped)."""
        retries_left = claimed.job.retries_left
        while True:
            try:
                self._fail(claimed, started, error, outcome)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                claimed.job.retries_left = retries_left
                self.wait_for_redis(exc)
                if self._stop_requested:
                    return

    def _fail(self, claimed: Claimed, started: Any, error: tuple[BaseException, str], outcome: str) -> None:
        """Record a failed (or stopped) run: retried, deferred, failed or stopped (see
        :mod:`atomq.engine.outcomes`)."""
        job, queue = claimed.job, claimed.queue
        exc, exc_string = error
        judgement = outcomes.judge(job, exc, stopped=outcome == "stopped")
        aq = AtomqQueue(queue, connection=self.connection)
        self._flush()  # successes before this failure keep their order
        member = keys.execution_member(job.id, self.name)
        if judgement.verdict == "deferred":
            logger.info("Worker %s: job %s deferred by %.1f s: %s", self.name, job.id, judgement.delay, exc)
            with self.connection.pipeline() as pipe:
                outcomes.record_deferral(pipe, job, aq, judgement.delay)
                pipe.zrem(keys.started_key(queue), member)
                pipe.lrem(self.claimed_key, 1, job.id)
                pipe.execute()
            return
        ended = utcnow()
        retry = judgement.verdict == "retried"
        logger.log(
            logging.WARNING if retry else logging.ERROR,
            "Worker %s: job %s %s%s: %s\n%s",
            self.name,
            job.id,
            "stopped" if judgement.verdict == "stopped" else "failed",
            " (will retry)" if retry else "",
            error_summary(exc_string),
            exc_string.rstrip(),
        )
        with self.connection.pipeline() as pipe:
            outcomes.record_failure(
                pipe,
                job,
                aq,
                judgement,
                exc_string=exc_string,
                worker_name=self.name,
                execution_id=self.name,
                started=started,
                ended=ended,
                failure_ttl=job.failure_ttl or self.settings.failure_ttl,
            )
            pipe.zrem(keys.started_key(queue), member)
            pipe.lrem(self.claimed_key, 1, job.id)
            pipe.hincrby(self.key, "failed_job_count", 1)
            tally = stats.Tally()
            tally.add(
                queue=queue,
                task=job.func_name,
                outcome=judgement.verdict,
                duration=(ended - started).total_seconds(),
                late=started.timestamp() - job.due_at if job.due_at is not None else None,
            )
            tally.write(pipe)
            pipe.execute()
        if judgement.final:
            with contextlib.suppress(redis.RedisError):
                if self.connection.scard(job.dependents_key):
                    outcomes.enqueue_dependents(aq, job)

    def _refuse(self, claimed: Claimed, reason: str) -> None:
        job = claimed.job
        logger.error("Worker %s: refusing job %s: %s", self.name, job.id, reason)
        with self.connection.pipeline() as pipe:
            outcomes.record_refusal(pipe, job, reason, self.name)
            pipe.zrem(keys.started_key(claimed.queue), keys.execution_member(job.id, self.name))
            pipe.lrem(self.claimed_key, 1, job.id)
            pipe.execute()

    def _give_back_claimed(self) -> int:
        """Return every job still in the claimed list that this worker started but did not run.

        Covers the buffer and anything claimed whose reply never reached the buffer.
        """
        ids = [decode(job_id) for job_id in self.connection.lrange(self.claimed_key, 0, -1)]
        if not ids:
            return 0
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job_key(job_id), "origin")
            origins = pipe.execute()
        args = [self.name]
        for job_id, origin in zip(ids, origins, strict=True):
            if origin is not None:
                args += [job_id, decode(origin)]
        return int(self.scripts.revert([self.claimed_key], args)) if len(args) > 1 else 0

    def _give_back(self, claimed: list[Claimed]) -> int:
        """Return started-but-not-run jobs to the front of their queues."""
        if not claimed:
            return 0
        args = [self.name, *(value for c in claimed for value in (c.job.id, c.queue))]
        return int(self.scripts.revert([self.claimed_key], args))

    # -- background: heartbeat, fairness, stop commands, signals ----------------------------

    def _start_background(self) -> None:
        threading.Thread(target=self._background_loop, name="atomq-background", daemon=True).start()
        channel = keys.pubsub_channel(self.name)
        self._pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{channel: self._on_command})
        self._pubsub_thread = self._pubsub.run_in_thread(
            sleep_time=0.2, daemon=True, exception_handler=_pubsub_error
        )

    def _background_loop(self) -> None:
        last_beat = last_check = time.monotonic()
        while not self._background_stop.wait(0.1):
            try:
                self._release_if_slow()
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    self._suspended = bool(is_suspended(self.connection))
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self.heartbeat()
            except redis.RedisError as exc:
                logger.debug("background work failed: %s", exc)

    def _release_if_slow(self) -> None:
        """When the running job takes long, hand the jobs waiting behind it to other workers."""
        with self._lock:
            if self.current is None or not self.buffer:
                return
            if time.monotonic() - self.current_started < RELEASE_AFTER_SECONDS:
                return
            waiting = list(self.buffer)
            self.buffer.clear()
        given = self._give_back(waiting)
        logger.debug("Worker %s: handed %d waiting job(s) back while a long job runs", self.name, given)

    def heartbeat(self) -> None:
        """Keep the worker, and the running job's started-registry entry, alive."""
        now = utcnow()
        with self._lock:
            current = self.current
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, "last_heartbeat", utcformat(now))
            pipe.expire(self.key, WORKER_TTL + 60)
            if current is not None:
                job = current.job
                ttl = int(job.timeout or self.default_timeout) + REGISTRY_MARGIN
                pipe.hset(job.key, "last_heartbeat", utcformat(now))
                # A long job keeps its registry entry alive, so no cleanup mistakes it for abandoned.
                pipe.zadd(
                    keys.started_key(current.queue),
                    {keys.execution_member(job.id, self.name): now.timestamp() + ttl},
                    xx=True,
                )
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
            return
        if hooks.command(self, payload, self._running, self._stop_now):
            return
        if command not in ("stop-job", "kill-horse"):
            return
        wanted = payload.get("job_id")
        with self._lock:
            current = self.current
            waiting = {c.job.id for c in self.buffer}
        if current is not None and (wanted is None or wanted == current.job.id):
            self._stop_job = current.job.id
            # Python runs signal handlers in the main thread, where the job runs.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        elif wanted in waiting:
            self._stop_buffered.add(wanted)
        else:
            logger.warning("Worker %s: not running job %s; stop ignored", self.name, wanted)

    def _running(self) -> tuple[str | None, object]:
        current = self.current
        return (current.job.id, current) if current is not None else (None, None)

    def _stop_now(self, job_id: str) -> None:
        self._on_command({"data": json.dumps({"command": "stop-job", "job_id": job_id})})

    def _install_signals(self) -> None:
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGUSR1, self._on_stop_job)
        signal.signal(signal.SIGTERM, self._on_shutdown)
        signal.signal(signal.SIGINT, self._on_shutdown)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        current = self.current
        if current is not None and self._timer_armed:
            self._timer_armed = False
            raise JobTimeoutException(f"Task exceeded maximum timeout value ({current.job.timeout} seconds)")

    # Signal handlers raise only while a job's own code runs. Anywhere else (a Redis reply half
    # read, jobs claimed but not yet buffered) an exception would lose track of work; the loop
    # checks the stop flag instead, at most an idle poll (1 s) later.

    def _on_stop_job(self, signum: int, frame: FrameType | None) -> None:
        current = self.current
        if self._in_job and current is not None and self._stop_job == current.job.id:
            raise JobStopped(f"job {current.job.id} stopped on request")

    def _on_shutdown(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop_requested = True
        if self._signals == 1:
            logger.info("Worker %s: warm shutdown requested (running job finishes)", self.name)
            return
        logger.warning("Worker %s: cold shutdown: stopping the running job", self.name)
        if self._in_job and self.current is not None:
            self._stop_job = self.current.job.id
            raise JobStopped("worker shut down while the job ran")

    # -- outages ----------------------------------------------------------------------------

    def wait_for_redis(self, error: BaseException) -> None:
        """Block until Redis answers again (exponential backoff), then re-register and drop the
        claimed jobs that were handed to another worker meanwhile."""
        where = describe_client(self.connection)
        delay = 1.0
        logger.error(
            "Worker %s: Redis at %s unreachable (%s); retrying in %.0f s", self.name, where, error, delay
        )
        while not self._stop_requested:
            slept = 0.0
            while slept < delay and not self._stop_requested:  # stay responsive to SIGTERM
                time.sleep(0.2)
                slept += 0.2
            try:
                self.connection.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                delay = min(delay * 2, MAX_RECONNECT_BACKOFF_SECONDS)
                logger.warning(
                    "Worker %s: Redis still unreachable (%s); retrying in %.0f s", self.name, exc, delay
                )
        if self._stop_requested:
            return
        logger.info("Worker %s: Redis at %s is back; resuming", self.name, where)
        # The background thread may have recreated part of our hash; set membership tells
        # whether Redis still knows us.
        if not self.connection.sismember(keys.RQ_WORKERS_SET, self.key):
            self.register_birth(again=True)
        with self._lock:
            held = list(self.buffer)
        if held:
            with self.connection.pipeline(transaction=False) as pipe:
                for claimed in held:
                    member = keys.execution_member(claimed.job.id, self.name)
                    pipe.zscore(keys.started_key(claimed.queue), member)
                still_ours = pipe.execute()
            with self._lock:
                lost = {c.job.id for c, ours in zip(held, still_ours, strict=True) if ours is None}
                self.buffer = deque(c for c in self.buffer if c.job.id not in lost)
            if lost:
                logger.warning(
                    "Worker %s: %d claimed job(s) were handed to others during the outage",
                    self.name,
                    len(lost),
                )


def _pubsub_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
    if isinstance(exc, redis.ConnectionError):
        time.sleep(2)
        return
    logger.warning("stop-command listener stopped: %s", exc)
    raise exc
