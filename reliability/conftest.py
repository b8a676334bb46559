"""The reliability suite uses the shared fixtures (testkit/, through the root conftest.py) and
adds its ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.ledger import Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl")
