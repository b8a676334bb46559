"""Scenario 1: workers SIGKILLed at random while jobs and scheduled posts flow.

Four worker processes under one supervisor (``atomq worker --count 4``) work through a pile of
jobs while a random worker is SIGKILLed every 2 s; the supervisor restarts it and recovers its
jobs. Scheduled posts fall due during the run and are published to a fake Mastodon.

Checks: every job ran (ledger: none missing) and ended ``finished``; nothing is left queued,
started, scheduled or claimed; no post was published twice (the fake keeps one status per
Idempotency-Key, as Mastodon does, and each post has its own content, so a second status for
the same content is a duplicate publication). Jobs that ran twice are counted, not refused:
jobs are at-least-once.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from datetime import timedelta

import pytest

import reliability.tasks_workers  # noqa: F401 - registers the tasks in this process too
from atomq.core.timeutil import utcnow
from atomq.engine.supervisor import RESTART_DELAY_FIRST
from reliability.ledger import Ledger
from reliability.report import report
from reliability.workers_support import Killer, leftovers, statuses, worker_env
from testkit.fakes.server import Plan
from testkit.posts import schedule
from testkit.sizes import size
from testkit.support import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: Queues the supervisor's workers listen on (the default set): the jobs' and the posts'.
QUEUES = ["high_priority", "social_media", "workflows", "default"]

JOBS = int(size(1_500, 10_000))
POSTS = int(size(40, 200))
#: Seconds each job works before recording its effect: long enough that kills land mid-job.
JOB_SECONDS = 0.02
KILL_EVERY = 2.0
#: Seconds the fake platform takes to answer a publish (under the 1 s publish timeout).
PUBLISH_SECONDS = 0.25


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_random_worker_kills_lose_no_job_and_publish_no_post_twice(
    procs, tq, connection, posts_env, ledger: Ledger, service, accounts, mastodon
):
    supervisor = procs.worker("--count", "4", "--name", "chaos", env=worker_env(posts_env, ledger))
    wait_for(lambda: connection.scard("rq:workers") == 4, 30, what="four workers")

    keys = [f"job-{i}" for i in range(JOBS)]
    started = time.monotonic()
    jobs = tq.enqueue_many(("rel_w_effect", {"key": key, "seconds": JOB_SECONDS}) for key in keys)
    job_ids = [job.id for job in jobs]
    # Posts fall due across the expected run time, through the scheduler and reconciler.
    spread = JOBS * JOB_SECONDS / 4
    masto = [accounts.mastodon(mastodon, handle=f"@chaos{i}@fake.social") for i in range(4)]
    # Each publish takes PUBLISH_SECONDS at the platform, so some kills land mid-publish.
    mastodon.plan(*(Plan(delay=PUBLISH_SECONDS) for _ in range(3 * POSTS)))
    first_due = utcnow() + timedelta(seconds=2)
    posts = [
        schedule(
            service,
            masto[i % 4],
            f"chaos post {i}",
            at=first_due + timedelta(seconds=spread * i / POSTS),
        )
        for i in range(POSTS)
    ]

    killer = Killer(connection, supervisor.pid, interval=KILL_EVERY).start()
    try:
        wait_for(
            lambda: not ledger.missing(keys),
            size(90, 1200),
            interval=0.5,
            what="every job to run",
        )
        posts_done = wait_for(
            lambda: all(service.get(p.id).status not in ("scheduled", "publishing") for p in posts),
            size(60, 300),
            interval=0.5,
            what="every post to be published",
        )
    finally:
        killer.stop()
    assert posts_done

    # Every job is recorded finished and nothing holds a job any more (a job run just before a
    # kill may be waiting for its retry or requeue for a moment).
    wait_for(
        lambda: statuses(connection, job_ids)["finished"] == JOBS,
        60,
        interval=0.5,
        what="every job recorded finished",
    )
    drained = time.monotonic() - started
    wait_for(lambda: leftovers(connection, QUEUES) == dict.fromkeys(leftovers(connection, QUEUES), 0), 30)
    assert statuses(connection, job_ids) == Counter(finished=JOBS)
    assert ledger.missing(keys) == []

    final = [service.get(p.id) for p in posts]
    assert Counter(p.status for p in final) == Counter(published=POSTS)
    published = Counter(status["content"] for status in mastodon.statuses)
    duplicated_posts = {content: n for content, n in published.items() if n > 1}
    assert duplicated_posts == {}
    assert sorted(published) == sorted(f"chaos post {i}" for i in range(POSTS))
    assert {p.platform_post_id for p in final} == {s["id"] for s in mastodon.statuses}
    # A repeated request (a kill mid-publish) carried the key of the first one.
    assert len({r.headers["idempotency-key"] for r in mastodon.requests}) == POSTS

    ran_twice = {key: n for key, n in ledger.duplicates().items() if key.startswith("job-")}
    kills = len(killer.kills)
    assert killer.ticks >= killer.expected_ticks - 1, (killer.ticks, killer.expected_ticks)
    assert kills >= 3, "the scenario must have killed workers while they worked"

    def restarts() -> list[tuple[float, bool]]:
        """(delay, whether the log says the worker died before running a job) per restart."""
        log = procs.log(supervisor)
        found = re.findall(r"restarting worker \S+ in ([0-9.]+) s( \(died \d+ times)?", log)
        return [(float(delay), bool(idle)) for delay, idle in found]

    seen = wait_for(lambda: len(restarts()) >= kills and restarts(), 10, what="restarts")
    # A worker killed at work comes back after the first delay; the doubling backoff is only for
    # workers that die before they run a job (one killed again once the queues ran dry, or one
    # that cannot start), and the log says so.
    at_work = [delay for delay, idle in seen if not idle]
    assert at_work and set(at_work) == {RESTART_DELAY_FIRST}, seen
    assert all(delay > RESTART_DELAY_FIRST for delay, idle in seen if idle), seen
    assert len(at_work) >= len(seen) / 2, seen

    procs.stop(supervisor, signal.SIGTERM)
    assert supervisor.returncode == 0

    report(
        "1_worker_kills",
        jobs=JOBS,
        job_seconds=JOB_SECONDS,
        workers=4,
        kills=kills,
        kill_interval_s=KILL_EVERY,
        kill_ticks_without_a_live_worker=killer.skipped,
        restarts=len(seen),
        restarts_before_a_job=len(seen) - len(at_work),
        longest_restart_delay_s=max(delay for delay, _ in seen),
        jobs_missing=0,
        jobs_ran_twice=len(ran_twice),
        extra_runs=sum(n - 1 for n in ran_twice.values()),
        posts=POSTS,
        posts_published=sum(1 for p in final if p.status == "published"),
        post_requests=len(mastodon.requests),
        post_requests_repeated_after_a_kill=len(mastodon.requests) - POSTS,
        posts_published_twice=len(duplicated_posts),
        drain_seconds=round(drained, 1),
        jobs_per_second=round(JOBS / drained, 1),
    )
