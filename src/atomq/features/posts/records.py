"""Reading and moving post records: every state change is a compare-and-set ``UPDATE``.

Each change that wins also adds a :class:`PostEvent` (the post's history), in its transaction.

An ``UPDATE ... WHERE id = ? AND <the state we expect>`` changes the row only if nobody
changed it first; its row count says whether we won. This is what keeps two runs of a job,
an API edit and the reconciler from stepping on each other, on SQLite and PostgreSQL alike,
without holding locks across an outside call.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, Update, bindparam, select, update
from sqlalchemy.sql import ColumnElement

from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from atomq.features.posts.models import Account, PostEvent, ScheduledPost

logger = logging.getLogger("atomq.features.posts")

_POSTS: Table = ScheduledPost.__table__  # type: ignore[assignment]
_EVENTS: Table = PostEvent.__table__  # type: ignore[assignment]

#: The history row every recorded change adds, built once (it is on every publish's path).
_INSERT_EVENT = _EVENTS.insert()


def update_post(
    database: Database, post_id: str, where: list[ColumnElement[bool]], values: dict[str, Any]
) -> bool:
    """Set ``values`` on the post if it matches ``where``; True when it did (committed)."""
    values.setdefault("updated_at", utcnow())
    # RETURNING hands back the row as changed (the history needs its new status, revision and
    # attempts) in the same statement: on SQLite the writer lock is held for the transaction,
    # so every statement saved in it is publishing time saved for every other post.
    statement = (
        update(_POSTS)
        .where(ScheduledPost.id == post_id, *where)
        .values(**values)
        .returning(ScheduledPost.status, ScheduledPost.revision, ScheduledPost.attempts)
    )
    with database.engine.begin() as connection:
        return _apply(
            connection,
            post_id,
            statement,
            {},
            at=values["updated_at"],
            status_changed="status" in values,
            recorded="status" in values or "revision" in values,
            detail=values.get("last_error"),
        )


class PreparedUpdate:
    """:func:`update_post` for one shape of change, built once and run with parameters.

    ``values`` and ``where`` may hold :func:`~sqlalchemy.bindparam` placeholders (named
    ``p_<something>``: SQLAlchemy keeps the column names for itself), filled per call. The hot
    moves of publishing (claiming a scheduled post, recording a publish) use one each: building
    and hashing a new statement per post was most of what those steps cost in Python.
    """

    def __init__(self, where: list[ColumnElement[bool]], values: dict[str, Any]) -> None:
        self.statement = (
            update(_POSTS)
            .where(ScheduledPost.id == bindparam("p_post_id"), *where)
            .values(updated_at=bindparam("p_updated_at"), **values)
            .returning(ScheduledPost.status, ScheduledPost.revision, ScheduledPost.attempts)
        )
        self.status_changed = "status" in values
        self.recorded = self.status_changed or "revision" in values

    def __call__(
        self, database: Database, post_id: str, *, last_error: str | None = None, **params: Any
    ) -> bool:
        """Apply the change to ``post_id`` with ``params`` (``p_`` omitted); True when it matched
        (committed, with its history event). ``last_error`` is the event's detail."""
        with database.engine.begin() as connection:
            return self.on(connection, post_id, last_error=last_error, **params)

    def many(self, database: Database, changes: list[tuple[str, dict[str, Any]]]) -> list[bool | Exception]:
        """Several changes (post id, params) in one transaction: whether each matched, in order.

        Should the transaction fail, each change is made again alone, so that one change's
        failure (its exception, in its place) is its own.
        """
        try:
            with database.engine.begin() as connection:
                return [self.on(connection, post_id, **params) for post_id, params in changes]
        except Exception as exc:
            if len(changes) == 1:
                return [exc]
            logger.warning("%d post changes made together failed (%r); making each alone", len(changes), exc)
        results: list[bool | Exception] = []
        for post_id, params in changes:
            try:
                results.append(self(database, post_id, **params))
            except Exception as exc:
                results.append(exc)
        return results

    def on(
        self, connection: Connection, post_id: str, *, last_error: str | None = None, **params: Any
    ) -> bool:
        """:meth:`__call__` inside the caller's transaction on ``connection`` (several changes
        committed together)."""
        now = utcnow()
        bound = {f"p_{name}": value for name, value in params.items()}
        bound |= {"p_post_id": post_id, "p_updated_at": now}
        return _apply(
            connection,
            post_id,
            self.statement,
            bound,
            at=now,
            status_changed=self.status_changed,
            recorded=self.recorded,
            detail=last_error,
        )


def _apply(
    connection: Connection,
    post_id: str,
    statement: Update,
    params: dict[str, Any],
    *,
    at: datetime,
    status_changed: bool,
    recorded: bool,
    detail: str | None,
) -> bool:
    """Run one compare-and-set UPDATE of ``post_id`` and, when it matched and ``recorded``, add
    the post's new state to its history (issue 15), in the caller's transaction on ``connection``.

    A Core statement on a connection, not the ORM session: nothing here needs the identity
    map, and the session's bulk-update machinery was a fifth of a publish's CPU.
    """
    row = connection.execute(statement, params).first()
    if row is None:
        return False
    if recorded:
        connection.execute(
            _INSERT_EVENT,
            {
                "post_id": post_id,
                "at": at,
                "status": row.status,
                "event": "status" if status_changed else "edited",
                "revision": row.revision,
                "attempts": row.attempts,
                "detail": detail if status_changed else None,
            },
        )
    return True


#: load_post's query, built once (like PreparedUpdate: every publish reads its post).
_LOAD = select(ScheduledPost, Account).join(Account).where(ScheduledPost.id == bindparam("post_id"))


def load_post(database: Database, post_id: str) -> tuple[ScheduledPost, Account] | None:
    """The post and its account (one query), detached from any session; None when there is no such post."""
    with database.reading() as session:
        row = session.execute(_LOAD, {"post_id": post_id}).first()
        session.expunge_all()
    if row is None:
        return None
    return row[0], row[1]


_LOAD_MANY = (
    select(ScheduledPost, Account).join(Account).where(ScheduledPost.id.in_(bindparam("ids", expanding=True)))
)


def load_posts(database: Database, post_ids: list[str]) -> dict[str, tuple[ScheduledPost, Account]]:
    """:func:`load_post` for several posts in one query: each found post and its account, by id.

    Posts of the same account share one detached Account object.
    """
    with database.reading() as session:
        rows = session.execute(_LOAD_MANY, {"ids": post_ids}).all()
        session.expunge_all()
    return {row[0].id: (row[0], row[1]) for row in rows}


def post_events(database: Database, post_id: str) -> list[PostEvent]:
    """A post's history, oldest first, detached from any session."""
    query = select(PostEvent).where(PostEvent.post_id == post_id).order_by(PostEvent.at, PostEvent.id)
    with database.session() as session:
        events = list(session.scalars(query))
        session.expunge_all()
    return events
