"""Figures a scenario produced: printed (``pytest -s`` or the scripts/reliability log shows them)
and written to ``reliability/results/<scenario>.json`` (not committed), which docs/reliability.md
quotes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from testkit.sizes import FULL

RESULTS = Path(__file__).resolve().parent / "results"


def report(scenario: str, **figures: Any) -> dict[str, Any]:
    """Print and store one scenario's figures; returns them with the run's size and time."""
    entry = {
        "scenario": scenario,
        "size": "full" if FULL else "ci",
        "at": time.strftime("%FT%TZ", time.gmtime()),
    }
    entry.update(figures)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{scenario}{'' if FULL else '.ci'}.json").write_text(json.dumps(entry, indent=2) + "\n")
    print(f"\n[reliability] {json.dumps(entry)}", file=sys.stderr)
    return entry
