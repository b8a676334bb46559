"""The ``atomq`` command: a thin layer over atomq's functions, one module per command group.

Every option can also be set through an environment variable: ``--url`` reads ``REDIS_URL``
(as the guide's commands do), the rest ``ATOMQ_<COMMAND>_<OPTION>`` (for example
``ATOMQ_WORKER_COUNT``). Errors print one line on stderr and exit with a code from
:mod:`atomq.cli.exits`; a traceback means a bug.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import click
import redis

from atomq.cli import backup, doctor, exits, jobs, monitor, pausing, posts, serve, up, worker
from atomq.cli import batches as batch_commands
from atomq.cli import longjobs as longjob_commands
from atomq.cli import recurring as recurring_commands
from atomq.cli import workflows as workflow_commands
from atomq.core.connection import is_out_of_memory
from atomq.core.errors import (
    AtomqError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    UnknownTaskError,
)

_EXIT_CODES: list[tuple[type[AtomqError], int]] = [
    (UnavailableError, exits.UNAVAILABLE),
    (ConfigurationError, exits.CONFIG),
    (UnknownTaskError, exits.NOT_FOUND),
    (NotFoundError, exits.NOT_FOUND),
    (ConflictError, exits.CONFLICT),
    (InvalidInputError, exits.USAGE),
]


def exit_code_for(error: AtomqError) -> int:
    """The exit code for an atomq error."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return exits.FAILURE


class AtomqGroup(click.Group):
    """A click group that turns atomq's errors into one line and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtomqError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            click.echo(f"error: lost the connection to Redis: {exc}", err=True)
            ctx.exit(exits.UNAVAILABLE)
        except redis.ResponseError as exc:
            if is_out_of_memory(exc):
                # Outside TaskQueue (which raises RedisFullError): the same line, the same code.
                click.echo(f"error: Redis is out of memory (maxmemory reached) and refused: {exc}", err=True)
                ctx.exit(exits.UNAVAILABLE)
            click.echo(f"error: Redis refused the command: {exc}", err=True)
            ctx.exit(exits.FAILURE)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(exits.INTERRUPTED)


@click.group(
    cls=AtomqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="atomq", prog_name="atomq")
def cli() -> None:
    """atomq: background tasks on Redis, with the operations surface built in.

    Start everything locally with `atomq up`; run workers with `atomq worker`;
    see what is happening with `atomq info`, `atomq workers`, `atomq failed`, `atomq doctor`.
    """


def _register_commands() -> None:

    for module in (worker, monitor, jobs, pausing, doctor, serve, up, backup, posts):
        module.register(cli)
    # Issue 6: long-running jobs, batches, workflows, recurring jobs.
    for module in (longjob_commands, batch_commands, workflow_commands, recurring_commands):
        module.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    for stream in (sys.stdout, sys.stderr):
        # Text stored with a lone surrogate prints as \udXXX instead of ending in a traceback.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    cli.main(args=argv, prog_name="atomq", auto_envvar_prefix="ATOMQ")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
