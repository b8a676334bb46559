"""The ledger itself: writes from several processes all land, and duplicates are reported."""

from __future__ import annotations

import subprocess
import sys

from reliability.ledger import Ledger


def test_ledger_counts_writes_from_concurrent_processes(ledger: Ledger) -> None:
    script = "import sys; from reliability.ledger import record\nfor i in range(200): record(f'k{i}')"
    children = [subprocess.Popen([sys.executable, "-c", script], env={**ledger.env()}) for _ in range(3)]
    for child in children:
        assert child.wait(timeout=60) == 0
    expected = [f"k{i}" for i in range(200)]
    assert ledger.missing(expected) == []
    assert ledger.duplicates() == dict.fromkeys(expected, 3)
    assert ledger.missing(["never"]) == ["never"]
