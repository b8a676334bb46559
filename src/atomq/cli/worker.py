"""``atomq worker``: run workers (and the scheduler) under a supervisor."""

from __future__ import annotations

import click

from atomq.cli.common import Runtime, url_option
from atomq.core.logging import setup_logging
from atomq.core.options import validate_queue_name
from atomq.engine.supervisor import Supervisor, WorkerOptions
from atomq.engine.tasks import load_task_modules


@click.command()
@click.argument("queues", nargs=-1, metavar="[QUEUES]...")
@click.option("--name", "-n", help="Worker name (with --count N, names are NAME-1..NAME-N).")
@url_option
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    envvar="ATOMQ_DEFAULT_TIMEOUT",
    help="Default job timeout in seconds, for jobs whose task and call set none.",
)
@click.option(
    "--log-level",
    envvar="ATOMQ_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-file", envvar="ATOMQ_LOG_FILE", type=click.Path(dir_okay=False), help="Append logs to this file."
)
@click.option(
    "--log-format",
    envvar="ATOMQ_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.option("--burst", "-b", is_flag=True, help="Run the jobs queued now, then exit.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Each worker exits after this many jobs.")
@click.option("--verbose", "-v", is_flag=True, help="Same as --log-level DEBUG.")
@click.option(
    "--count",
    "-c",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes to run and keep running.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    envvar="ATOMQ_WORKER_CONCURRENCY",
    help="Jobs each worker process runs at once (default 100): async tasks on one event loop, "
    "tasks that wait on threads; tasks that compute run one after the other. --count spreads "
    "computing over cores, --concurrency lets waiting work overlap.",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run a scheduler that moves due jobs onto their queues.",
)
@click.option(
    "--worker-class",
    type=click.Choice(["fast", "rq"]),
    default="fast",
    show_default=True,
    envvar="ATOMQ_WORKER_CLASS",
    help="fast: jobs run in the worker process, one Redis round trip each; rq: a process per job.",
)
def worker(
    queues: tuple[str, ...],
    name: str | None,
    url: str | None,
    timeout: int | None,
    log_level: str,
    log_file: str | None,
    log_format: str,
    burst: bool,
    max_jobs: int | None,
    verbose: bool,
    count: int,
    concurrency: int | None,
    scheduler: bool,
    worker_class: str,
) -> None:
    """Run workers on QUEUES (highest priority first; default: ATOMQ_QUEUES).

    A supervisor keeps --count worker processes alive, restarts one that dies and gives its
    jobs back at once. SIGTERM or Ctrl-C lets running jobs finish; a second one kills them.
    """
    level = "DEBUG" if verbose else log_level.upper()
    runtime = Runtime(url, log_level=level, log_format=log_format, log_file=log_file)
    settings = runtime.settings
    setup_logging(level, log_format, log_file)
    names = list(queues) or list(settings.queues)
    for queue in names:
        validate_queue_name(queue)
    load_task_modules(settings.task_modules)
    options = WorkerOptions(
        queues=names,
        name=name,
        burst=burst,
        max_jobs=max_jobs,
        default_timeout=timeout,
        log_level=level,
        worker_class=worker_class,
        concurrency=concurrency,
    )
    supervisor = Supervisor(settings, options, count=count, with_scheduler=scheduler)
    raise SystemExit(supervisor.run())


def register(group: click.Group) -> None:
    group.add_command(worker)
