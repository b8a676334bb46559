"""Scenario 9: a whole host is lost, and its jobs must run elsewhere within 5 s (issue 14).

Two hosts, simulated on this machine with network namespaces (``reliability.hosts``), each run
``atomq worker --count 2`` (two workers and a scheduler) against one Redis in the root
namespace; host A starts first, so its scheduler leads. In each round a scheduled post and
three jobs fall due at the same instant; A prefers the ``social_media`` queue and B ``default``,
so A takes the post and one job, B two jobs. Each job records its start in the ledger, works
``JOB_SECONDS`` and records its end; the post's publish takes as long at the fake Mastodon
(which, like Mastodon, keeps one status per ``Idempotency-Key``). A second after they started,
the fault hits A:

1. **killed**: SIGKILL to every process of A (the host dies and stays dead);
2. **frozen**: SIGSTOP to every process of A for ``OUTAGE_SECONDS``, then SIGCONT;
3. **cut off**: A's link down for ``OUTAGE_SECONDS``, then up again.

Short jobs enqueued at the fault show that B carries on meanwhile. For each job A held,
recovery is the time from the fault to its restart on another host (its next ``start`` in the
ledger; for the post, its job's first claim by a worker of B), or, when no other host ran it,
to the moment its outcome reached Redis (its ``rq:results`` entry): how long the job's owner
was out of reach. The figures: recovery p50/p99/max, jobs lost (must be 0), outcomes recorded
twice (two successful entries in one job's ``rq:results``; must be 0), posts published twice
(must be 0), and what A did when it came back: outcomes it recorded late, or that were
refused, and what it logged.

The issue's target is p99 recovery <= 5 s. Workers hold leases (``atomq.engine.leases``)
renewed by their host's supervisor every 0.5 s; a lease that runs out (3 s) is noticed by the
other host's supervisor, which hands the jobs back: the running ones as attempts (retried at
once), the others untouched. A worker that comes back after its lease ran out is refused any
claim or success, stops what it ran, and is restarted by its supervisor.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import reliability.tasks_hosts  # noqa: F401 - registers the task in this process (enqueue checks it)
from atomq import AtomqError
from reliability.hosts import unavailable
from reliability.hosts_support import (
    ClaimWatcher,
    Lab,
    Posts,
    job_worker,
    ledger_records,
    log_lines,
    message_shape,
    outcomes,
    percentile,
    warnings_by_shape,
)
from reliability.report import report
from reliability.tasks_hosts import WORK
from testkit.fakes.server import Plan
from testkit.sizes import size
from testkit.support import wait_for

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

#: The issue's target: p99 seconds from losing a host to its jobs running elsewhere.
TARGET_SECONDS = 5.0
#: Worker processes per host (``atomq worker --count 2``).
WORKERS = 2
#: Seconds each job works; the fault lands FAULT_AFTER seconds into A's jobs.
JOB_SECONDS = 3.0
FAULT_AFTER = 1.0
#: How long A stays frozen or cut off (the issue's 30 s; shorter in CI).
OUTAGE_SECONDS = float(size(12, 30))
#: Faults per scenario (a killed host is replaced by a new one for the next round).
ROUNDS = int(size(1, 3))
#: Queues in each host's order of preference: A takes the round's post first, B the jobs.
A_QUEUES = ("social_media", "default")
B_QUEUES = ("default", "social_media")
#: Jobs each of B's worker processes runs at once (A's run one each: see Lab.env).
B_CONCURRENCY = 4
#: Seconds from a round's start to the moment its post and long jobs fall due.
DUE_IN = 4.0
#: Short jobs enqueued at the fault: the surviving host must run them meanwhile.
EXTRA_JOBS = int(size(10, 30))
EXTRA_SECONDS = 0.2
#: Longest wait for a round's jobs to end: far above the lease (3 s) and a frozen or cut-off
#: host's outage, so a failure shows as figures rather than a timeout.
ROUND_TIMEOUT = 150.0
#: How long a returning host may take to show its workers registered again.
REJOIN_TIMEOUT = 30.0

SCENARIO_TIMEOUT = int(size(400, 1500))

#: Per scenario, the kwargs of report() (figures), kept for the tests.
KINDS = {"kill": "killed", "freeze": "frozen", "cut": "cut off"}


class TooSlow(AssertionError):
    """Recovery slower than the issue's target."""


@dataclass
class Round:
    """What one fault did."""

    index: int
    host: str  # the name of the host hit (A)
    fault_at: float
    returned_at: float | None
    leader: str | None
    jobs: dict[str, str] = field(default_factory=dict)  # key -> job id (the post's job: key "post")
    held: list[str] = field(default_factory=list)  # keys of the jobs A was running at the fault
    recovery: dict[str, float] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    a_ran_to_end: list[str] = field(default_factory=list)
    a_recorded: list[str] = field(default_factory=list)
    a_warnings: dict[str, int] = field(default_factory=dict)
    a_rejoined: bool | None = None
    a_restarts: int = 0
    post: dict[str, Any] = field(default_factory=dict)


def scheduler_leader(lab: Lab) -> str | None:
    """Who leads the schedulers (``atomq scheduler --json``)."""
    result = lab.cli("scheduler", "--json")
    if result.returncode != 0:
        return None
    leader: str | None = json.loads(result.stdout)["scheduler"]["leader"]
    return leader


def statuses(lab: Lab, job_ids: list[str]) -> dict[str, str]:
    """Each job's status (``get_job_status``), ``missing`` for a job Redis no longer has."""
    out = {}
    for job_id in job_ids:
        try:
            out[job_id] = lab.tq.get_job_status(job_id)["status"]
        except AtomqError:
            out[job_id] = "missing"
    return out


def run_round(lab: Lab, posts: Posts, kind: str, index: int, a: str) -> Round:
    """One fault: a post and long jobs fall due together, A takes the post and a job, the fault
    hits A mid-job, then every job of the round must end."""
    host = lab.hosts[a]
    log_path = Path(lab.supervisors[a].log_path)  # type: ignore[attr-defined]
    leader = scheduler_leader(lab)

    # The post and the long jobs fall due at one instant, so one scheduler pass queues them
    # all: A (social_media first) takes the post and one job, B (default first) two jobs.
    if "b" in lab.hosts:
        lab.hosts["b"].cleanup()  # B comes up again once A holds its share of the round
        del lab.hosts["b"]
    content = f"round {index}: a post in flight on host {a} when it is {KINDS[kind]}"
    posts.fake.plan(Plan(delay=JOB_SECONDS))  # the post's first publish takes as long as a job
    post = posts.create(content, datetime.now(UTC) + timedelta(seconds=DUE_IN))
    due = datetime.fromisoformat(post["scheduled_for"])
    keys = [f"r{index}-long-{i}" for i in range(2 * WORKERS - 1)]
    jobs = {key: lab.tq.enqueue_at(due, WORK, key=key, seconds=JOB_SECONDS).id for key in keys}
    jobs["post"] = post["job_id"]

    # A (one job per worker process) takes the post and one job; only then does B come up,
    # with room for many jobs: it takes the other two, and has room left to run A's jobs the
    # moment they are handed back (so the figure is the recovery, not B's queue).
    def a_holds_its_share() -> bool:
        a_started = {r.key for r in ledger_records(lab.ledger) if r.kind == "start" and r.host == a}
        return bool(a_started & set(keys)) and job_worker(lab.client, post["job_id"]).startswith(f"host-{a}-")

    wait_for(a_holds_its_share, DUE_IN + 60, 0.05, f"host {a} to take the post and a job")
    lab.start_host("b", WORKERS, *B_QUEUES, ATOMQ_WORKER_CONCURRENCY=str(B_CONCURRENCY), **posts.env)
    lab.wait_registered("b", WORKERS)

    def first_starts() -> dict[str, Any] | None:
        starts: dict[str, Any] = {}
        for record in ledger_records(lab.ledger):
            if record.kind == "start" and record.key in jobs:
                starts.setdefault(record.key, record)
        return starts if len(starts) == len(keys) else None

    starts = wait_for(first_starts, DUE_IN + 60, 0.05, "every job of the round to start")
    wait_for(lambda: posts.requests_for(content), 30, 0.05, "the post's publish to reach the platform")
    held = [key for key in keys if starts[key].host == a]
    if job_worker(lab.client, post["job_id"]).startswith(f"host-{a}-"):
        held.append("post")
    assert held, f"host {a} ran none of the round's jobs: {starts}"
    latest = max([starts[key].at for key in keys] + [posts.requests_for(content)[0].at])
    time.sleep(max(0.0, latest + FAULT_AFTER - time.time()))

    watcher = ClaimWatcher(lab.client, [jobs[key] for key in held], a).start()
    fault_at = time.time()
    if kind == "kill":
        host.kill_all()
    elif kind == "freeze":
        host.freeze()
    else:
        host.link_down()
    for i in range(EXTRA_JOBS):
        key = f"r{index}-extra-{i}"
        jobs[key] = lab.tq.enqueue(WORK, key=key, seconds=EXTRA_SECONDS).id

    returned_at = None
    if kind != "kill":
        time.sleep(max(0.0, fault_at + OUTAGE_SECONDS - time.time()))
        if kind == "freeze":
            host.thaw()
        else:
            host.link_up()
        returned_at = time.time()

    try:
        wait_for(
            lambda: set(statuses(lab, list(jobs.values())).values()) == {"finished"},
            ROUND_TIMEOUT,
            0.25,
            f"every job of round {index} to finish",
        )
    finally:
        claimed = watcher.stop()
    result = Round(index, a, fault_at, returned_at, leader, jobs, held)

    records = ledger_records(lab.ledger)
    for key in held:
        job_id = jobs[key]
        recorded = [o for o in outcomes(lab.client, job_id) if o.type == 1]
        if key == "post":  # no ledger: its first claim by another host, or the start of the
            # attempt another host recorded (a quick attempt may end between two polls)
            restarts = [claimed[job_id][0]] if job_id in claimed else []
            restarts += [
                o.started_at for o in recorded if not o.worker.startswith(f"host-{a}-") and o.started_at
            ]
        else:
            restarts = [
                r.at
                for r in records
                if r.key == key and r.kind == "start" and r.host != a and r.at > fault_at
            ]
            if any(r.key == key and r.kind == "done" and r.host == a and r.at > fault_at for r in records):
                result.a_ran_to_end.append(key)
        candidates = []
        if restarts:
            candidates.append((min(restarts), "restarted on another host"))
        if recorded:
            candidates.append((min(o.recorded_at for o in recorded), "outcome recorded, not restarted"))
        at, how = min(candidates)
        result.recovery[key] = at - fault_at
        result.how[key] = how
        if any(o.worker.startswith(f"host-{a}-") for o in recorded):
            result.a_recorded.append(key)

    view = posts.show(post["id"])
    result.post = {
        "held_by_a": "post" in held,
        "status": view["status"],
        "attempts": view["attempts"],
        "publish_requests": len(posts.requests_for(content)),
        # The posts layer's own recovery: a repeat of the publish (same Idempotency-Key) after
        # the fault, by the job's retry or by a job the reconciler queued for a lapsed lease.
        "resent_after_s": next(
            (round(r.at - fault_at, 2) for r in posts.requests_for(content) if r.at > fault_at), None
        ),
        "statuses_created": posts.statuses_for(content),
        "job_finished_by": next(
            (o.worker for o in outcomes(lab.client, post["job_id"]) if o.type == 1), None
        ),
    }
    if kind != "kill":
        try:
            wait_for(lambda: len(lab.registered_workers(a)) == WORKERS, REJOIN_TIMEOUT, 0.2, f"host {a} back")
            result.a_rejoined = True
        except AssertionError:
            result.a_rejoined = False
        lines = log_lines(log_path, fault_at)
        result.a_warnings = warnings_by_shape(lines)
        result.a_restarts = sum(
            1 for line in lines if line.logger == "atomq.supervisor" and " died " in line.message
        )
        result.post["a_said"] = [
            message_shape(line.message) for line in lines if line.logger.startswith("atomq.posts")
        ]
    return result


def run_scenario(lab: Lab, kind: str) -> dict[str, Any]:
    """Start hosts A then B (A's scheduler leads), hit A ROUNDS times, report the figures."""
    posts = Posts(lab)
    a = "a1"
    lab.start_host(a, WORKERS, *A_QUEUES, **posts.env)
    lab.wait_registered(a, WORKERS)
    # A's scheduler leads: the host lost is the one doing the scheduler's work (the reaper too).
    wait_for(lambda: scheduler_leader(lab) == f"host-{a}-scheduler", 30, 0.5, f"host {a}'s scheduler to lead")
    started = time.monotonic()
    rounds = []
    for index in range(1, ROUNDS + 1):
        if kind == "kill" and index > 1:
            a = f"a{index}"
            lab.start_host(a, WORKERS, *A_QUEUES, **posts.env)
            lab.wait_registered(a, WORKERS)
        rounds.append(run_round(lab, posts, kind, index, a))

    all_jobs = {key: job_id for r in rounds for key, job_id in r.jobs.items() if key != "post"}
    records = ledger_records(lab.ledger)
    done = {r.key for r in records if r.kind == "done"}
    ends = Counter(r.key for r in records if r.kind == "done")
    final = statuses(lab, list(all_jobs.values()))
    every_job = [*all_jobs.values(), *(r.jobs["post"] for r in rounds)]
    recorded = {job_id: sum(1 for o in outcomes(lab.client, job_id) if o.type == 1) for job_id in every_job}
    recovery = [seconds for r in rounds for seconds in r.recovery.values()]
    how = Counter(way for r in rounds for way in r.how.values())
    b_log = log_lines(Path(lab.supervisors["b"].log_path))  # type: ignore[attr-defined]
    figures: dict[str, Any] = {
        "fault": KINDS[kind],
        "outage_seconds": None if kind == "kill" else OUTAGE_SECONDS,
        "rounds": ROUNDS,
        "hosts": 2,
        "workers_per_host": WORKERS,
        "job_seconds": JOB_SECONDS,
        "jobs": len(every_job),
        "jobs_held_by_a_at_the_fault": sum(len(r.held) for r in rounds),
        "posts_held_by_a_at_the_fault": sum(1 for r in rounds if "post" in r.held),
        "scheduler_leader_before_each_fault": [r.leader for r in rounds],
        "recovery_seconds": {
            (f"r{r.index}-post" if key == "post" else key): round(s, 2)
            for r in rounds
            for key, s in r.recovery.items()
        },
        "recovery_p50_s": round(percentile(recovery, 0.5) or 0.0, 2),
        "recovery_p99_s": round(percentile(recovery, 0.99) or 0.0, 2),
        "recovery_max_s": round(max(recovery, default=0.0), 2),
        "target_p99_s": TARGET_SECONDS,
        "recovered_how": dict(how),
        "jobs_lost": sum(
            1 for key, job_id in all_jobs.items() if final[job_id] != "finished" or key not in done
        ),
        "outcomes_recorded_twice": sum(1 for n in recorded.values() if n > 1),
        "jobs_run_to_their_end_twice": sum(1 for n in ends.values() if n > 1),
        "posts": [r.post for r in rounds],
        "posts_published": sum(1 for r in rounds if r.post["status"] == "published"),
        "posts_published_twice": sum(1 for r in rounds if r.post["statuses_created"] > 1),
        "b_processes_died": sum(
            1 for line in b_log if line.logger == "atomq.supervisor" and " died " in line.message
        ),
        "seconds": round(time.monotonic() - started, 1),
    }
    if kind != "kill":
        figures["a_on_return"] = [
            {
                "held": len(r.held),
                "jobs_run_to_their_end": len(r.a_ran_to_end),
                "outcomes_recorded_late": len(r.a_recorded),
                "outcomes_refused": len([k for k in r.a_ran_to_end if k not in r.a_recorded]),
                "workers_registered_again": r.a_rejoined,
                "processes_restarted": r.a_restarts,
                "warnings": r.a_warnings,
            }
            for r in rounds
        ]
    return report(f"9_host_loss_{kind}", **figures)


def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> dict[str, Any]:
    lab = Lab.open(tmp_path_factory.mktemp(f"hosts-{kind}"))
    request.addfinalizer(lab.cleanup)  # also when the scenario fails half-way
    try:
        return run_scenario(lab, kind)
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def killed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return scenario(request, tmp_path_factory, "kill")


@pytest.fixture(scope="module")
def frozen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return scenario(request, tmp_path_factory, "freeze")


@pytest.fixture(scope="module")
def cut_off(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return scenario(request, tmp_path_factory, "cut")


def assert_nothing_lost_or_doubled(figures: dict[str, Any]) -> None:
    assert figures["jobs_held_by_a_at_the_fault"] >= ROUNDS, "the fault must hit host A mid-job"
    assert figures["posts_held_by_a_at_the_fault"] == ROUNDS, "a publish must be in flight on A"
    assert figures["jobs_lost"] == 0
    assert figures["outcomes_recorded_twice"] == 0
    assert figures["posts_published_twice"] == 0
    for post in figures["posts"]:
        assert post["status"] in ("published", "unconfirmed"), post  # settled, not stuck
    assert figures["b_processes_died"] == 0, "the surviving host must not lose a process"


def assert_recovered_within_target(figures: dict[str, Any]) -> None:
    if figures["recovery_p99_s"] > TARGET_SECONDS:
        raise TooSlow(
            f"host {figures['fault']}: its jobs ran again after p99 {figures['recovery_p99_s']} s "
            f"(p50 {figures['recovery_p50_s']} s, max {figures['recovery_max_s']} s; "
            f"{figures['recovered_how']}); the target is {TARGET_SECONDS} s"
        )


def assert_host_came_back(figures: dict[str, Any]) -> None:
    for returned in figures["a_on_return"]:
        assert returned["workers_registered_again"], returned
        # A worker that outlived its lease was declared dead and its jobs handed on: its
        # supervisor restarts it (nothing it ran may be recorded), and says why.
        restarts = returned["processes_restarted"]
        lease_lost = sum(n for shape, n in returned["warnings"].items() if "lease was lost" in shape)
        assert restarts <= WORKERS and restarts == lease_lost, returned


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_killed_host_loses_no_job_and_records_no_outcome_twice(killed):
    assert_nothing_lost_or_doubled(killed)


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_killed_host_jobs_run_elsewhere_within_5_s(killed):
    assert_recovered_within_target(killed)


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_frozen_host_loses_no_job_and_records_no_outcome_twice(frozen):
    assert_nothing_lost_or_doubled(frozen)
    assert_host_came_back(frozen)


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_frozen_host_jobs_run_elsewhere_within_5_s(frozen):
    assert_recovered_within_target(frozen)


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_cut_off_host_loses_no_job_and_records_no_outcome_twice(cut_off):
    assert_nothing_lost_or_doubled(cut_off)
    assert_host_came_back(cut_off)


@pytest.mark.timeout(SCENARIO_TIMEOUT)
def test_cut_off_host_jobs_run_elsewhere_within_5_s(cut_off):
    assert_recovered_within_target(cut_off)
