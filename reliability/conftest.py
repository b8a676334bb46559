"""The reliability suite reuses the test suite's fixtures (a real redis-server per session,
settings, CLI runs, worker processes, databases, the API) and adds its ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.ledger import Ledger

# Re-exported so pytest finds them here too (tests/conftest.py only applies under tests/).
from tests.conftest import (  # noqa: F401
    api,
    api_settings,
    burst,
    cli,
    connection,
    database,
    database_url,
    env,
    postgres_url,
    procs,
    redis_server,
    redis_url,
    settings,
    tq,
)

pytest_plugins = ["tests.posts_support"]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3")
