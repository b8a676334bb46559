"""Tasks every atomq process registers."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from atomq.engine.tasks import task


@task("ping", queue="default", timeout=30, result_ttl=600)
def ping(payload: Any = None) -> dict[str, Any]:
    """Answer with where and when it ran: `atomq doctor` uses it to prove the path end to end."""
    return {
        "pong": True,
        "payload": payload,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at": datetime.now(UTC).isoformat(),
    }
