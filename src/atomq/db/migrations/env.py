"""Alembic environment: runs against the connection atomq hands it (see atomq.db.migrate)."""

from __future__ import annotations

from alembic import context

from atomq.db.base import Base
from atomq.engine import plugins

plugins.load("models")  # every feature's tables on the metadata
target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = context.config.attributes["engine"]
        with engine.begin() as connection:
            _configure_and_run(connection)
        return
    _configure_and_run(connection)


def _configure_and_run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
