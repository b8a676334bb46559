"""``atomq workflows``: list, load (check and store) files, start, follow, retry, cancel runs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from atomq.cli import exits, output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.core.errors import ConfigurationError, InvalidInputError
from atomq.engine.tasks import load_task_modules
from atomq.features.workflows import load_file
from atomq.features.workflows.tasks import MAX_PAGE, RUN_STATES

if TYPE_CHECKING:
    from atomq.db.engine import Database

# The workflow machinery (SQLAlchemy, the models) is imported inside the commands: every
# `atomq` process (the worker supervisor too, whose workers it forks) imports this module.


def _service() -> Any:
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.features.workflows import service

    return service


@contextmanager
def _database(runtime: Runtime) -> Iterator[Database]:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.db.engine import Database

    database = Database.from_settings(runtime.settings)
    try:
        yield database
    except (OperationalError, ProgrammingError) as exc:
        if "workflow" in str(exc):
            raise ConfigurationError(
                "the database has no workflow tables; run `atomq db upgrade` first"
            ) from None
        raise
    finally:
        database.dispose()


def _runtime(url: str | None) -> Runtime:
    runtime = Runtime(url)
    load_task_modules(runtime.settings.task_modules)
    return runtime


def print_run(run: dict[str, Any]) -> None:
    """A run: its state, then one row per step."""
    took = f" in {run['duration_seconds']:.1f}s" if run["duration_seconds"] is not None else ""
    output.line(f"run {run['id']} of {run['workflow']}: [bold]{run['status']}[/bold]{took}")
    if run["error"]:
        output.line(f"error: {run['error']}")
    output.table(
        None,
        ["Step", "Task", "Status", "After", "Attempt", "Tries", "Took", "Result / error"],
        [
            [
                s["name"],
                s["task"],
                s["status"],
                ",".join(s["depends_on"]) or None,
                s["attempt"],
                s["tries"],
                f"{s['duration_seconds']:.2f}s" if s["duration_seconds"] is not None else None,
                s["error"] or (json.dumps(s["result"])[:60] if s["result"] is not None else None),
            ]
            for s in run["steps"]
        ],
    )


@click.group()
def workflows() -> None:
    """Workflows: graphs of steps run as jobs once their dependencies succeed."""


@workflows.command("list")
@url_option
@json_option
def list_cmd(url: str | None, as_json: bool) -> None:
    """Known workflows (defined in code or loaded from files)."""
    runtime = _runtime(url)
    with _database(runtime) as database:
        found = _service().list_definitions(database)
    if as_json:
        output.print_json([w.to_dict() for w in found.values()])
        return
    output.table(
        f"{len(found)} workflow(s)",
        ["Name", "Steps", "Queue", "Description"],
        [[w.name, " ".join(s.name for s in w.steps), w.queue, w.description or None] for w in found.values()],
    )


@workflows.command("load")
@click.argument("path", type=click.Path(dir_okay=False))
@url_option
@click.option("--dry-run", is_flag=True, help="Only check the file; store nothing.")
def load(path: str, url: str | None, dry_run: bool) -> None:
    """Check a JSON or YAML workflow file and store its workflows for the API and CLI to run.

    Unknown tasks, cycles and missing dependencies are refused with the step named.
    """
    runtime = _runtime(url)

    found = [w.validate(runtime.task_queue.registry) for w in load_file(path)]
    if dry_run:
        for w in found:
            click.echo(f"ok: {w.name} ({len(w.steps)} steps)")
        return
    with _database(runtime) as database:
        for w in found:
            _service().store_definition(database, w, source=path)
            click.echo(f"loaded {w.name} ({len(w.steps)} steps)")


@workflows.command("run")
@click.argument("name")
@url_option
@click.option("--input", "input_json", help="The run's input, as JSON.")
@click.option("--wait", type=click.FloatRange(min=0), help="Wait up to N seconds for the run to end.")
@json_option
def run_cmd(name: str, url: str | None, input_json: str | None, wait: float | None, as_json: bool) -> None:
    """Start a run of NAME; print its id (or, with --wait, how it ended)."""
    try:
        data = json.loads(input_json) if input_json is not None else None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--input is not JSON ({exc.msg})", field="input") from None
    runtime = _runtime(url)
    with _database(runtime) as database:
        run = _service().start_run(database, runtime.task_queue, name, data)
        if wait is not None:
            deadline = time.monotonic() + wait
            while run["status"] == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
                run = _service().get_run(database, run["id"])
    if as_json:
        output.print_json(run)
    elif wait is None:
        click.echo(run["id"])
    else:
        print_run(run)
    if wait is not None and run["status"] != "succeeded":
        raise SystemExit(exits.FAILURE)


@workflows.command("status")
@click.argument("run_id")
@url_option
@json_option
def status(run_id: str, url: str | None, as_json: bool) -> None:
    """A run with each step's state, timings, result or error."""
    runtime = _runtime(url)
    with _database(runtime) as database:
        run = _service().get_run(database, run_id)
    if as_json:
        output.print_json(run)
    else:
        print_run(run)


@workflows.command("runs")
@url_option
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--status", "-s", type=click.Choice(RUN_STATES), help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=20, show_default=True)
@click.option("--cursor", help="Continue after a previous page (printed at its end).")
@json_option
def runs(
    url: str | None, workflow: str | None, status: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Runs, newest first."""
    runtime = _runtime(url)
    with _database(runtime) as database:
        page = _service().list_runs(database, workflow=workflow, status=status, limit=limit, cursor=cursor)
    if as_json:
        output.print_json(page)
        return
    output.table(
        f"{len(page['items'])} run(s)",
        ["Run ID", "Workflow", "Status", "Steps done", "Created", "Error"],
        [
            [
                r["id"],
                r["workflow"],
                r["status"],
                f"{sum(s['status'] == 'succeeded' for s in r['steps'])}/{len(r['steps'])}",
                r["created_at"],
                r["error"],
            ]
            for r in page["items"]
        ],
    )
    if page["next_cursor"]:
        output.line(f"more: --cursor {page['next_cursor']}")


@workflows.command("retry")
@click.argument("run_id")
@url_option
@json_option
def retry(run_id: str, url: str | None, as_json: bool) -> None:
    """Run the failed steps of a failed run again and continue from there."""
    runtime = _runtime(url)
    with _database(runtime) as database:
        run = _service().retry_run(database, runtime.task_queue, run_id)
    if as_json:
        output.print_json(run)
    else:
        print_run(run)


@workflows.command("cancel")
@click.argument("run_id")
@url_option
@click.option(
    "--grace",
    type=click.FloatRange(0, 3600),
    envvar="ATOMQ_STOP_GRACE_SECONDS",
    help="Seconds running steps get to stop by themselves before they are killed.",
)
@json_option
def cancel(run_id: str, url: str | None, grace: float | None, as_json: bool) -> None:
    """Cancel a run: pending steps are canceled, running ones stopped."""
    runtime = _runtime(url)
    with _database(runtime) as database:
        run = _service().cancel_run(database, runtime.task_queue, run_id, grace=grace)
    if as_json:
        output.print_json(run)
    else:
        print_run(run)


def register(group: click.Group) -> None:
    group.add_command(workflows)
