"""``atomq doctor``: diagnose the guide's common issues."""

from __future__ import annotations

import click
from rich.markup import escape

from atomq.cli import exits, output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.ops import doctor as checks

_MARKS = {
    checks.OK: "[green]ok  [/green]",
    checks.WARN: "[yellow]warn[/yellow]",
    checks.FAIL: "[red]FAIL[/red]",
}


@click.command()
@url_option
@click.option(
    "--queue", "-q", help="Queue to send the ping job to (default: default, else the first served)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds to wait for a worker to run the ping job.",
)
@json_option
def doctor(url: str | None, queue: str | None, timeout: float, as_json: bool) -> None:
    """Check Redis, persistence, workers, queues, failures and the scheduler; then ping end to end.

    Exits 1 when any check fails.
    """
    runtime = Runtime(url)
    results = []
    for check in checks.run_checks(runtime.settings, ping_queue=queue, ping_timeout=timeout):
        results.append(check)
        if not as_json:
            output.line(f"{_MARKS[check.status]} {check.name:<12} {escape(check.detail)}")
    if as_json:
        output.print_json([c.as_dict() for c in results])
    if any(c.status == checks.FAIL for c in results):
        raise SystemExit(exits.FAILURE)


def register(group: click.Group) -> None:
    group.add_command(doctor)
