"""Recurring jobs: exactly one enqueue per due time with three schedulers, across DST changes,
missed-run policies, listing."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import UTC, datetime

import pytest
import redis

from atomq.core import keys
from atomq.core.errors import ConfigurationError
from atomq.engine.task_queue import TaskQueue
from atomq.features.recurring.schedules import PLANNED_KEY, Schedule, plan
from testkit.support import wait_for


def utc(*parts):
    return datetime(*parts, tzinfo=UTC).timestamp()


def scheduled(connection, queue="default"):
    """{job id: due time} in the scheduled registry."""
    return {k.decode(): s for k, s in connection.zrange(keys.scheduled_key(queue), 0, -1, withscores=True)}


def hhmm(stamps):
    return sorted(datetime.fromtimestamp(s, UTC).strftime("%m-%d %H:%M") for s in stamps)


def test_three_planners_across_dst_changes_plan_each_occurrence_once(settings, redis_url):
    schedules = [
        Schedule("hourly", "noop", cron="0 * * * *", timezone="Europe/Paris"),
        Schedule("daily", "noop", cron="30 2 * * *", timezone="Europe/Paris"),
        Schedule("every-hour", "noop", every=3600, timezone="Europe/Paris"),
    ]
    # Simulated clocks walking over both 2027 changes in Paris (spring forward 28 March at
    # 02:00 -> 03:00, fall back 31 October at 03:00 -> 02:00), three planners at once.
    windows = [(utc(2027, 3, 27, 21), utc(2027, 3, 28, 4)), (utc(2027, 10, 30, 21, 10), utc(2027, 10, 31, 4))]
    errors = []

    def planner(offset: float) -> None:
        client = redis.Redis.from_url(redis_url)
        tq = TaskQueue(settings=settings, connection=client)
        try:
            for start, end in windows:
                now = start + offset
                while now <= end:
                    plan(tq, schedules, now, lookahead=1800)
                    now += 600
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=planner, args=(offset,)) for offset in (0, 7, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    client = redis.Redis.from_url(redis_url)
    jobs = scheduled(client)
    by_name: dict[str, list[float]] = {}
    for job_id, due in jobs.items():
        name = job_id.split("-")[1] if not job_id.startswith("recurring-every") else "every-hour"
        by_name.setdefault(name, []).append(due)
    # Spring: 02:00 local never happens, so 03:00 CEST (01:00 UTC) runs once; no hour twice.
    # Autumn: 02:00 local happens twice; it runs once, at its first occurrence (00:00 UTC).
    assert hhmm(by_name["hourly"]) == [
        "03-27 22:00",
        "03-27 23:00",
        "03-28 00:00",
        "03-28 01:00",
        "03-28 02:00",
        "03-28 03:00",
        "03-28 04:00",
        "10-30 22:00",
        "10-30 23:00",
        "10-31 00:00",
        "10-31 02:00",
        "10-31 03:00",
        "10-31 04:00",
    ]
    # 02:30 is skipped in spring (runs when the clocks jump, 01:00 UTC) and repeated in autumn (once).
    assert hhmm(by_name["daily"]) == ["03-28 01:00", "10-31 00:30"]
    # A fixed interval counts real hours: the autumn night has one more of them.
    assert len([s for s in by_name["every-hour"] if s >= utc(2027, 10, 30, 21, 0, 1)]) == 7
    # Every job exists once and is due when its id says.
    for job_id, due in jobs.items():
        assert job_id.endswith(f"-{round(due * 1000)}")
    assert len(jobs) == len(set(jobs))
    client.close()


def test_missed_runs_are_skipped_or_run_once(tq, connection):
    skip = Schedule("skipper", "noop", every=60, missed="skip")
    once = Schedule("catcher", "noop", every=60, missed="run_once")
    t0 = utc(2030, 1, 1, 12)
    plan(tq, [skip, once], t0, lookahead=60)
    assert len(scheduled(connection)) == 2
    connection.delete(keys.scheduled_key("default"))
    # No scheduler ran for an hour: 59 occurrences of each were missed.
    later = t0 + 3600
    counts = plan(tq, [skip, once], later, lookahead=60)
    assert counts == {"skipper": 2, "catcher": 3}
    queued = [j.decode() for j in connection.lrange(keys.queue_key("default"), 0, -1)]
    assert len(queued) == 1 and queued[0].startswith("recurring-catcher-")
    assert float(connection.hget(PLANNED_KEY, "catcher")) == later + 60
    # Planning again changes nothing.
    assert plan(tq, [skip, once], later, lookahead=60) == {"skipper": 0, "catcher": 0}


def test_three_scheduler_processes_enqueue_each_tick_once(tq, procs, env, tmp_path, connection):
    ledger = tmp_path / "ledger"
    schedules_file = tmp_path / "recurring.json"
    schedules_file.write_text(
        json.dumps([{"name": "tick", "task": "record_tick", "every": 1, "kwargs": {"path": str(ledger)}}])
    )
    sched_env = dict(env, ATOMQ_RECURRING_FILE=str(schedules_file))
    schedulers = [procs.start("scheduler", "run", env=sched_env, name=f"scheduler{i}") for i in range(3)]
    procs.start("worker", "default", "--no-scheduler", env=sched_env, name="worker")
    wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 3, 30, what="ticks to run")
    # The leader goes away; a standby takes over, and the ticks planned ahead keep coming.
    leader = connection.get(keys.SCHEDULER_LEADER).decode()
    running = {p.pid: p for p in schedulers}
    pid = int(leader.rsplit(".", 2)[-2])
    assert pid in running
    procs.stop(running[pid], signal.SIGTERM)
    wait_for(
        lambda: (now := connection.get(keys.SCHEDULER_LEADER)) and now.decode() != leader,
        15,
        what="a standby to lead",
    )
    time.sleep(2)
    ran = ledger.read_text().split()
    assert len(ran) == len(set(ran)) >= 5
    dues = sorted(int(job_id.rsplit("-", 1)[1]) for job_id in ran)
    # Consecutive seconds, none missing, none twice.
    assert dues == list(range(dues[0], dues[0] + 1000 * len(dues), 1000))


def test_scheduler_lists_recurring_jobs_and_bad_definitions_are_refused(cli, env, tmp_path):
    good = tmp_path / "rec.yaml"
    good.write_text(
        "- {name: nightly, task: noop, cron: '30 2 * * *', timezone: Europe/Paris, missed: run_once}\n"
    )
    env_file = dict(env, ATOMQ_RECURRING_FILE=str(good))
    from testkit.support import run_cli

    shown = run_cli(env_file, "scheduler")
    assert shown.returncode == 0, shown.stderr
    assert "nightly" in shown.stdout and "cron 30 2 * * *" in shown.stdout and "Europe/Paris" in shown.stdout
    data = json.loads(run_cli(env_file, "scheduler", "--json").stdout)
    assert data["recurring"][0]["next_due"].endswith(("+01:00", "+02:00"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: x, task: noop, cron: '61 * * * *'}\n")
    checked = cli("recurring", "check", str(bad))
    assert checked.returncode == 4 and "not a valid cron expression" in checked.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("- {name: x, task: nope, every: 5}\n")
    assert cli("recurring", "check", str(unknown)).returncode == 5
    assert cli("recurring", "check", str(good)).returncode == 0
    with pytest.raises(ConfigurationError, match="unknown IANA timezone"):
        Schedule("x", "noop", every=5, timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="exactly one of cron or every"):
        Schedule("x", "noop")
