"""Job commands: ``enqueue``, ``status``, ``cancel``, ``requeue``, ``empty``."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import click

from atomq.cli import exits, output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.cli.longjobs import print_progress_lines  # issue 6: progress and liveness
from atomq.core.errors import InvalidJobOptionError, TaskArgumentsError
from atomq.ops import admin, monitor

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` or ``250ms`` as a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidJobOptionError(
            f"cannot read {text!r} as a duration (try 90s, 30m, 2h or 1d)", field="in"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; a value that reads as JSON (3, true, {"a": 1}) is taken as JSON."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise TaskArgumentsError(f"expected key=value, got {pair!r}", field="kwargs")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs


@click.command()
@click.argument("task")
@click.argument("assignments", nargs=-1, metavar="[KEY=VALUE]...")
@url_option
@click.option("--queue", "-q", help="Queue to use instead of the task's own.")
@click.option("--in", "delay", metavar="DURATION", help="Run after a delay: 90s, 30m, 2h, 1d.")
@click.option("--at", "at", metavar="DATETIME", help="Run at an ISO-8601 time (naive = ATOMQ_TIMEZONE).")
@click.option("--job-id", help="Use this job id (letters, digits, _ and -).")
@click.option("--timeout", type=click.IntRange(min=1), help="Job timeout in seconds.")
@click.option("--retry", type=click.IntRange(min=0), help="Retries with exponential backoff.")
@click.option("--at-front", is_flag=True, help="Put the job at the front of its queue.")
@click.option("--unique", is_flag=True, help="Refuse if a job with --job-id exists (the default).")
@click.option("--replace", is_flag=True, help="Overwrite the job with --job-id if it exists.")
@click.option("--wait", type=click.FloatRange(min=0), help="Wait up to N seconds for the job to end.")
@json_option
def enqueue(
    task: str,
    assignments: tuple[str, ...],
    url: str | None,
    queue: str | None,
    delay: str | None,
    at: str | None,
    job_id: str | None,
    timeout: int | None,
    retry: int | None,
    at_front: bool,
    unique: bool,
    replace: bool,
    wait: float | None,
    as_json: bool,
) -> None:
    """Queue a call of TASK with KEY=VALUE arguments; print the job id.

    \b
    atomq enqueue process_scheduled_post post_id=post_123 user_id=user_456
    atomq enqueue ping --in 30m
    """
    if delay and at:
        raise InvalidJobOptionError("give --in or --at, not both", field="at")
    runtime = Runtime(url)
    kwargs = parse_assignments(assignments)
    options: dict[str, Any] = {}
    for key, value in (("queue", queue), ("job_id", job_id), ("timeout", timeout), ("retry", retry)):
        if value is not None:
            options[key] = value
    if at_front:
        options["at_front"] = True
    if unique:
        options["unique"] = True
    if replace:
        options["replace"] = True
    tq = runtime.task_queue
    if delay:
        job = tq.enqueue_in(parse_duration(delay), task, kwargs=kwargs, **options)
    elif at:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise InvalidJobOptionError(f"cannot read {at!r} as an ISO-8601 time", field="at") from None
        job = tq.enqueue_at(when, task, kwargs=kwargs, **options)
    else:
        job = tq.enqueue(task, kwargs=kwargs, **options)
    if wait is None:
        status = tq.get_job_status(job.id)
        if as_json:
            output.print_json(status)
        else:
            click.echo(job.id)
        return
    status = _wait_for_end(tq, job.id, wait)
    if as_json:
        output.print_json(status)
    else:
        _print_status(status)
    if status["status"] != "finished":
        raise SystemExit(exits.FAILURE)


def _wait_for_end(tq: Any, job_id: str, seconds: float) -> dict[str, Any]:
    tq.wait_for_end(job_id, seconds)  # woken by Redis when the job ends
    status: dict[str, Any] = tq.get_job_status(job_id)
    return status


def _print_status(status: dict[str, Any]) -> None:
    for key, value in status.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        click.echo(f"{key:>11}: {'-' if shown is None else shown}")


@click.command()
@click.argument("job_id")
@url_option
@json_option
def status(job_id: str, url: str | None, as_json: bool) -> None:
    """Show a job's status: the guide's dictionary (status, times, result, error)."""
    runtime = Runtime(url)
    data = runtime.task_queue.get_job_status(job_id)
    if as_json:
        output.print_json(data)
    else:
        _print_status(data)

        print_progress_lines(runtime, job_id, data)


@click.command()
@click.argument("job_id")
@url_option
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="For a running job, seconds to wait for the stop to be recorded.",
)
@json_option
def cancel(job_id: str, url: str | None, wait: float, as_json: bool) -> None:
    """Cancel a queued or scheduled job, or stop a running one."""
    data = Runtime(url).task_queue.cancel_job(job_id, wait=wait)
    if as_json:
        output.print_json(data)
        return
    if data["status"] in ("canceled", "stopped"):
        click.echo(f"job {job_id} {data['status']}")
    else:
        click.echo(f"job {job_id} is {data['status']}; its worker was told to stop it")


@click.command()
@url_option
@click.option("--queue", "-q", "queue", multiple=True, help="Requeue every failed job of this queue.")
@click.option("--all", "all_queues", is_flag=True, help="Requeue every failed job of every queue.")
@click.option("--job-id", "-j", "job_ids", multiple=True, help="Requeue this failed job (repeatable).")
@json_option
def requeue(
    url: str | None, queue: tuple[str, ...], all_queues: bool, job_ids: tuple[str, ...], as_json: bool
) -> None:
    """Put failed jobs back on their queues."""
    if not (queue or all_queues or job_ids):
        raise InvalidJobOptionError("say what to requeue: --queue Q, --all or --job-id ID", field="queue")
    runtime = Runtime(url)
    if job_ids:
        for job_id in job_ids:
            runtime.task_queue.fetch_job(job_id)
        done = admin.requeue_failed(runtime.connection, job_ids=list(job_ids))
    else:
        names = list(queue) if queue else monitor.known_queues(runtime.connection, runtime.settings.queues)
        for name in names:
            runtime.task_queue.queue(name)
        done = admin.requeue_failed(runtime.connection, queues=names)
    if as_json:
        output.print_json({"requeued": done})
    else:
        click.echo(f"requeued {len(done)} job(s)")


@click.command()
@url_option
@click.option("--queue", "-q", "queue", multiple=True, required=True, help="Queue to empty (repeatable).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def empty(url: str | None, queue: tuple[str, ...], yes: bool) -> None:
    """Delete every queued job of a queue (CAUTION: the jobs are gone)."""
    runtime = Runtime(url)
    stats = {
        s.name: s.queued
        for s in monitor.queue_stats(runtime.connection, [runtime.task_queue.queue(q).name for q in queue])
    }
    if not yes:
        summary = ", ".join(f"{name} ({count} job(s))" for name, count in stats.items())
        if not click.confirm(f"Delete every queued job of {summary}?", default=False):
            click.echo("nothing deleted", err=True)
            raise SystemExit(exits.FAILURE)
    for name in queue:
        removed = admin.empty_queue(runtime.connection, name)
        click.echo(f"emptied {name}: {removed} job(s) deleted")


def register(group: click.Group) -> None:
    for command in (enqueue, status, cancel, requeue, empty):
        group.add_command(command)
