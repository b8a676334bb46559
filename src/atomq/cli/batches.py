"""``atomq batch``: queue a batch from a file, follow it with a live progress bar, cancel it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.core.errors import InvalidInputError
from atomq.features.batches.progress import BatchProgress, batch_progress
from atomq.features.batches.tracking import cancel_batch


def read_items(path: str) -> list[Any]:
    """Items from a JSON array file or a JSON-lines file (``-`` reads standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}", field="file") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{path}: not JSON or JSON lines ({exc.msg}, line {exc.lineno})", field="file"
        ) from None
    if not isinstance(items, list):
        raise InvalidInputError(f"{path}: expected a JSON array of objects", field="file")
    return items


def _summary(p: BatchProgress) -> str:
    eta = f", about {output.age(p.eta_seconds)} left" if p.eta_seconds is not None else ""
    rate = f", {p.rate:.1f}/s" if p.rate else ""
    return (
        f"{p.ended}/{p.total} done ({p.percent:.1f}%): finished {p.finished}, failed {p.failed}, "
        f"stopped {p.stopped}, canceled {p.canceled}, running {p.running}, queued {p.queued}{rate}{eta}"
    )


def print_progress(p: BatchProgress) -> None:
    """A batch's state and counts, one per line."""
    click.echo(f"batch {p.id}: {p.state} ({p.task} on {p.queue})")
    click.echo(_summary(p))
    if p.estimated_finish_at:
        click.echo(f"estimated finish: {p.estimated_finish_at}")


@click.group()
def batch() -> None:
    """Batches: many calls of one task, followed and canceled as one."""


@batch.command("enqueue")
@click.argument("task")
@click.option(
    "--file", "-f", "path", required=True, help="JSON array or JSON lines of keyword arguments ('-' = stdin)."
)
@url_option
@click.option("--queue", "-q", help="Queue to use instead of the task's own.")
@click.option("--chunk-size", type=click.IntRange(1, 100_000), envvar="ATOMQ_BATCH_CHUNK_SIZE")
@click.option("--batch-id", help="Use this batch id (letters, digits, _ and -).")
@json_option
def batch_enqueue(
    task: str,
    path: str,
    url: str | None,
    queue: str | None,
    chunk_size: int | None,
    batch_id: str | None,
    as_json: bool,
) -> None:
    """Queue one job of TASK per item of --file; print the batch id."""
    runtime = Runtime(url)
    options = {"queue": queue} if queue else {}
    created = runtime.task_queue.enqueue_batch(
        task, read_items(path), batch_id=batch_id, chunk_size=chunk_size, **options
    )
    if as_json:
        output.print_json({"batch_id": created.id, "total": created.total, "queue": created.queue})
    else:
        click.echo(created.id)


@batch.command("status")
@click.argument("batch_id")
@url_option
@click.option(
    "--watch/--no-watch",
    "-w",
    default=None,
    help="Live progress bar until the batch ends (default: when the output is a terminal).",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=0.5, show_default=True)
@json_option
def batch_status(batch_id: str, url: str | None, watch: bool | None, interval: float, as_json: bool) -> None:
    """Counts by status, percent, rate and estimated finish of a batch."""
    runtime = Runtime(url)
    progress = batch_progress(runtime.connection, batch_id)
    if watch is None:
        watch = sys.stdout.isatty() and not as_json
    if watch and progress.state == "running":
        progress = _watch(runtime, batch_id, progress, interval)
    if as_json:
        output.print_json(progress.as_dict())
    else:
        print_progress(progress)


def _watch(runtime: Runtime, batch_id: str, progress: BatchProgress, interval: float) -> BatchProgress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=output.console(),
    ) as bar:
        task_id = bar.add_task(batch_id, total=progress.total, note="")
        while True:
            note = f"ok {progress.finished} failed {progress.failed} running {progress.running}"
            if progress.rate:
                note += f" {progress.rate:.1f}/s"
            if progress.eta_seconds is not None:
                note += f" eta {output.age(progress.eta_seconds)}"
            bar.update(task_id, completed=progress.ended, note=note)
            if progress.state != "running":
                return progress
            time.sleep(interval)
            progress = batch_progress(runtime.connection, batch_id)


@batch.command("cancel")
@click.argument("batch_id")
@url_option
@json_option
def batch_cancel(batch_id: str, url: str | None, as_json: bool) -> None:
    """Cancel every item that has not started (running items finish)."""
    runtime = Runtime(url)
    progress = cancel_batch(runtime.connection, batch_id, result_ttl=runtime.settings.result_ttl)
    if as_json:
        output.print_json(progress.as_dict())
    else:
        print_progress(progress)


def register(group: click.Group) -> None:
    group.add_command(batch)
