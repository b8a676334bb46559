"""Reading and moving post records: every state change is a compare-and-set ``UPDATE``.

An ``UPDATE ... WHERE id = ? AND <the state we expect>`` changes the row only if nobody
changed it first; its row count says whether we won. This is what keeps two runs of a job,
an API edit and the reconciler from stepping on each other, on SQLite and PostgreSQL alike,
without holding locks across an outside call.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.sql import ColumnElement

from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from atomq.features.posts.models import Account, ScheduledPost


def update_post(
    database: Database, post_id: str, where: list[ColumnElement[bool]], values: dict[str, Any]
) -> bool:
    """Set ``values`` on the post if it matches ``where``; True when it did (committed)."""
    values.setdefault("updated_at", utcnow())
    statement = (
        update(ScheduledPost)
        .where(ScheduledPost.id == post_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    with database.session() as session:
        result = cast(CursorResult[Any], session.execute(statement))
        return result.rowcount == 1


def load_post(database: Database, post_id: str) -> tuple[ScheduledPost, Account] | None:
    """The post and its account (one query), detached from any session; None when there is no such post."""
    query = select(ScheduledPost, Account).join(Account).where(ScheduledPost.id == post_id)
    with database.session() as session:
        row = session.execute(query).first()
        session.expunge_all()
    if row is None:
        return None
    return row[0], row[1]
