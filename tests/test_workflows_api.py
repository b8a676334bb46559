"""Workflows through the HTTP API and the CLI: the same service, thin layers."""

from __future__ import annotations

import json

import pytest

from testkit.support import run_cli


@pytest.fixture
def db_env(env, database):
    return dict(env, DATABASE_URL=database.engine.url.render_as_string(hide_password=False))


def burst(db_env):
    result = run_cli(db_env, "worker", "--burst", "workflows", "default", timeout=90)
    assert result.returncode == 0, result.stderr


def test_run_a_workflow_through_the_api(api, db_env, tmp_path):
    write, read = api.auth("write"), api.auth("read")
    assert (
        api.post("/api/v1/tasks/workflows/diamond/runs", json={"input": {"n": 2}}, headers=read).status_code
        == 403
    )
    created = api.post("/api/v1/tasks/workflows/diamond/runs", json={"input": {"n": 2}}, headers=write)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "running" and [s["name"] for s in run["steps"]] == ["A", "B", "C", "D"]
    burst(db_env)
    done = api.get(f"/api/v1/tasks/workflows/runs/{run['id']}", headers=write).json()
    assert done["status"] == "succeeded"
    assert done["steps"][3]["result"] == {"B": 4, "C": 12, "sum": 16}
    watched = api.get(f"/api/v1/tasks/workflows/runs/{run['id']}", headers=read).json()
    assert watched["status"] == "succeeded" and watched["input"] is None
    assert [s["result"] for s in watched["steps"]] == [None] * 4
    listed = api.get(
        "/api/v1/tasks/workflows/runs", params={"workflow": "diamond", "status": "succeeded"}, headers=read
    )
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]] and listed.json()["next_cursor"] is None
    again = api.delete(f"/api/v1/tasks/workflows/runs/{run['id']}/cancel", headers=write)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_run_state"
    names = [w["name"] for w in api.get("/api/v1/tasks/workflows", headers=read).json()["items"]]
    assert {"diamond", "gated", "crashy"} <= set(names)


def test_api_retry_and_errors(api, db_env, tmp_path):
    write, read = api.auth("write"), api.auth("read")
    flag = tmp_path / "flag"
    body = {"input": {"n": 1, "flag": str(flag), "ledger": str(tmp_path / "ledger")}}
    run = api.post("/api/v1/tasks/workflows/gated/runs", json=body, headers=write).json()
    burst(db_env)
    failed = api.get(f"/api/v1/tasks/workflows/runs/{run['id']}", headers=write).json()
    assert failed["status"] == "failed" and "gate closed" in failed["error"]
    watched = api.get(f"/api/v1/tasks/workflows/runs/{run['id']}", headers=read).json()
    assert "gate closed" not in json.dumps(watched), "read sees that a step failed, not what it said"
    flag.write_text("open")
    retried = api.post(f"/api/v1/tasks/workflows/runs/{run['id']}/retry", headers=write)
    assert retried.status_code == 200 and retried.json()["status"] == "running"
    burst(db_env)
    assert api.get(f"/api/v1/tasks/workflows/runs/{run['id']}", headers=read).json()["status"] == "succeeded"
    missing = api.post("/api/v1/tasks/workflows/nope/runs", json={}, headers=write)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "workflow"
    assert api.get("/api/v1/tasks/workflows/runs/wfr_nope", headers=read).status_code == 404
    bad_status = api.get("/api/v1/tasks/workflows/runs", params={"status": "weird"}, headers=read)
    assert bad_status.status_code == 422 and bad_status.json()["error"]["field"] == "status"
    bad_cursor = api.get("/api/v1/tasks/workflows/runs", params={"cursor": "zzz"}, headers=read)
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["field"] == "cursor"


def test_cli_loads_files_and_runs_workflows(env, tmp_path):
    # The CLI is a thin layer over the service the other tests run on both databases.
    db_env = dict(env, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    good = tmp_path / "flow.yaml"
    good.write_text(
        "name: from_file\nsteps:\n  - {name: one, task: add, kwargs: {a: 1, b: 2}}\n"
        "  - {name: two, task: noop, depends_on: [one], retry: {max: 2, delay: 1}}\n"
    )
    cycle = tmp_path / "cycle.json"
    cycle.write_text(
        json.dumps(
            {
                "name": "loop",
                "steps": [
                    {"name": "a", "task": "noop", "depends_on": ["b"]},
                    {"name": "b", "task": "noop", "depends_on": ["a"]},
                ],
            }
        )
    )
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"name": "u", "steps": [{"name": "x", "task": "no_such_task"}]}))
    missing = tmp_path / "missing.json"
    missing.write_text(
        json.dumps({"name": "m", "steps": [{"name": "x", "task": "noop", "depends_on": ["ghost"]}]})
    )
    cli = lambda *args: run_cli(db_env, *args)  # noqa: E731
    assert cli("db", "upgrade").returncode == 0
    refused = cli("workflows", "load", str(cycle))
    assert refused.returncode == 2 and "cycle: a -> b -> a" in refused.stderr
    refused = cli("workflows", "load", str(unknown))
    assert refused.returncode == 2 and "step 'x': no task is registered as 'no_such_task'" in refused.stderr
    refused = cli("workflows", "load", str(missing))
    assert refused.returncode == 2 and "step 'x' depends on 'ghost', which is not a step" in refused.stderr
    assert "Traceback" not in refused.stderr
    loaded = cli("workflows", "load", str(good))
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded from_file (2 steps)" in loaded.stdout
    started = cli("workflows", "run", "from_file")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    burst(db_env)
    shown = cli("workflows", "status", run_id, "--json")
    data = json.loads(shown.stdout)
    assert data["status"] == "succeeded" and data["steps"][0]["result"] == 3
    table = cli("workflows", "status", run_id)
    assert "succeeded" in table.stdout and "one" in table.stdout
    listed = cli("workflows", "runs", "--status", "succeeded", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["items"]] == [run_id]
    assert cli("workflows", "retry", run_id).returncode == 6
    assert cli("workflows", "status", "wfr_nope").returncode == 5
    bad_input = cli("workflows", "run", "from_file", "--input", "{nope")
    assert bad_input.returncode == 2 and "--input is not JSON" in bad_input.stderr
