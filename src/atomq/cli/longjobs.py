"""Long-running jobs: ``atomq progress JOB_ID`` and ``atomq stop JOB_ID``."""

from __future__ import annotations

import time
from typing import Any

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.features.longjobs.progress import job_view, live_state, progress_and_liveness
from atomq.features.longjobs.stopping import MAX_GRACE_SECONDS, stop_job


def print_progress_lines(runtime: Runtime, job_id: str, status: dict[str, Any]) -> None:
    """After ``atomq status``: progress and liveness, for a job that reported or is running."""

    raw = live_state(runtime.connection, job_id)
    if not raw and status["status"] != "started":
        return
    progress, liveness = progress_and_liveness(status, raw, runtime.task_queue.fetch_job(job_id))
    _print_extra({"progress": progress, "liveness": liveness})


def print_view(data: dict[str, Any]) -> None:
    """The status dictionary, then progress and liveness lines."""
    for key, value in data["job"].items():
        click.echo(f"{key:>11}: {'-' if value is None else value}")
    _print_extra(data)


def _print_extra(data: dict[str, Any]) -> None:
    progress = data["progress"]
    if progress:
        message = f"  {progress['message']}" if progress["message"] else ""
        click.echo(f"{'progress':>11}: {progress['percent']:.1f}%{message}")
    live = data["liveness"]
    age = live["heartbeat_age"]
    beat = f" (last heartbeat {age:.1f}s ago)" if age is not None else ""
    click.echo(f"{'liveness':>11}: {live['state']}{beat}")
    if live["stop_requested_at"]:
        click.echo(f"{'stop asked':>11}: {live['stop_requested_at']} (kill after {live['stop_deadline']})")


@click.command()
@click.argument("job_id")
@url_option
@click.option("--watch", "-w", is_flag=True, help="Show a live progress bar until the job ends.")
@json_option
def progress(job_id: str, url: str | None, watch: bool, as_json: bool) -> None:
    """Show a job's status with its progress and liveness (heartbeat)."""
    runtime = Runtime(url)
    tq = runtime.task_queue
    if not watch:
        data = job_view(runtime.connection, tq.fetch_job(job_id))
        if as_json:
            output.print_json(data)
        else:
            print_view(data)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=output.console(),
    ) as bar:
        task_id = bar.add_task(job_id, total=1.0, note="")
        while True:
            data = job_view(runtime.connection, tq.fetch_job(job_id))
            fraction = (data["progress"] or {}).get("fraction") or 0.0
            note = (data["progress"] or {}).get("message") or data["job"]["status"]
            bar.update(task_id, completed=fraction, note=f"{note} [{data['liveness']['state']}]")
            if data["liveness"]["state"] == "ended":
                break
            time.sleep(0.5)
    print_view(data)


@click.command()
@click.argument("job_id")
@url_option
@click.option(
    "--grace",
    type=click.FloatRange(0, MAX_GRACE_SECONDS),
    envvar="ATOMQ_STOP_GRACE_SECONDS",
    help="Seconds the job gets to stop by itself before it is killed (default 10; 0 kills at once).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for the job to end.",
)
@json_option
def stop(job_id: str, url: str | None, grace: float | None, wait: float, as_json: bool) -> None:
    """Stop a running job cleanly (job_stopping() turns true), killing it after --grace seconds.

    A job that has not started yet is canceled.
    """
    data = stop_job(Runtime(url).task_queue, job_id, grace=grace, wait=wait)
    if as_json:
        output.print_json(data)
        return
    state = data["job"]["status"]
    if state in ("stopped", "canceled", "finished", "failed"):
        click.echo(f"job {job_id} {state}")
    else:
        click.echo(f"job {job_id} is {state}; asked to stop (killed at {data['liveness']['stop_deadline']})")


def register(group: click.Group) -> None:
    for command in (progress, stop):
        group.add_command(command)
