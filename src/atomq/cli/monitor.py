"""Monitoring commands: ``info``, ``workers``, ``scheduler``, ``failed``, ``tasks``."""

from __future__ import annotations

import time

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.cli.recurring import listing, print_listing  # issue 6: recurring jobs
from atomq.core.logging import setup_logging
from atomq.core.options import validate_queue_name
from atomq.engine.scheduler import Scheduler
from atomq.engine.tasks import load_task_modules
from atomq.engine.tasks import registry as task_registry
from atomq.ops import monitor


def _queues(runtime: Runtime, chosen: tuple[str, ...]) -> list[str]:
    for name in chosen:
        validate_queue_name(name)
    return list(chosen) or monitor.known_queues(runtime.connection, runtime.settings.queues)


#: Seconds between two refreshes of ``atomq info --watch`` when --interval is not given.
WATCH_INTERVAL_SECONDS = 2.0

_INFO_COLUMNS = [
    "Queue", "Queued", "Started", "Finished", "Failed", "Scheduled", "Deferred", "Canceled",
    "Oldest", "Paused",
]  # fmt: skip


@click.command()
@url_option
@click.option("--queue", "-q", "queue", multiple=True, help="Only this queue (repeatable).")
@click.option(
    "--interval", "-i", type=click.FloatRange(min=0.2), help="Refresh every N seconds until Ctrl-C."
)
@click.option(
    "--watch", "-w", is_flag=True, help="A live view redrawn in place until Ctrl-C (every 2 s or --interval)."
)
@json_option
def info(url: str | None, queue: tuple[str, ...], interval: float | None, watch: bool, as_json: bool) -> None:
    """Queue sizes by state, and the workers serving them; paused queues say since when."""
    runtime = Runtime(url)
    if watch and not as_json and output.console().is_terminal:
        _watch_info(runtime, queue, interval or WATCH_INTERVAL_SECONDS)
        return
    if watch:  # piped or --json: a fresh table (or JSON document) at each refresh, as --interval
        interval = interval or WATCH_INTERVAL_SECONDS
    try:
        _print_info(runtime, queue, interval, as_json)
    except KeyboardInterrupt:
        if not interval:
            raise
        # Ctrl-C is how a refreshing view ends: not an error.


def _print_info(runtime: Runtime, queue: tuple[str, ...], interval: float | None, as_json: bool) -> None:
    while True:
        stats, workers = _read_info(runtime, queue)
        if as_json:
            output.print_json(
                {"queues": [s.as_dict() for s in stats], "workers": [w.as_dict() for w in workers]}
            )
        else:
            if interval and output.console().is_terminal:
                output.console().clear()
            output.console().print(_info_view(stats, workers))
        if not interval:
            return
        time.sleep(interval)


def _read_info(
    runtime: Runtime, queue: tuple[str, ...]
) -> tuple[list[monitor.QueueStats], list[monitor.WorkerInfo]]:
    names = _queues(runtime, queue)
    return monitor.queue_stats(runtime.connection, names), monitor.list_workers(runtime.connection)


def _info_view(stats: list[monitor.QueueStats], workers: list[monitor.WorkerInfo]) -> Group:
    """The queue table and the workers line, as one renderable (printed once or redrawn live)."""
    now = time.time()
    rows = [
        [
            s.name,
            s.queued,
            s.started,
            s.finished,
            s.failed,
            s.scheduled,
            s.deferred,
            s.canceled,
            output.age(s.oldest_queued_age),
            None if s.paused_since is None else f"yes, {output.age(max(0.0, now - s.paused_since))}",
        ]
        for s in stats
    ]
    serving = {s.name: sum(1 for w in workers if s.name in w.queues) for s in stats}
    summary = f"{len(workers)} worker(s); per queue: " + ", ".join(f"{n}={c}" for n, c in serving.items())
    return Group(output.make_table("Queues", _INFO_COLUMNS, rows), Text(""), Text(summary))


def _watch_info(runtime: Runtime, queue: tuple[str, ...], interval: float) -> None:
    """Redraw ``atomq info`` in place until Ctrl-C, which ends it quietly (exit 0)."""
    with Live(console=output.console(), auto_refresh=False, transient=False) as live:
        try:
            while True:
                stats, workers = _read_info(runtime, queue)
                view = _info_view(stats, workers)
                stamp = time.strftime("%H:%M:%S")
                footer = Text(f"updated {stamp}, every {interval:g}s; Ctrl-C to quit", style="dim")
                live.update(Group(view, footer), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return


@click.command()
@url_option
@click.option("--queue", "-q", "queue", multiple=True, help="Only workers listening on this queue.")
@json_option
def workers(url: str | None, queue: tuple[str, ...], as_json: bool) -> None:
    """Registered workers: state, queues, current job, counters."""
    runtime = Runtime(url)
    found = monitor.list_workers(runtime.connection)
    if queue:
        found = [w for w in found if set(queue) & set(w.queues)]
    if as_json:
        output.print_json([w.as_dict() for w in found])
        return
    output.table(
        f"{len(found)} worker(s)",
        ["Name", "State", "Queues", "Host", "PID", "Current job", "OK", "Failed", "Last heartbeat"],
        [
            [
                w.name,
                w.state,
                ",".join(w.queues),
                w.hostname,
                w.pid,
                ",".join(w.current_jobs) or None,
                w.successful_jobs,
                w.failed_jobs,
                w.last_heartbeat,
            ]
            for w in found
        ],
    )


@click.group(invoke_without_command=True)
@url_option
@click.option("--queue", "-q", "queue", multiple=True, help="Only this queue (repeatable).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def scheduler(ctx: click.Context, url: str | None, queue: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List scheduled jobs, soonest first, and who runs the scheduler.

    `atomq scheduler run` runs a standalone scheduler.
    """
    if ctx.invoked_subcommand is not None:
        return
    runtime = Runtime(url)
    names = _queues(runtime, queue)
    jobs = monitor.list_scheduled(runtime.connection, names, limit=limit)
    status = monitor.scheduler_status(runtime.connection)

    recurring_jobs = listing(runtime)
    if as_json:
        output.print_json({"scheduler": status, "jobs": jobs, "recurring": recurring_jobs})
        return
    leader = status["leader"] or "none - scheduled jobs will not run until a scheduler starts"
    output.line(f"Scheduler leader: {leader}  ({len(status['schedulers'])} running)")
    output.table(
        f"{len(jobs)} scheduled job(s)",
        ["Job ID", "Queue", "Task", "Due at", "Due in", "Description"],
        [
            [j["job_id"], j["queue"], j["task"], j["due_at"], f"{j['due_in']:.1f}s", j["description"]]
            for j in jobs
        ],
    )
    if recurring_jobs:
        print_listing(recurring_jobs)


@scheduler.command("run")
@url_option
@click.option("--burst", is_flag=True, help="Move what is due now, then exit.")
@click.option("--log-level", envvar="ATOMQ_LOG_LEVEL", default="INFO", show_default=True)
@click.option("--log-file", envvar="ATOMQ_LOG_FILE", type=click.Path(dir_okay=False))
@click.option("--log-format", envvar="ATOMQ_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text")
def scheduler_run(
    url: str | None, burst: bool, log_level: str, log_file: str | None, log_format: str
) -> None:
    """Run a standalone scheduler (any number may run; each job is still enqueued once)."""
    import signal

    runtime = Runtime(url)
    setup_logging(log_level, log_format, log_file)
    load_task_modules(runtime.settings.task_modules)
    worker = Scheduler(runtime.connection, queues=list(runtime.settings.queues), settings=runtime.settings)

    def stop(signum: int, frame: object) -> None:
        worker.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run(burst=burst)


@click.command()
@url_option
@click.option("--queue", "-q", "queue", multiple=True, help="Only this queue (repeatable).")
@click.option("--job-id", "-j", help="Show one failed job with its arguments and traceback.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@json_option
def failed(
    url: str | None, queue: tuple[str, ...], job_id: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """Failed jobs, newest first, with their error; --job-id shows the traceback."""
    runtime = Runtime(url)
    if job_id:
        runtime.task_queue.fetch_job(job_id)  # validates the id and says clearly when it is unknown
        detail = monitor.failure_detail(runtime.connection, job_id)
        if as_json:
            output.print_json(detail)
            return
        for key in (
            "job_id",
            "queue",
            "task",
            "status",
            "worker",
            "enqueued_at",
            "started_at",
            "ended_at",
            "args",
            "kwargs",
            "error",
        ):
            click.echo(f"{key:>12}: {detail[key]}")
        click.echo("\n" + (detail["traceback"] or "(no traceback recorded)"))
        return
    names = _queues(runtime, queue)
    rows = monitor.list_failed(runtime.connection, names, offset=offset, limit=limit)
    if as_json:
        output.print_json(rows)
        return
    output.table(
        f"{len(rows)} failed job(s)",
        ["Job ID", "Queue", "Task", "Status", "Ended at", "Error"],
        [[r["job_id"], r["queue"], r["task"], r["status"], r["ended_at"], r["error"]] for r in rows],
    )


@click.command()
@json_option
def tasks(as_json: bool) -> None:
    """Registered tasks and their defaults (ATOMQ_TASK_MODULES decides which are loaded)."""
    runtime = Runtime()
    load_task_modules(runtime.settings.task_modules)
    specs = list(task_registry)
    if as_json:
        output.print_json(
            [
                {
                    "name": s.name,
                    "queue": s.queue,
                    "timeout": s.timeout,
                    "retries": s.retry.max if s.retry else 0,
                    "description": s.description.splitlines()[0] if s.description else "",
                }
                for s in specs
            ]
        )
        return
    output.table(
        f"{len(specs)} task(s)",
        ["Name", "Queue", "Timeout", "Retries", "Description"],
        [
            [
                s.name,
                s.queue,
                s.timeout,
                s.retry.max if s.retry else 0,
                s.description.splitlines()[0] if s.description else None,
            ]
            for s in specs
        ],
    )


def register(group: click.Group) -> None:
    for command in (info, workers, scheduler, failed, tasks):
        group.add_command(command)
