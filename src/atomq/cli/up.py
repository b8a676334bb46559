"""``atomq up``: run Redis, workers and the scheduler locally until Ctrl-C."""

from __future__ import annotations

import click

from atomq.cli.common import Runtime


@click.command()
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Worker processes to run.",
)
def up(workers: int) -> None:
    """Start everything locally: a private Redis (unless REDIS_URL is set), workers, scheduler.

    Data lives under ./var (ATOMQ_DATA_DIR); jobs survive a restart. Ctrl-C stops it all.
    """
    from atomq.devserver import DevServer

    raise SystemExit(DevServer(Runtime().settings, workers=workers).run())


def register(group: click.Group) -> None:
    group.add_command(up)
