"""Workflows on real workers, Redis and both databases: results along a diamond, retry,
cancel, a worker SIGKILL and a Redis flush mid-run, definitions refused with the step named."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from atomq.engine.tasks import load_task_modules
from atomq.features.workflows import Workflow, WorkflowDefinitionError
from atomq.features.workflows.reconcile import reconcile
from atomq.features.workflows.service import cancel_run, get_run, list_runs, retry_run, start_run
from testkit.support import run_cli, wait_for


@pytest.fixture
def db_env(env, database):
    """Environment for worker and scheduler processes, pointed at the test's database."""
    return dict(env, DATABASE_URL=database.engine.url.render_as_string(hide_password=False))


@pytest.fixture
def wf_burst(db_env):
    def run():
        result = run_cli(db_env, "worker", "--burst", "workflows", "default", timeout=90)
        assert result.returncode == 0, result.stderr
        return result

    return run


@pytest.fixture
def tqw(tq):
    load_task_modules(["tests.jobs"])
    return tq


def steps_of(run):
    return {step["name"]: step for step in run["steps"]}


def test_diamond_passes_results_along(database, tqw, wf_burst):
    run = start_run(database, tqw, "diamond", {"n": 4})
    assert run["status"] == "running"
    assert [s["status"] for s in run["steps"]] == ["queued", "pending", "pending", "pending"]
    wf_burst()
    done = get_run(database, run["id"])
    steps = steps_of(done)
    assert done["status"] == "succeeded", done
    assert (steps["A"]["result"], steps["B"]["result"], steps["C"]["result"]) == (4, 8, 14)
    assert steps["D"]["result"] == {"B": 8, "C": 14, "sum": 22}
    assert all(s["tries"] == 1 and s["attempt"] == 1 for s in steps.values())
    # D started only after both B and C had finished.
    assert steps["D"]["started_at"] >= max(steps["B"]["finished_at"], steps["C"]["finished_at"])
    assert done["finished_at"] and done["duration_seconds"] is not None


def test_failed_step_fails_the_run_then_retry_continues(database, tqw, wf_burst, tmp_path):
    flag, ledger = tmp_path / "flag", tmp_path / "ledger"
    run = start_run(database, tqw, "gated", {"n": 1, "flag": str(flag), "ledger": str(ledger)})
    wf_burst()
    failed = get_run(database, run["id"])
    steps = steps_of(failed)
    assert failed["status"] == "failed"
    assert "step G failed" in failed["error"] and "gate closed" in steps["G"]["error"]
    assert steps["E"]["status"] == "pending"  # the dependent waits
    assert steps["side"]["status"] == "succeeded"  # an independent branch is unaffected
    with pytest.raises(Exception, match="only failed runs"):
        retry_run(database, tqw, start_run(database, tqw, "diamond", {"n": 1})["id"])
    flag.write_text("open")
    retried = retry_run(database, tqw, run["id"])
    assert retried["status"] == "running"
    assert steps_of(retried)["G"]["status"] == "queued" and steps_of(retried)["G"]["attempt"] == 2
    wf_burst()
    done = get_run(database, run["id"])
    assert done["status"] == "succeeded", done
    assert steps_of(done)["G"]["job_id"].endswith("-G-2")
    assert ledger.read_text().split().count("E") == 1
    assert ledger.read_text().split().count("side") == 1


def test_cancel_mid_run_stops_the_running_step(database, tqw, procs, db_env):
    procs.start("worker", "workflows", "--no-scheduler", env=db_env, name="worker")
    run = start_run(database, tqw, "slow_chain", None)
    wait_for(lambda: steps_of(get_run(database, run["id"]))["S"]["status"] == "running", 20)
    canceled = cancel_run(database, tqw, run["id"], grace=10)
    assert canceled["status"] == "canceled"
    assert {s["status"] for s in canceled["steps"]} == {"canceled"}
    job_id = steps_of(canceled)["S"]["job_id"]
    wait_for(lambda: tqw.get_job_status(job_id)["status"] == "stopped", 15, what="the step to stop")
    assert tqw.connection.llen("rq:queue:workflows") == 0  # T never queued
    after = get_run(database, run["id"])
    assert after["status"] == "canceled" and steps_of(after)["S"]["status"] == "canceled"
    with pytest.raises(Exception, match="already canceled"):
        cancel_run(database, tqw, run["id"])


def test_run_survives_redis_flush_and_worker_sigkill(database, tqw, procs, db_env, tmp_path, connection):
    ledger = tmp_path / "ledger"
    procs.start("scheduler", "run", env=db_env, name="scheduler")
    run = start_run(database, tqw, "crashy", {"ledger": str(ledger)})
    assert steps_of(run)["K"]["status"] == "queued"
    connection.flushall()  # Redis loses the queued step job
    supervisor = procs.start("worker", "workflows", "--no-scheduler", env=db_env, name="worker")
    # The reconciler queues K again; its first attempt records its pid and sleeps.
    line = wait_for(lambda: ledger.exists() and ledger.read_text().split(), 30, what="K to start")
    runner = int(line[1])
    parent = int(Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[1])
    # The fast worker runs jobs in its own process; RQ's worker in a child (horse) of it.
    worker_child = runner if parent == supervisor.pid else parent
    assert worker_child != supervisor.pid
    os.kill(worker_child, signal.SIGKILL)  # the worker dies (with any horse it had)
    wait_for(lambda: get_run(database, run["id"])["status"] == "succeeded", 60, what="the run to finish")
    done = get_run(database, run["id"])
    steps = steps_of(done)
    assert steps["K"]["result"] == 2 and steps["K"]["tries"] == 2
    lines = ledger.read_text().split("\n")
    assert sum(1 for entry in lines if entry.startswith("K ")) == 2
    assert sum(1 for entry in lines if entry.startswith("L ")) == 1


def test_reconciler_never_queues_a_live_step_twice(database, tqw):
    run = start_run(database, tqw, "diamond", {"n": 1})
    job_id = steps_of(run)["A"]["job_id"]
    assert reconcile(database, tqw)["requeued"] == 0
    tqw.connection.delete(f"rq:job:{job_id}")
    tqw.connection.delete("rq:queue:workflows")
    first, second = reconcile(database, tqw), reconcile(database, tqw)
    assert (first["requeued"], second["requeued"]) == (1, 0)
    assert tqw.connection.lrange("rq:queue:workflows", 0, -1) == [job_id.encode()]


def test_definitions_are_refused_with_the_step_named(tqw):
    with pytest.raises(WorkflowDefinitionError, match=r"step 'b' depends on 'zz', which is not a step"):
        Workflow("w").step("a", "noop").step("b", "noop", depends_on=["zz"]).validate()
    with pytest.raises(WorkflowDefinitionError, match=r"cycle: a -> b -> c -> a"):
        Workflow("w").step("a", "noop", depends_on=["b"]).step("b", "noop", depends_on=["c"]).step(
            "c", "noop", depends_on=["a"]
        ).validate()
    with pytest.raises(WorkflowDefinitionError, match=r"step 'x': no task is registered as 'nope'"):
        Workflow("w").step("x", "nope").validate(tqw.registry)
    with pytest.raises(WorkflowDefinitionError, match=r"step 'y': .*missing a required argument: 'a'"):
        Workflow("w").step("y", "add", kwargs={"b": 1}).validate(tqw.registry)
    with pytest.raises(WorkflowDefinitionError, match="defined twice"):
        Workflow("w").step("a", "noop").step("a", "noop").validate()


def test_list_runs_filters_and_pages(database, tqw):
    ids = [start_run(database, tqw, "diamond", {"n": i})["id"] for i in range(5)]
    page = list_runs(database, workflow="diamond", limit=2)
    assert [r["id"] for r in page["items"]] == ids[::-1][:2]
    rest = list_runs(database, workflow="diamond", limit=10, cursor=page["next_cursor"])
    assert [r["id"] for r in rest["items"]] == ids[::-1][2:] and rest["next_cursor"] is None
    assert list_runs(database, status="failed")["items"] == []
