"""An API client on the test Redis with a throw-away SQLite database (the queue and job
endpoints never touch the database, so running them on both databases would only double the
time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient

from atomq.api.app import create_app
from atomq.api.auth import entry_for
from atomq.core.settings import Settings, load_settings
from atomq.db.engine import Database
from testkit.fixtures import TOKENS


def auth(scope: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


@contextmanager
def api_client(
    settings: Settings, connection: redis.Redis, tmp_path: Path, **overrides: Any
) -> Iterator[TestClient]:
    entries = [entry_for(f"test-{scope}", scope, token) for scope, token in TOKENS.items()]
    url = f"sqlite:///{tmp_path / 'api.db'}"
    app_settings = settings.model_copy(update={"api_tokens": entries, "database_url": url, **overrides})
    database = Database.from_settings(load_settings(database_url=url))
    app = create_app(app_settings, redis_client=connection, database=database)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        database.dispose()
