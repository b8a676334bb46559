"""How big a scenario runs: CI-sized by default, the issue's full size with ATOMQ_RELIABILITY=full.

CI must stay well under its time budget, so the CI run keeps every mechanism (the kills, the
crash, the outage, the failover) but with fewer jobs and shorter outages.
"""

from __future__ import annotations

import os

FULL = os.environ.get("ATOMQ_RELIABILITY", "").lower() == "full"


def size(ci: int | float, full: int | float) -> int | float:
    """The CI figure, or the full one under ``ATOMQ_RELIABILITY=full``."""
    return full if FULL else ci
