"""Domain records (scheduled posts, workflow runs, batches): SQLAlchemy 2 models and Alembic
migrations. SQLite under ``./var`` by default; PostgreSQL through ``DATABASE_URL``."""

from __future__ import annotations

from atomq.db.base import Base
from atomq.db.engine import Database, database_url, make_engine

__all__ = ["Base", "Database", "database_url", "make_engine"]
