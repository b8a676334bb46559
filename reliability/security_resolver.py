"""A name resolver the test controls, for DNS-rebinding checks in real worker processes.

Workers import this module through ATOMQ_TASK_MODULES. When ``ATOMQ_TEST_HOSTS_FILE`` names a
JSON file (``{"name": ["address", ...]}``), ``socket.getaddrinfo`` answers those names from it,
reading the file on every call so the test can change an answer between saving an account and
publishing through it, the way a hostile DNS server would. Other names resolve normally.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_ENV = "ATOMQ_TEST_HOSTS_FILE"
_real_getaddrinfo = socket.getaddrinfo


def _answers(host: Any) -> list[str] | None:
    path = os.environ.get(_ENV)
    if not path or not isinstance(host, str):
        return None
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    answer = table.get(host.lower().rstrip("."))
    return list(answer) if answer is not None else None


def _getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
    addresses = _answers(host)
    if addresses is None:
        return _real_getaddrinfo(host, port, family, type, proto, flags)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    port_number = int(port or 0)
    results = []
    for address in addresses:
        if ":" in address:
            results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port_number, 0, 0)))
        else:
            results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port_number)))
    return results


def install() -> None:
    """Answer names from the hosts file (no-op for names it does not list)."""
    socket.getaddrinfo = _getaddrinfo


@contextmanager
def hosts(path: Path) -> Iterator[None]:
    """Within the block, this process resolves through ``path`` too (for in-process API calls)."""
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = str(path)
    install()
    try:
        yield
    finally:
        socket.getaddrinfo = _real_getaddrinfo
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous


def write(path: Path, table: dict[str, list[str]]) -> None:
    """Replace the answers atomically (a worker may be reading the file)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(table))
    temporary.replace(path)


if os.environ.get(_ENV):
    install()
