"""Tasks of the Redis-fault scenarios (2, 3, 4). Workers import this module through
ATOMQ_TASK_MODULES; each job records its effect in the ledger under the key it was given."""

from __future__ import annotations

import time

from atomq import task
from reliability import ledger

#: The task every Redis-fault scenario enqueues.
RECORD = "reliability_redis_record"


@task(RECORD, retry=3)
def record(key: str, seconds: float = 0.0) -> str:
    """Optionally work for ``seconds`` (so a fault can land mid-job), then record ``key``."""
    if seconds:
        time.sleep(seconds)
    ledger.record(key)
    return key
