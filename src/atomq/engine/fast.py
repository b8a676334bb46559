"""The fast worker: up to N jobs at once per process, claimed and recorded in batches.

RQ forks a process per job and spends ~58 Redis commands and a dozen round trips on it; its
``SimpleWorker`` skips the fork but not the rest, and both run one job at a time, so a job
waiting 200 ms on a platform holds the whole process. This worker:

* claims jobs into its own claimed list and marks them started in one script call, at most
  as many as it can start soon (``--concurrency``: jobs held at once), highest-priority queue
  first; a crash never loses them, and its supervisor hands them back at once;
* runs them concurrently (:mod:`atomq.engine.executor`): ``async def`` tasks on one event loop,
  tasks that wait on threads of their own, tasks that compute one after the other in the
  process's CPU lane (:mod:`atomq.engine.lanes`);
* records successes with the next claim, one round trip for many jobs, writing what RQ's
  worker writes where RQ's readers look (:mod:`atomq.engine.recorder`); failures go through
  :mod:`atomq.engine.outcomes`;
* enforces every job's time limit, and shares the running jobs and their kill times with its
  supervisor (:mod:`atomq.engine.slots`), which kills the process when one is deaf to its
  limit and hands the others back without using up an attempt.

One thread, the *dispatcher* (the process's main thread), owns claiming and recording; jobs
tell it they ended through a queue of events, as do the wake-up listener, stop commands and
signals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis
from redis.exceptions import NoScriptError
from rq.job import JobStatus
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException
from rq.utils import utcformat
from rq.version import VERSION

from atomq.core import keys
from atomq.core.connection import MAX_RECONNECT_BACKOFF_SECONDS, blocking_timeout, describe_client
from atomq.core.errors import JobStopped
from atomq.core.settings import Settings
from atomq.core.timeutil import rq_text, utcnow
from atomq.engine import hooks, pause, plugins
from atomq.engine.context import Running
from atomq.engine.executor import Completion, Executor, RunList
from atomq.engine.fast_scripts import FastScripts, pairs
from atomq.engine.jobs import AtomqJob, resolve_task
from atomq.engine.lanes import Profiles
from atomq.engine.leases import RENEW_SECONDS, Leases
from atomq.engine.process import set_process_title
from atomq.engine.recorder import Recorder
from atomq.engine.recovery import held_jobs
from atomq.engine.scripts import decode
from atomq.engine.slots import Slots
from atomq.engine.tasks import TaskRegistry, preload, registry
from atomq.engine.warmup import warm_up

logger = logging.getLogger("atomq.worker")

#: Seconds an idle worker waits for a wake-up token before looking at its queues again.
IDLE_POLL_SECONDS = 1.0

#: Jobs held in the CPU lane: about this much work (seconds of its jobs' average run).
BATCH_WINDOW_SECONDS = 0.02

#: Most jobs one claim takes.
MAX_BATCH = 64

#: How long a thread may hold the interpreter's lock while another waits for it (Python's
#: default is 5 ms). The dispatcher and the wake-up listener wait on Redis and must run the
#: moment it answers, while the CPU lane's thread runs job after job: at 5 ms, each hand-over
#: between them (listener to dispatcher to lane) could cost a full interval, and a job due
#: now started up to tens of milliseconds late under load. bench_engine --lateness-under-load
#: measured p99 5-10 ms at 1 ms against 8-18 ms at 5 ms, drain rates unchanged within noise.
GIL_SWITCH_SECONDS = 0.001

#: How long a stopping worker waits for its heartbeat thread's last call to Redis.
HEARTBEAT_JOIN_SECONDS = 2.0

#: Seconds within which a repeated shutdown signal counts as the first one (see _on_signal).
REPEAT_SIGNAL_SECONDS = 1.0

#: When a job has run this long, the jobs waiting behind it in its lane move on (to a free
#: thread, or back to the queue for other workers).
RELEASE_AFTER_SECONDS = 0.25

#: Worker hash TTL is this plus 60 s; heartbeats come every HEARTBEAT_SECONDS.
WORKER_TTL = 20
HEARTBEAT_SECONDS = 5.0

#: Margin added to a job's time limit for its entry in RQ's started registry.
REGISTRY_MARGIN = 60

#: Seconds a running job gets to stop after a stop request, or past its time limit, before
#: the worker gives up on it: records its end, and has its supervisor kill the process to get
#: the thread back. Shorter than the supervisor's own grace (executor.HARD_KILL_GRACE), which
#: is for a worker too stuck to do even that.
STOP_GRACE_SECONDS = 2.0
GIVE_UP_AFTER_SECONDS = 2.0

#: Longest a success waits to be recorded with others (and with the next claim).
RECORD_DELAY_SECONDS = 0.002

#: A worker with at least BUSY_LANES jobs running fills freed lanes and records successes at
#: most every BUSY_DELAY_SECONDS, unless BUSY_LANES lanes are free: one round trip then claims
#: and records several jobs, where every job end cost a round trip of its own (a fifth of a
#: post's CPU in a burst). A job waits that much longer to start only while the worker is
#: busy with many others; an idle worker claims and records at once, as before.
BUSY_LANES = 8
BUSY_DELAY_SECONDS = 0.02

#: How often the dispatcher looks at running jobs (time limits, slow lanes) while jobs run.
MONITOR_SECONDS = 0.05

# Events the dispatcher waits for (besides job ends, which land in a deque).
_WAKE, _SIGNAL, _STOP_JOB, _NUDGE, _LEASE_LOST = "wake", "signal", "stop-job", "nudge", "lease-lost"


class FastWorker:
    """A worker that runs up to ``concurrency`` jobs at once, RQ-compatible."""

    def __init__(
        self,
        queues: Sequence[str],
        *,
        connection: redis.Redis,
        settings: Settings,
        name: str | None = None,
        default_timeout: int | None = None,
        concurrency: int | None = None,
        slots: Slots | None = None,
        tasks: TaskRegistry | None = None,
    ) -> None:
        plugins.load("hooks")  # what the features follow at each step of a job (batches, progress)
        self.queues = list(queues)
        self.tasks = tasks if tasks is not None else registry  # the tasks this worker may run
        self.connection = connection
        self.settings = settings
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.default_timeout = default_timeout or settings.default_timeout
        self.concurrency = concurrency or settings.worker_concurrency
        self.slots = slots if slots is not None else Slots.create(self.concurrency)
        self.key = keys.worker_key(self.name)
        self.executions_key = f"{self.key}:executions"
        self.claimed_key = keys.claimed_key(self.name)
        self.queue_keys = [keys.queue_key(q) for q in self.queues]
        self.wake_keys = [keys.wake_key(q) for q in self.queues]
        self.pauses = pause.PauseWatch(connection, self.queues)  # paused queues are skipped
        self.scripts = FastScripts(connection)
        self.recorder = Recorder(connection, self.scripts, settings, self.name)
        self.leases = Leases(connection, settings.worker_lease_seconds)
        self.executor = Executor(
            connection=connection,
            slots=self.slots,
            default_timeout=self.default_timeout,
            memory_limit_mb=settings.job_memory_limit_mb,
            on_done=self._on_done,
            on_run_list_done=self._on_run_list_done,
        )
        self.profiles = Profiles()
        # Owned by the dispatcher (the heartbeat thread reads `held` under the lock).
        self.held: dict[str, Running] = {}  # claimed, not yet recorded: waiting or running
        self.run_lists: set[RunList] = set()
        self.cpu_lane: RunList | None = None
        self.async_running = 0
        self.pending: deque[Running] = deque()  # claimed, waiting for a free lane
        self.finished: list[Completion] = []
        self._finished_since = 0.0
        self._room_since: float | None = None  # when lanes freed up while busy (_claim_in)
        self.successful = 0
        self.failed = 0
        self.started_jobs = 0
        # Filled by other threads.
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.done: deque[Completion] = deque()
        self.ended_lists: deque[RunList] = deque()
        self._idle = False  # the dispatcher is blocked waiting for an event
        self._lock = threading.Lock()
        self._stopping = False  # warm shutdown: no new claims, running jobs finish
        self._lease_lost = False  # declared dead while cut off: see _on_lease_lost
        self._cold = False
        self._signals = 0
        self._first_signal_at: float | None = None
        self._want_claim = True  # the queues may hold jobs (last claim was full, or a wake-up)
        self._suspended = False  # `rq suspend`, checked by the background thread
        self._limits_checked_at = 0.0  # monotonic time held jobs were last checked (_monitor)
        self._background_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._waker_armed = threading.Event()
        self._pubsub: Any = None
        self._pubsub_thread: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def work(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Run jobs until stopped (or, with ``burst``, until the queues are empty). Returns how
        many jobs it started.

        A Redis outage never loses a job: the worker waits, then records what it could not and
        carries on with the jobs it holds (unless they were handed to someone else).
        """
        self._install_signals()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        # The heavy imports of the tasks this worker serves, before it takes any job: a burst of
        # posts due at 9:00 must not wait for the first one to import publishing's libraries
        # (about a second of import, holding the event loop). Tasks of queues it does not serve
        # cost nothing.
        served = [spec for spec in self.tasks if spec.queue in self.queues]
        preload(served)
        self.scripts.load()
        self.register_birth()
        self._start_background()
        # And what their first jobs would build (pools, clients, compiled queries): see warmup.
        warm_up(served, self.connection, lambda: self.executor.loop)
        set_process_title(f"atomq worker {self.name}: listening on {','.join(self.queues)}")
        logger.info(
            "Worker %s: started with PID %d, listening on %s (up to %d jobs at once)",
            self.name,
            os.getpid(),
            ", ".join(self.queues),
            self.concurrency,
        )
        try:
            while True:
                try:
                    if self._step(burst=burst, max_jobs=max_jobs):
                        break
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self.wait_for_redis(exc)
        finally:
            self.teardown()
        return self.started_jobs

    def _step(self, *, burst: bool, max_jobs: int | None) -> bool:
        """One turn of the dispatcher; True when the worker is done."""
        self._collect()
        self._monitor()
        limit_reached = max_jobs is not None and self.started_jobs >= max_jobs
        if self._stopping or limit_reached:
            if limit_reached and not self._stopping:
                logger.info(
                    "Worker %s: started %d jobs (--max-jobs); finishing", self.name, self.started_jobs
                )
                self._stopping = True
            self._give_back_waiting()
            if self.finished:
                self._round_trip(0)
            if not self.held:
                return True
            self._wait(MONITOR_SECONDS)
            return False
        want = self._claimable(max_jobs) if self._want_claim else 0
        claim_in = self._claim_in(want)
        if claim_in > 0:
            want = 0  # busy: gather more free lanes first
        record_in = self._record_in()
        if want or record_in <= 0:
            claimed = self._round_trip(want)
            if want:
                self._room_since = None
                self._want_claim = len(claimed) >= want
                self._dispatch(claimed)
            if claimed or not want:
                # Jobs started, or successes recorded (which frees room): look again at once.
                return False
        if burst and not self.held and not self._want_claim and not self.finished:
            return True
        if self._claimable(max_jobs) and not self._want_claim and not burst:
            self._waker_armed.set()  # listen for new jobs while there is room for them
        timeout = MONITOR_SECONDS if self.held else IDLE_POLL_SECONDS
        self._wait(
            min(timeout, record_in if self.finished else timeout, claim_in if claim_in > 0 else timeout)
        )
        return False

    def _record_in(self) -> float:
        """Seconds until the successes collected so far must be recorded (inf: none pending).

        Recording many at once is what makes a burst of quick jobs cheap; waiting at most
        :data:`RECORD_DELAY_SECONDS` keeps a job's status (and anyone waiting for its result)
        up to date.
        """
        if not self.finished:
            return float("inf")
        if len(self.finished) >= MAX_BATCH or len(self.held) <= len(self.finished):
            return 0.0  # a full batch, or nothing else runs: no reason to wait
        delay = BUSY_DELAY_SECONDS if self._busy() else RECORD_DELAY_SECONDS
        return self._finished_since + delay - time.monotonic()

    def _busy(self) -> bool:
        """Whether enough jobs run that freed lanes and successes are gathered (BUSY_LANES)."""
        return self._lanes_in_use() >= BUSY_LANES

    def _claim_in(self, want: int) -> float:
        """Seconds until ``want`` free lanes must be filled (0: now; see BUSY_LANES)."""
        if not want:
            self._room_since = None
            return float("inf")
        if want >= BUSY_LANES or not self._busy():
            return 0.0
        now = time.monotonic()
        if self._room_since is None:
            self._room_since = now
        return self._room_since + BUSY_DELAY_SECONDS - now

    def _lanes_in_use(self) -> int:
        """Jobs running at once: async jobs, thread lanes (the CPU lane counts once)."""
        return len(self.run_lists) + self.async_running

    def _claimable(self, max_jobs: int | None = None) -> int:
        """How many jobs to claim now: one per free lane (``--concurrency`` of them), plus what
        the CPU lane can start soon: about BATCH_WINDOW_SECONDS of its jobs, so a burst of quick
        jobs is claimed (and recorded) many at a time. None while the CPU lane still holds half
        a window: claimed then, more of the same would only wait."""
        if self._suspended or self._stopping:
            return 0
        lanes = self.concurrency - self._lanes_in_use() - len(self.pending)
        lane = self.cpu_lane
        backlog = len(lane) if lane is not None else 0
        quick = self.profiles.cpu_duration
        if backlog and quick * backlog >= BATCH_WINDOW_SECONDS / 2:
            return 0
        cpu_room = max(0, min(MAX_BATCH, int(BATCH_WINDOW_SECONDS / quick)) - backlog) if quick > 0 else 0
        room = max(0, lanes) + cpu_room
        if max_jobs is not None:
            room = min(room, max_jobs - self.started_jobs)
        return max(0, min(MAX_BATCH, room))

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
                    "concurrency": self.concurrency,
                },
            )
            pipe.expire(self.key, WORKER_TTL + 60)
            pipe.sadd(keys.RQ_WORKERS_SET, self.key)
            for queue_name in self.queues:
                pipe.sadd(f"{keys.RQ_WORKERS_SET}:{queue_name}", self.key)
            pipe.sadd(keys.WORKERS_SET, self.name)
            pipe.execute()
        self.leases.join(self.name)

    def teardown(self) -> None:
        """Record what ran, give back what did not, stop the threads, deregister."""
        self._background_stop.set()
        self._waker_armed.set()
        heartbeat = self._heartbeat_thread
        if heartbeat is not None and heartbeat is not threading.current_thread():
            # A heartbeat already on its way would mark the worker alive again after we mark it
            # dead below: let it land first. One round trip; the timeout only matters when
            # Redis does not answer, and then we cannot deregister anyway.
            heartbeat.join(timeout=HEARTBEAT_JOIN_SECONDS)
        with contextlib.suppress(Exception):
            if self._pubsub_thread is not None:
                self._pubsub_thread.stop()
            if self._pubsub is not None:
                self._pubsub.close()
        self.executor.shutdown()
        try:
            self._collect()
            if self.finished:
                self._round_trip(0)
            given = self._give_back_waiting() + self.recorder.give_back_all_claimed()
            with self.connection.pipeline() as pipe:
                pipe.srem(keys.RQ_WORKERS_SET, self.key)
                for queue_name in self.queues:
                    pipe.srem(f"{keys.RQ_WORKERS_SET}:{queue_name}", self.key)
                pipe.hset(self.key, mapping={"death": utcformat(utcnow()), "state": "dead"})
                pipe.expire(self.key, 60)
                pipe.delete(self.executions_key, self.claimed_key)
                pipe.srem(keys.WORKERS_SET, self.name)
                self.leases.leave(pipe, self.name)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("Worker %s: could not deregister, Redis unreachable (%s)", self.name, exc)
            return
        if given:
            logger.info("Worker %s: gave %d unstarted job(s) back to their queues", self.name, given)
        logger.info("Worker %s: stopped after %d ok, %d failed", self.name, self.successful, self.failed)

    # -- claiming and recording -----------------------------------------------------------

    def _round_trip(self, want: int) -> list[Running]:
        """Record the successes collected so far and claim up to ``want`` jobs from the queues
        not paused: one round trip."""
        finished = self.finished
        claimable = self.pauses.current()
        claim = want > 0 and bool(claimable.names)
        now = utcnow()
        claim_keys = [self.key, *claimable.queue_keys]
        claim_args = [
            want,
            self.name,
            rq_text(now),
            now.timestamp(),
            REGISTRY_MARGIN,
            self.default_timeout,
            len(keys.QUEUE_KEY_PREFIX),
            self.settings.worker_lease_seconds,
        ]

        def build(pipe: Any) -> None:
            if finished:
                self.recorder.queue_finished(pipe, finished)
            if claim:
                self.scripts.claim_start.queue(pipe, claim_keys, claim_args)
            elif not self.held:
                pipe.hset(self.key, "state", "idle")

        replies = self._pipeline(build)
        self.finished = []
        if any(reply == b"LEASE" for reply in replies):
            self._on_lease_lost(finished)
            return []
        if finished:
            self.recorder.after_finished(finished, replies[0])
            for item in finished:
                self._forget(item.running)
        if not claim:
            return []
        reply = replies[-1]
        claimed: list[Running] = []
        for index in range(0, len(reply), 3):
            job = AtomqJob(decode(reply[index + 1]), connection=self.connection)
            job.restore(pairs(reply[index + 2]))
            job.started_at = now
            job.worker_name = self.name
            job._status = JobStatus.STARTED
            running = Running(job, claimable.names[int(reply[index])])
            claimed.append(running)
            self.held[job.id] = running
        if claimed:
            self._hooks_started([r.job for r in claimed])
        return claimed

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

    def _forget(self, running: Running) -> None:
        with self._lock:
            self.held.pop(running.job.id, None)

    def _collect(self) -> None:
        """Take in the runs that ended: successes wait for the next round trip, failures are
        recorded now; lanes that ended are freed."""
        while self.ended_lists:
            run_list = self.ended_lists.popleft()
            self.run_lists.discard(run_list)
            if run_list is self.cpu_lane:
                self.cpu_lane = None
            self._want_claim = True
        while self.done:
            item = self.done.popleft()
            running = item.running
            job = running.job
            # A slot is free, and the job may have queued more work (a workflow's next steps).
            self._want_claim = True
            if running.task is not None:
                self.async_running -= 1
            if running.abandoned:
                logger.warning(
                    "Worker %s: job %s ended (%s) after it was given up on; not recorded again",
                    self.name,
                    job.id,
                    item.outcome,
                )
                continue
            # Async runs and runs in a child process say nothing of the task's use of the CPU.
            in_thread = running.task is None and not (job.suspect or job.spec.isolation == "fork")
            self.profiles.observe(job.func_name or "", item.duration, item.cpu if in_thread else None)
            if item.outcome == "ok":
                self.successful += 1
                if not self.finished:
                    self._finished_since = time.monotonic()
                self.finished.append(item)
                continue
            self.failed += 1
            self._record_failure(item)
            self._forget(running)
        self._start_pending()

    def _record_failure(self, item: Completion) -> None:
        """Record a failure, however long Redis is away: the job has run (or been stopped)."""
        retries_left = item.running.job.retries_left
        while True:
            try:
                self.recorder.record_failure(item)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                item.running.job.retries_left = retries_left
                self.wait_for_redis(exc)

    # -- dispatching ----------------------------------------------------------------------

    def _dispatch(self, claimed: list[Running]) -> None:
        """Start the claimed jobs where each belongs (see :mod:`atomq.engine.lanes`)."""
        unknown: dict[str, RunList] = {}
        for running in claimed:
            job = running.job
            if running.job.id not in self.held:
                continue  # stopped while it waited for a lane
            refusal = resolve_task(job, self.tasks)
            if refusal:
                self._forget(running)
                self.recorder.refuse(running, refusal)
                continue
            spec = job.spec
            forked = spec.isolation == "fork" or job.suspect
            if forked:
                preload([spec])  # once per process; the child starts with the imports done
            self.started_jobs += 1
            kind = "wait" if forked else self.profiles.kind(spec.name, is_async=spec.is_async)
            if (
                kind != "cpu"
                and self._lanes_in_use() >= self.concurrency
                and not (kind == "unknown" and spec.name in unknown)
            ):
                # No free lane: it starts when one frees (or goes back if that takes long).
                running.queued_at = time.monotonic()
                self.pending.append(running)
                self.started_jobs -= 1
                continue
            if kind == "async":
                self.async_running += 1
                self.executor.submit_async(running)
            elif kind == "cpu":
                if self.cpu_lane is None or not self.cpu_lane.append(running):
                    self.cpu_lane = RunList([running], cpu=True)
                    self._start_list(self.cpu_lane)
            elif kind == "unknown" and spec.name in unknown and unknown[spec.name].append(running):
                pass  # after the first job of a task not seen yet: its first run tells what it is
            else:
                run_list = RunList([running], learning=spec.name if kind == "unknown" else None)
                if kind == "unknown":
                    unknown[spec.name] = run_list
                self._start_list(run_list)

    def _start_pending(self) -> None:
        """Start jobs that waited for a lane, as lanes free up."""
        while self.pending and self._lanes_in_use() < self.concurrency:
            batch = [self.pending.popleft()]
            self._dispatch(batch)

    def _start_list(self, run_list: RunList) -> None:
        self.run_lists.add(run_list)
        self.executor.submit(run_list)

    def _monitor(self) -> None:
        """Time limits and stops of running jobs, and jobs waiting behind one that runs long."""
        now = time.monotonic()
        if self.pending and now - self.pending[0].queued_at >= RELEASE_AFTER_SECONDS:
            # No lane freed in time: other workers may have room for them.
            waiting = list(self.pending)
            self.pending.clear()
            self._hand_back(waiting)
        # Time limits and stops are kept to MONITOR_SECONDS; looking at every held job on
        # every turn (each job end is a turn) cost a burst of posts 3 % of its CPU.
        if now >= self._limits_checked_at + MONITOR_SECONDS:
            self._limits_checked_at = now
            self._check_limits(now)
        for run_list in list(self.run_lists):
            if run_list.learning is not None and len(run_list):
                kind = self.profiles.kind(run_list.learning, is_async=False)
                if kind == "wait":  # learnt: each of its jobs waits, so each gets a lane of its own
                    run_list.learning = None
                    self.pending.extendleft(reversed(run_list.take_waiting()))
                    now_ = time.monotonic()
                    for running in self.pending:
                        running.queued_at = running.queued_at or now_
                    self._start_pending()
                    continue
                if kind == "cpu":
                    run_list.learning = None
            current = run_list.current
            if not len(run_list) or current is None or current.elapsed < RELEASE_AFTER_SECONDS:
                continue
            waiting = run_list.take_waiting()
            if not waiting:
                continue
            if run_list.cpu:
                # They would wait behind a long computation: other workers can run them now.
                self.started_jobs -= len(waiting)
                given = self._hand_back(waiting)
                logger.debug(
                    "Worker %s: handed %d waiting job(s) back while a long job runs", self.name, given
                )
                continue
            now_ = time.monotonic()
            for running in waiting:  # a task not seen yet that waits: a lane each, as they free
                running.queued_at = now_
            self.pending.extend(waiting)
            self._start_pending()

    def _check_limits(self, now: float) -> None:
        """Stop the jobs past their time limit; give up on those that ignore a stop."""
        for running in list(self.held.values()):
            if running.phase != "task" or running.abandoned or not running.deadline:
                continue
            timed_out = now >= running.deadline
            if timed_out and running.task is None and running.stop_reason != "time limit":
                logger.warning(
                    "Worker %s: job %s outlived its time limit; stopping it", self.name, running.job.id
                )
                self.executor.stop(running, "time limit", timed_out=True)
            if running.stop_reason == "time limit" or (timed_out and not running.stop_at):
                give_up_at = running.deadline + GIVE_UP_AFTER_SECONDS
            elif running.stop_at:
                give_up_at = running.stop_at + STOP_GRACE_SECONDS
            else:
                continue
            if now >= give_up_at:
                self._give_up_on(running)

    def _give_up_on(self, running: Running) -> None:
        """A job did not stop (stuck in C code, or blocking the event loop): record its end
        here, then have the supervisor kill this process to get its thread back; the other
        jobs the process runs are handed back without using an attempt."""
        running.abandoned = True
        job = running.job
        timeout = float(job.timeout or self.default_timeout)
        if running.stop_reason in (None, "time limit"):
            error: BaseException = JobTimeoutException(
                f"Task exceeded maximum timeout value ({timeout:g} seconds) and did not stop; "
                "its worker process is killed"
            )
            outcome = "failed"
        else:
            error = JobStopped(f"job {job.id} stopped ({running.stop_reason}); its worker process is killed")
            outcome = "stopped"
        logger.error("Worker %s: job %s did not stop: %s", self.name, job.id, error)
        self.failed += 1
        self._record_failure(
            Completion(running, outcome, (error, _described(error)), utcnow(), running.elapsed)
        )
        self._forget(running)
        if running.slot >= 0:
            self.slots.expire(running.slot)

    def _give_back_waiting(self) -> int:
        """Return every claimed job not started yet (a warm shutdown)."""
        waiting: list[Running] = list(self.pending)
        self.pending.clear()
        for run_list in list(self.run_lists):
            waiting += run_list.take_waiting()
        return self._hand_back(waiting)

    def _hand_back(self, waiting: list[Running]) -> int:
        """Give claimed jobs that have not started back to their queues; how many went.

        When Redis cannot be reached they stay held, waiting for a lane (the caller took them
        out of where they waited): after the outage they start here or go back then, rather
        than sit marked ours with nothing to run them.
        """
        if not waiting:
            return 0
        try:
            given = self.recorder.give_back(waiting)
        except (redis.ConnectionError, redis.TimeoutError):
            now = time.monotonic()
            for running in waiting:
                running.queued_at = now
            self.pending.extendleft(reversed(waiting))
            raise
        for running in waiting:
            self._forget(running)
        return given

    # -- events from other threads --------------------------------------------------------

    def _on_done(self, completion: Completion) -> None:
        """A job ended (any thread)."""
        self.done.append(completion)
        if self._idle:
            self.events.put((_NUDGE, None))

    def _on_run_list_done(self, run_list: RunList) -> None:
        self.ended_lists.append(run_list)
        if self._idle:
            self.events.put((_NUDGE, None))

    def _wait(self, timeout: float) -> None:
        """Block until an event arrives (or ``timeout``), then handle every pending event."""
        self._idle = True
        try:
            if self.done or self.ended_lists:
                timeout = 0.0
            try:
                event = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
            except queue.Empty:
                return
            self._handle(event)
            while True:
                try:
                    self._handle(self.events.get_nowait())
                except queue.Empty:
                    return
        finally:
            self._idle = False

    def _handle(self, event: tuple[str, Any]) -> None:
        kind, value = event
        if kind == _WAKE:
            self._want_claim = True
        elif kind == _SIGNAL:
            self._on_signal_event()
        elif kind == _STOP_JOB:
            self._stop_job(value)
        elif kind == _LEASE_LOST:
            self._on_lease_lost([])

    # -- background: heartbeat, wake-ups, commands, signals -------------------------------

    def _start_background(self) -> None:
        self._heartbeat_thread = threading.Thread(
            target=self._background_loop, name="atomq-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()
        threading.Thread(target=self._waker_loop, name="atomq-waker", daemon=True).start()
        channel = keys.pubsub_channel(self.name)
        self._pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{channel: self._on_command})
        self._pubsub_thread = self._pubsub.run_in_thread(
            sleep_time=0.2, daemon=True, exception_handler=_pubsub_error
        )

    def _background_loop(self) -> None:
        last_beat = last_check = last_lease = time.monotonic()
        while not self._background_stop.wait(0.1):
            try:
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    suspended = bool(is_suspended(self.connection))
                    if suspended != self._suspended:
                        self._suspended = suspended
                        logger.info(
                            "Worker %s: %s", self.name, "suspended (rq suspend)" if suspended else "resumed"
                        )
                        self.events.put((_WAKE, None))
                if now - last_lease >= RENEW_SECONDS:
                    last_lease = now
                    if self.leases.renew([self.name]):
                        self.events.put((_LEASE_LOST, None))
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self.heartbeat()
            except redis.RedisError as exc:
                logger.debug("background work failed: %s", exc)

    def _waker_loop(self) -> None:
        """Listen for wake-up tokens while the worker has room for more jobs."""
        while not self._background_stop.is_set():
            if not self._waker_armed.wait(1.0):
                continue
            if self._background_stop.is_set():
                return
            try:
                wake_keys = self.pauses.current().wake_keys
                if wake_keys:
                    self.connection.blpop(
                        list(wake_keys), timeout=blocking_timeout(self.connection, IDLE_POLL_SECONDS)
                    )
                else:  # every queue paused: look again soon
                    time.sleep(pause.REFRESH_SECONDS)
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(1.0)
            except redis.RedisError as exc:
                logger.debug("wake-up listener: %s", exc)
            self._waker_armed.clear()
            self.events.put((_WAKE, None))

    def heartbeat(self) -> None:
        """Keep the worker, and the started-registry entries of its running jobs, alive."""
        now = utcnow()
        with self._lock:
            held = list(self.held.values())
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(
                self.key, mapping={"last_heartbeat": utcformat(now), "state": "busy" if held else "idle"}
            )
            pipe.expire(self.key, WORKER_TTL + 60)
            for running in held:
                job = running.job
                ttl = int(job.timeout or self.default_timeout) + REGISTRY_MARGIN
                # A long job keeps its registry entry alive, so no cleanup mistakes it for abandoned.
                pipe.zadd(
                    keys.started_key(running.queue),
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
        if hooks.command(self, payload, self._running_token, self._stop_now):
            return
        if command in ("stop-job", "kill-horse"):
            self.events.put((_STOP_JOB, payload.get("job_id")))

    def _running_token(self, job_id: str | None = None) -> tuple[str | None, object]:
        """The job ``job_id`` when it runs here (its id, and this run of it as a token)."""
        with self._lock:
            running = self.held.get(job_id) if job_id else None
        if running is None or running.phase != "task":
            return None, None
        return running.job.id, running

    def _stop_now(self, job_id: str) -> None:
        self.events.put((_STOP_JOB, job_id))

    def _stop_job(self, job_id: str | None) -> None:
        """Stop a job this worker holds: a waiting one never starts, a running one is stopped."""
        running = self.held.get(job_id) if job_id else None
        if running is None:
            logger.warning("Worker %s: not running job %s; stop ignored", self.name, job_id)
            return
        if running.phase == "waiting":
            for run_list in self.run_lists:
                with run_list.lock:
                    if running in run_list.items:
                        run_list.items.remove(running)
                        break
            else:
                return  # it is starting right now: stop it once it runs
            running.stop_reason = "on request"
            self.done.append(_stopped_before_start(running))
            return
        self.executor.stop(running, "on request")

    @property
    def lease_lost(self) -> bool:
        """Whether this worker stopped because it was declared dead (its lease ran out)."""
        return self._lease_lost

    def _on_lease_lost(self, finished: list[Completion]) -> None:
        """This worker was declared dead (its host was cut off or frozen past its lease) and its
        jobs were handed to other workers: nothing it holds is its own any more. Stop the
        running jobs (they run elsewhere), record nothing, and exit to be started afresh."""
        if self._lease_lost:
            return
        self._lease_lost = True
        held = list(self.held.values())
        logger.error(
            "Worker %s: lost its lease (declared dead while cut off or frozen); its %d job(s) were "
            "handed to other workers, so %d finished run(s) are not recorded and %d running job(s) "
            "are stopped; exiting to start afresh",
            self.name,
            len(held),
            len(finished),
            sum(1 for r in held if r.phase == "task"),
        )
        self._stopping = True
        self._cold = True
        for running in held:
            if running.phase == "task":
                running.abandoned = True
                self.executor.stop(running, "lease lost")
        with self._lock:
            self.held.clear()
        for run_list in list(self.run_lists):
            run_list.take_waiting()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal sent to the whole process group (Ctrl-C in a terminal, `kill -TERM -<pgid>`)
        # reaches this worker directly and again, moments later, relayed by its supervisor: as
        # RQ does, a repeat within REPEAT_SIGNAL_SECONDS of the first is the same request, not
        # the second one that asks for a cold shutdown (the supervisor waits longer than that
        # before relaying a real second one).
        now = time.monotonic()
        if self._first_signal_at is not None and now - self._first_signal_at < REPEAT_SIGNAL_SECONDS:
            return
        if self._first_signal_at is None:
            self._first_signal_at = now
        # Only queue it: the dispatcher acts on it between two steps.
        self.events.put((_SIGNAL, signum))

    def _on_signal_event(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self._stopping = True
            self._waker_armed.set()
            logger.info("Worker %s: warm shutdown requested (running jobs finish)", self.name)
            return
        if not self._cold:
            self._cold = True
            logger.warning("Worker %s: cold shutdown: stopping the running jobs", self.name)
            for running in list(self.held.values()):
                if running.phase == "task":
                    self.executor.stop(running, "worker shut down")

    # -- outages --------------------------------------------------------------------------

    def wait_for_redis(self, error: BaseException) -> None:
        """Block until Redis answers again (exponential backoff), then re-register and drop the
        waiting jobs that were handed to another worker meanwhile."""
        where = describe_client(self.connection)
        delay = 1.0
        logger.error(
            "Worker %s: Redis at %s unreachable (%s); retrying in %.0f s", self.name, where, error, delay
        )
        while not self._stopping or self.held:
            slept = 0.0
            while slept < delay:
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
        logger.info("Worker %s: Redis at %s is back; resuming", self.name, where)
        # The background thread may have recreated part of our hash; set membership tells
        # whether Redis still knows us.
        if not self.connection.sismember(keys.RQ_WORKERS_SET, self.key):
            self.register_birth(again=True)
        # A claim whose reply was lost to the outage left jobs marked ours that this worker never
        # saw: give them back (nothing ran them).
        unseen = {
            job_id: queue
            for job_id, queue in held_jobs(self.connection, self.name).items()
            if job_id not in self.held
        }
        if unseen:
            args = [self.name]
            for job_id, queue in unseen.items():
                args += [job_id, queue]
            given = int(self.scripts.revert([], args))
            logger.warning(
                "Worker %s: %d job(s) claimed as the outage began, never received, went back to their queues",
                self.name,
                given,
            )
        waiting = [r for r in self.held.values() if r.phase == "waiting"]
        if waiting:
            with self.connection.pipeline(transaction=False) as pipe:
                for running in waiting:
                    pipe.zscore(
                        keys.started_key(running.queue), keys.execution_member(running.job.id, self.name)
                    )
                still_ours = pipe.execute()
            lost = [r for r, ours in zip(waiting, still_ours, strict=True) if ours is None]
            if lost:
                # Given back by a call whose reply the outage lost, or handed on by a recovery.
                self.pending = deque(r for r in self.pending if r not in lost)
            for running in lost:
                for run_list in self.run_lists:
                    with run_list.lock:
                        if running in run_list.items:
                            run_list.items.remove(running)
                self._forget(running)
            if lost:
                logger.warning(
                    "Worker %s: %d claimed job(s) were handed to others during the outage",
                    self.name,
                    len(lost),
                )


def _stopped_before_start(running: Running) -> Completion:
    error = JobStopped(f"job {running.job.id} stopped on request before it ran")
    return Completion(running, "stopped", (error, _described(error)), utcnow(), 0.0)


def _described(error: BaseException) -> str:
    """An error as a failure Result keeps it: its type and message (it was not raised here)."""
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


def _pubsub_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
    if isinstance(exc, redis.ConnectionError):
        time.sleep(2)
        return
    logger.warning("stop-command listener stopped: %s", exc)
    raise exc
