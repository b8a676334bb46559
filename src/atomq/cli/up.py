"""``atomq up``: run Redis, workers and the scheduler locally until Ctrl-C."""

from __future__ import annotations

import click

from atomq.cli.common import Runtime
from atomq.cli.devserver import DevServer
from atomq.core.logging import setup_logging


@click.command()
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Worker processes to run.",
)
@click.option("--log-level", envvar="ATOMQ_LOG_LEVEL", default="INFO", show_default=True)
@click.option(
    "--log-file",
    envvar="ATOMQ_LOG_FILE",
    type=click.Path(dir_okay=False),
    help="Append every process's logs (API, workers, scheduler) to this file instead of stderr.",
)
@click.option("--log-format", envvar="ATOMQ_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text")
def up(workers: int, log_level: str, log_file: str | None, log_format: str) -> None:
    """Start everything locally: a private Redis (unless REDIS_URL is set), workers, scheduler.

    Data lives under ./var (ATOMQ_DATA_DIR); jobs survive a restart. Ctrl-C stops it all.
    """

    settings = Runtime(log_level=log_level, log_format=log_format, log_file=log_file).settings
    setup_logging(log_level, log_format, log_file)
    raise SystemExit(DevServer(settings, workers=workers).run())


def register(group: click.Group) -> None:
    group.add_command(up)
