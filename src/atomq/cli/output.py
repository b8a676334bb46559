"""Printing for the CLI: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

_console: Console | None = None


def console() -> Console:
    """The stdout console (built lazily so tests capturing output see it)."""
    global _console  # noqa: PLW0603 - one console per process, created on first use
    if _console is None or _console.file is not sys.stdout:
        # Piped output (scripts, logs, tests) gets wide rows rather than truncated columns.
        width = None if sys.stdout.isatty() else 200
        _console = Console(file=sys.stdout, highlight=False, soft_wrap=True, width=width)
    return _console


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a simple table; ``None`` cells show as a dash."""
    console().print(make_table(title, columns, rows))


def make_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """The table :func:`table` prints, for a live view to redraw."""
    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        justify = "right" if column.lower() in _NUMERIC else "left"
        grid.add_column(column, justify=justify, no_wrap=column.lower() in ("job id", "name"))  # type: ignore[arg-type]
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    return grid


def line(text: str = "") -> None:
    """Print one line (rich markup allowed)."""
    console().print(text)


def age(seconds: float | None) -> str | None:
    """``3s``, ``4m12s``, ``2h05m``, ``3d4h`` or ``None``."""
    if seconds is None:
        return None
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


_NUMERIC = {
    "queued",
    "started",
    "finished",
    "failed",
    "scheduled",
    "deferred",
    "canceled",
    "ok",
    "jobs",
    "pid",
}
