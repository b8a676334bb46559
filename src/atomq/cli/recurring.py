"""Recurring jobs in the CLI: the table ``atomq scheduler`` shows, and ``atomq recurring``."""

from __future__ import annotations

import time
from typing import Any

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.core.errors import UnknownTaskError
from atomq.engine.tasks import load_task_modules, registry
from atomq.features.recurring import schedules as rec


def listing(runtime: Runtime) -> list[dict[str, Any]]:
    """Every recurring job (code and ATOMQ_RECURRING_FILE) with its next due time."""
    load_task_modules(runtime.settings.task_modules)
    return rec.describe(runtime.connection, rec.all_schedules(runtime.settings), time.time())


def print_listing(rows: list[dict[str, Any]]) -> None:
    output.line()
    output.table(
        f"{len(rows)} recurring job(s)",
        ["Name", "Task", "Schedule", "Timezone", "Next due (local)", "Next due (UTC)", "Missed runs"],
        [
            [
                r["name"],
                r["task"],
                r["schedule"],
                r["timezone"],
                r["next_due"],
                r["next_due_utc"],
                r["missed"],
            ]
            for r in rows
        ],
    )


@click.group()
def recurring() -> None:
    """Recurring jobs: cron expressions or intervals, each in its own timezone."""


@recurring.command("list")
@url_option
@json_option
def list_cmd(url: str | None, as_json: bool) -> None:
    """Recurring jobs and when each is next due."""
    rows = listing(Runtime(url))
    if as_json:
        output.print_json(rows)
    else:
        print_listing(rows)


@recurring.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path: str) -> None:
    """Check a recurring jobs file (YAML or JSON): cron syntax, timezones, known tasks."""
    runtime = Runtime()
    load_task_modules(runtime.settings.task_modules)

    schedules = rec.load_schedules_file(path)
    for schedule in schedules:
        if schedule.task not in registry:
            raise UnknownTaskError(
                f"recurring job {schedule.name!r}: no task is registered as {schedule.task!r}", field="task"
            )
        click.echo(f"ok: {schedule.name} ({schedule.describe()}, {schedule.timezone})")


def register(group: click.Group) -> None:
    group.add_command(recurring)
