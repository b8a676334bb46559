"""Tasks of the host-loss scenario (9). Worker processes on every simulated host import this
module through ATOMQ_TASK_MODULES; each host's environment names the host in ``HOST_ENV``.

A job records ``start:<key>:<host>`` in the ledger when an attempt starts and
``done:<key>:<host>`` when it ends, so the scenario knows, per job, which host ran it, when
each attempt started, and whether it ran to its end more than once.
"""

from __future__ import annotations

import os
import time

from atomq import Retry, task
from reliability.ledger import record

#: The environment variable that tells a job which simulated host runs it.
HOST_ENV = "ATOMQ_RELIABILITY_HOST"

#: The task the scenario enqueues.
WORK = "rel_h_work"


@task(WORK, timeout=300, retry=Retry(max=3, delay=0, jitter=0))
def work(key: str, seconds: float) -> str:
    """Record the start, work ``seconds`` (sleeping: the host's CPU stays free), record the end."""
    host = os.environ.get(HOST_ENV, "?")
    record(f"start:{key}:{host}")
    time.sleep(seconds)
    record(f"done:{key}:{host}")
    return host
