"""Reading and moving post records: every state change is a compare-and-set ``UPDATE``.

Each change that wins also adds a :class:`PostEvent` (the post's history), in its transaction.

An ``UPDATE ... WHERE id = ? AND <the state we expect>`` changes the row only if nobody
changed it first; its row count says whether we won. This is what keeps two runs of a job,
an API edit and the reconciler from stepping on each other, on SQLite and PostgreSQL alike,
without holding locks across an outside call.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from atomq.features.posts.models import Account, PostEvent, ScheduledPost


def update_post(
    database: Database, post_id: str, where: list[ColumnElement[bool]], values: dict[str, Any]
) -> bool:
    """Set ``values`` on the post if it matches ``where``; True when it did (committed)."""
    values.setdefault("updated_at", utcnow())
    # RETURNING hands back the row as changed (the history needs its new status, revision and
    # attempts) in the same statement: on SQLite the writer lock is held for the transaction,
    # so every statement saved in it is publishing time saved for every other post.
    statement = (
        update(ScheduledPost)
        .where(ScheduledPost.id == post_id, *where)
        .values(**values)
        .returning(ScheduledPost.status, ScheduledPost.revision, ScheduledPost.attempts)
        .execution_options(synchronize_session=False)
    )
    with database.session() as session:
        row = session.execute(statement).first()
        if row is None:
            return False
        if "status" in values or "revision" in values:
            _record_event(session, post_id, values, row.status, row.revision, row.attempts)
        return True


def _record_event(
    session: Session, post_id: str, values: dict[str, Any], status: str, revision: int, attempts: int
) -> None:
    """Add the post's new state to its history, in the transaction that changed it (issue 15)."""
    session.execute(
        insert(PostEvent).values(
            post_id=post_id,
            at=values["updated_at"],
            status=status,
            event="status" if "status" in values else "edited",
            revision=revision,
            attempts=attempts,
            detail=values.get("last_error") if "status" in values else None,
        )
    )


def load_post(database: Database, post_id: str) -> tuple[ScheduledPost, Account] | None:
    """The post and its account (one query), detached from any session; None when there is no such post."""
    query = select(ScheduledPost, Account).join(Account).where(ScheduledPost.id == post_id)
    with database.reading() as session:
        row = session.execute(query).first()
        session.expunge_all()
    if row is None:
        return None
    return row[0], row[1]


def post_events(database: Database, post_id: str) -> list[PostEvent]:
    """A post's history, oldest first, detached from any session."""
    query = select(PostEvent).where(PostEvent.post_id == post_id).order_by(PostEvent.at, PostEvent.id)
    with database.session() as session:
        events = list(session.scalars(query))
        session.expunge_all()
    return events
