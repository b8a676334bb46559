"""``atomq pause QUEUE`` / ``atomq resume QUEUE``: hold one queue while the others flow (issue 15).

``rq suspend`` stops every worker; a pause stops only the claiming from one queue. Jobs still
arrive on it (the scheduler moves due ones on time) and wait until ``atomq resume``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.ops import admin


@click.command()
@click.argument("queue")
@url_option
@json_option
def pause(queue: str, url: str | None, as_json: bool) -> None:
    """Stop workers taking jobs from QUEUE (within a second); jobs still arrive and wait."""
    runtime = Runtime(url)
    since = admin.pause_queue(runtime.connection, queue)
    stamp = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
    if as_json:
        output.print_json({"queue": queue, "paused": True, "paused_since": stamp})
    else:
        click.echo(f"queue {queue} paused since {stamp}; `atomq resume {queue}` lets workers take from it")


@click.command()
@click.argument("queue")
@url_option
@json_option
def resume(queue: str, url: str | None, as_json: bool) -> None:
    """Let workers take jobs from QUEUE again."""
    runtime = Runtime(url)
    was_paused = admin.resume_queue(runtime.connection, queue)
    if as_json:
        output.print_json({"queue": queue, "paused": False, "was_paused": was_paused})
    elif was_paused:
        click.echo(f"queue {queue} resumed")
    else:
        click.echo(f"queue {queue} was not paused; nothing to do")


def register(group: click.Group) -> None:
    group.add_command(pause)
    group.add_command(resume)
