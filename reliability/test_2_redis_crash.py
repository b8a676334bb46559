"""Scenario 2: Redis SIGKILLed under a steady 500 enqueues/s, with AOF ``appendfsync everysec``,
then restarted on the same port and directory.

Promises checked: every job acknowledged more than 1.5 s before the crash runs (AOF everysec
may lose the last second or so, never more); the real ``atomq worker`` processes resume by
themselves, within 60 s; every scheduled post is published, exactly once (the reconciler
re-creates from the database whatever jobs Redis lost).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from atomq.core.timeutil import utcnow
from atomq.features.posts.service import PostsService
from reliability.ledger import Ledger
from reliability.redis_faults import AofRedis
from reliability.redis_support import (
    SteadyStream,
    enqueuer,
    ledger_times,
    process_env,
    scenario_settings,
    sqlite_database,
    task_queue,
    wait_all_recorded,
)
from reliability.report import report
from reliability.tasks_redis import RECORD
from testkit.fakes.mastodon import FakeMastodon
from testkit.posts import Accounts, schedule
from testkit.sizes import size
from testkit.support import Processes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(size(120, 900)))]

RATE = 500  # enqueues a second, CI and full alike
BEFORE = size(4.0, 30.0)  # seconds of load before the crash
DOWN = 1.0  # seconds Redis stays dead
AFTER = size(3.0, 15.0)  # seconds of load after the restart
POST_RATE = size(5.0, 10.0)  # posts scheduled a second during the load, each due 2 s later
AOF_WINDOW = 1.5  # acks older than this before the crash must survive it


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Each of its three waits may take up to a minute when something is wrong: the default 120 s
# would cut the test off before its assertions say which part went wrong.
@pytest.mark.timeout(300)
def test_redis_sigkilled_under_load(
    aof_redis: AofRedis, tmp_path: Path, ledger: Ledger, procs: Processes, mastodon: FakeMastodon
) -> None:
    database = sqlite_database(tmp_path / "atomq.db")
    database_url = f"sqlite:///{tmp_path / 'atomq.db'}"
    settings = scenario_settings(aof_redis.url, tmp_path / "var", database_url)
    tq = task_queue(settings, aof_redis.url)
    service = PostsService(database, tq, settings)
    # Several accounts: Mastodon allows 300 requests per 5 minutes to one, fewer than the full run posts.
    accounts = [
        Accounts(database, settings).mastodon(mastodon, handle=f"@r{i}@fake.social") for i in range(4)
    ]
    supervisor = procs.worker(
        "--count", "2", env=process_env(aof_redis.url, tmp_path / "var", ledger, database_url)
    )
    tq.enqueue(RECORD, "warm-up")
    wait_for(lambda: not ledger.missing(["warm-up"]), 30, 0.1, "the workers to start")

    jobs = enqueuer(tq, RATE, "job").start()
    posts = SteadyStream(
        lambda key: schedule(
            service, accounts[int(key.rsplit("-", 1)[1]) % 4], key, at=utcnow() + timedelta(seconds=2)
        ),
        POST_RATE,
        "post",
    ).start()
    try:
        time.sleep(BEFORE)
        crashed_at = time.time()
        aof_redis.crash()
        time.sleep(DOWN)
        aof_redis.restart()
        restarted_at = time.time()
        lost_post_jobs = _post_jobs_missing(service, aof_redis)
        time.sleep(AFTER)
    finally:
        jobs.stop()
        posts.stop()

    # Workers resume by themselves: a job enqueued now runs, and the supervisor never died.
    # (At the front: the full run leaves a backlog of thousands of jobs behind it.)
    tq.enqueue(RECORD, "after-restart", at_front=True)
    wait_for(lambda: not ledger.missing(["after-restart"]), 60, 0.1, "workers to run jobs after the restart")
    assert supervisor.poll() is None, Processes.log(supervisor)
    # The restarted Redis had no Lua scripts; the workers loaded theirs again (NOSCRIPT handled).
    probe = aof_redis.client()
    scripts_back = all(probe.script_exists(*_worker_script_shas()))
    probe.close()
    # ...and no process of it crashed on the way (the supervisor would hide that by restarting it).
    crashes = Processes.log(supervisor).count(" died (exit code")
    # Resumed: the first job recorded once Redis was back (a job held through the crash or
    # one queued before it both count: either way workers run jobs again).
    resumed_after = min(at for at in ledger_times(ledger).values() if at >= restarted_at)
    resume_seconds = max(0.0, resumed_after - restarted_at)

    safe = jobs.acked_before(crashed_at - AOF_WINDOW)
    window = jobs.acked_between(crashed_at - AOF_WINDOW, crashed_at)
    after = jobs.acked_between(restarted_at, float("inf"))
    lost_safe = wait_all_recorded(ledger, safe + after, size(60, 300))
    jobs_done_at = time.time()
    lost_window = ledger.missing(window)
    duplicates = {key: n for key, n in ledger.duplicates().items() if key.startswith("job-")}

    # Every post the database holds gets published once, including ones Redis lost.
    def all_published() -> bool:
        page = service.list_posts(limit=500)
        return all(post.status == "published" for post in page.items)

    stored = service.list_posts(limit=500).items
    published_in_time = True
    try:
        wait_for(all_published, 60, 0.5, "every scheduled post to be published")
    except AssertionError:
        published_in_time = False
    posts_done_at = time.time()
    final = service.list_posts(limit=500).items
    contents = [status["content"] for status in mastodon.statuses]
    posted_twice = sorted({c for c in contents if contents.count(c) > 1})

    report(
        "2_redis_crash",
        rate_target=RATE,
        enqueues_sent=jobs.sent,
        acked=len(jobs.acked),
        refused_during_crash=len(jobs.refused),
        acked_more_than_1_5s_before_crash=len(safe),
        lost_older_than_1_5s=len([k for k in lost_safe if k in set(safe)]),
        acked_within_1_5s_of_crash=len(window),
        lost_within_1_5s=len(lost_window),
        acked_after_restart=len(after),
        lost_after_restart=len([k for k in lost_safe if k in set(after)]),
        duplicate_job_runs=len(duplicates),
        seconds_to_resume=round(resume_seconds, 2),
        seconds_until_all_jobs_ran=round(jobs_done_at - restarted_at, 2),
        worker_processes_crashed=crashes,
        posts=len(final),
        post_jobs_missing_after_restart=lost_post_jobs,
        posts_refused_during_crash=len(posts.refused),
        posts_published=sum(1 for p in final if p.status == "published"),
        posts_published_twice=len(posted_twice),
        seconds_until_all_posts_published=round(posts_done_at - restarted_at, 2),
    )
    assert len(safe) > RATE * (BEFORE - AOF_WINDOW) * 0.2, "the load fell far short of its rate"
    assert lost_safe == [], (
        f"{len(lost_safe)} acknowledged jobs lost: {lost_safe[:10]}\n{Processes.log(supervisor)[-6000:]}"
    )
    assert resume_seconds < 60
    assert crashes == 0, Processes.log(supervisor)
    assert scripts_back
    assert len(stored) >= POST_RATE * BEFORE * 0.5
    assert published_in_time, (
        {p.id: p.status for p in final if p.status != "published"},
        Processes.log(supervisor)[-6000:],
    )
    assert posted_twice == []
    assert len(contents) == len(final)


def _post_jobs_missing(service: PostsService, server: AofRedis) -> int:
    """Scheduled posts whose job the restarted Redis does not have (the reconciler's work)."""
    client = server.client()
    try:
        waiting = [p for p in service.list_posts(limit=500).items if p.status == "scheduled"]
        return sum(1 for post in waiting if not client.exists(f"rq:job:{post.job_id}"))
    finally:
        client.close()


def _worker_script_shas() -> list[str]:
    from atomq.engine.fast_scripts import CLAIM_START, FINISH_MANY, Lua

    return [Lua(None, source).sha for source in (CLAIM_START, FINISH_MANY)]  # type: ignore[arg-type]
