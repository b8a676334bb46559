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

from sqlalchemy import Connection, Dialect, String, Table, Update, bindparam, column, select, update, values
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.sql.sqltypes import NullType
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.visitors import iterate, replacement_traverse

from atomq.core.timeutil import utcnow
from atomq.db.engine import Database
from atomq.features.posts.models import Account, PostEvent, ScheduledPost

logger = logging.getLogger("atomq.features.posts")

_POSTS: Table = ScheduledPost.__table__  # type: ignore[assignment]
_EVENTS: Table = PostEvent.__table__  # type: ignore[assignment]

#: The history row every recorded change adds, built once (it is on every publish's path).
_INSERT_EVENT = _EVENTS.insert()

_NO_OPTIONS: dict[str, Any] = {}

#: Changes one batched UPDATE carries at most (a few parameters each: far under SQLite's
#: 32,766 and PostgreSQL's 65,535 parameters per statement).
BATCH_ROWS = 256


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
        self._where = where
        self._values = values
        #: The ``p_`` parameters of one change (name without ``p_``) and their SQL types.
        self._params = _parameters(where, values)
        #: Batched statements by database and size (see _bucket). Two threads building the
        #: same one at once both build it; either copy serves.
        self._sized: dict[tuple[str, int], _Batched] = {}

    def __call__(
        self, database: Database, post_id: str, *, last_error: str | None = None, **params: Any
    ) -> bool:
        """Apply the change to ``post_id`` with ``params`` (``p_`` omitted); True when it matched
        (committed, with its history event). ``last_error`` is the event's detail."""
        with database.engine.begin() as connection:
            return self.on(connection, post_id, last_error=last_error, **params)

    def many(self, database: Database, changes: list[tuple[str, dict[str, Any]]]) -> list[bool | Exception]:
        """Several changes (post id, params) in one transaction: whether each matched, in order.

        The changes go in one ``UPDATE ... FROM (VALUES ...)`` per :data:`BATCH_ROWS` and their
        history rows in one insert: as a pair of statements per post, a post's claim and record
        cost 170 us of CPU on SQLite and 1.2 ms of waiting on PostgreSQL; batched, 70 us and
        0.2 ms (a batch of 300). A post named twice is changed once by the batch
        and then again alone, as it would be in turn. Should the transaction fail, each change
        is made again alone, so that one change's failure (its exception, in its place) is its
        own.
        """
        try:
            with database.engine.begin() as connection:
                return self._together(connection, changes)
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

    def _together(
        self, connection: Connection, changes: list[tuple[str, dict[str, Any]]]
    ) -> list[bool | Exception]:
        seen: set[str] = set()
        batch: list[int] = []
        again: list[int] = []
        for index, (post_id, _) in enumerate(changes):
            (again if post_id in seen else batch).append(index)
            seen.add(post_id)
        results: list[bool | Exception] = [False] * len(changes)
        if len(batch) == 1:  # one change: the prepared statement, compiled once
            again = batch + again
            batch = []
        now = utcnow()
        for start in range(0, len(batch), BATCH_ROWS):
            chunk = batch[start : start + BATCH_ROWS]
            # SQLite's RETURNING names only the updated table's columns: rows come back by id.
            position = {changes[index][0]: index for index in chunk}
            size = _bucket(len(chunk))
            params: dict[str, Any] = {"p_updated_at": now}
            for row, index in enumerate(chunk):
                post_id, given = changes[index]
                params[f"r{row}_post_id"] = post_id
                for name in self._params:
                    params[f"r{row}_{name}"] = given[name]
            changed = self._batched(connection, size).run(connection, params)
            events = []
            for row in changed:
                index = position[row.id]
                results[index] = True
                if self.recorded:
                    detail = changes[index][1].get("last_error") if self.status_changed else None
                    events.append(_event(row.id, row, now, self.status_changed, detail))
            if events:
                connection.execute(_INSERT_EVENT, events)
        for index in sorted(again):
            post_id, params = changes[index]
            results[index] = self.on(connection, post_id, **params)
        return results

    def prepare(self, connection: Connection, rows: int) -> None:
        """Build and compile now the batched statements :meth:`many` uses for up to ``rows``
        changes (a worker's warm-up: a few milliseconds each, not to be paid by a burst)."""
        size = 2
        while size <= _bucket(min(rows, BATCH_ROWS)):
            self._batched(connection, size)
            size *= 2

    def _batched(self, connection: Connection, size: int) -> _Batched:
        """This change for ``size`` posts as one statement (built once per size and database)
        that returns the posts it changed; row ``i``'s parameters are ``r<i>_post_id`` and
        ``r<i>_<name>``, rows not given match nothing."""
        key = (connection.dialect.name, size)
        found = self._sized.get(key)
        if found is not None:
            return found
        kinds: dict[str, TypeEngine[Any]] = {"post_id": String(), **self._params}
        given = values(*(column(name, kind) for name, kind in kinds.items()), name="given")
        # Typed parameters: their types convert the values (times stored as every write does).
        rows = [
            tuple(bindparam(f"r{row}_{name}", type_=kind) for name, kind in kinds.items())
            for row in range(size)
        ]
        table = given.data(rows).cte("given")

        def per_row(element: Any, **_: Any) -> Any:
            if isinstance(element, BindParameter) and element.key[2:] in self._params:
                return table.c[element.key[2:]]
            return None

        statement = (
            update(_POSTS)
            .where(
                ScheduledPost.id == table.c.post_id,
                *(replacement_traverse(w, _NO_OPTIONS, per_row) for w in self._where),
            )
            .values(
                updated_at=bindparam("p_updated_at"),
                **{
                    name: replacement_traverse(value, _NO_OPTIONS, per_row)
                    if isinstance(value, ColumnElement)
                    else value
                    for name, value in self._values.items()
                },
            )
            .returning(ScheduledPost.id, ScheduledPost.status, ScheduledPost.revision, ScheduledPost.attempts)
        )
        built = self._sized[key] = _Batched(statement, connection.dialect)
        return built

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
        connection.execute(_INSERT_EVENT, _event(post_id, row, at, status_changed, detail))
    return True


class _Batched:
    """A batched change compiled once, run with SQLAlchemy's driver-level execution.

    Hundreds of bound parameters through ``Connection.execute`` cost more in SQLAlchemy (its
    cache key walks every one of them, each call) than the statements they replace, so the
    statement is compiled here once and its parameters put in order and converted by their
    types' own bind processors, as SQLAlchemy would.
    """

    def __init__(self, statement: Update, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = compiled.positiontup is not None
        self.names = list(compiled.positiontup or compiled.binds)
        #: Each parameter: its value when the statement holds it, and its type's converter.
        self.binds = [
            (compiled.binds[name].value, compiled.binds[name].type.bind_processor(dialect))
            for name in self.names
        ]

    def run(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        """The rows changed, given ``params`` (rows missing from it match nothing)."""
        converted = []
        for name, (held, process) in zip(self.names, self.binds, strict=True):
            value = params.get(name, held)
            converted.append(value if process is None or value is None else process(value))
        given = tuple(converted) if self.positional else dict(zip(self.names, converted, strict=True))
        return list(connection.exec_driver_sql(self.sql, given).all())


def _bucket(rows: int) -> int:
    """The batched statement size for ``rows`` changes: the next power of two (the rest padded
    with rows that match nothing), so that a handful of statements are built and compiled."""
    return 1 << (rows - 1).bit_length()


def _event(post_id: str, row: Any, at: datetime, status_changed: bool, detail: str | None) -> dict[str, Any]:
    """The history row of a change that matched (``row``: the post's status, revision and
    attempts as changed)."""
    return {
        "post_id": post_id,
        "at": at,
        "status": row.status,
        "event": "status" if status_changed else "edited",
        "revision": row.revision,
        "attempts": row.attempts,
        "detail": detail if status_changed else None,
    }


def _parameters(where: list[ColumnElement[bool]], values: dict[str, Any]) -> dict[str, TypeEngine[Any]]:
    """The ``p_`` parameters of a change's ``where`` and ``values`` (name without ``p_``) with
    the SQL type of the column each is compared with or stored in."""
    found: dict[str, TypeEngine[Any]] = {}
    for name, value in values.items():
        if isinstance(value, BindParameter) and value.key.startswith("p_"):
            found[value.key[2:]] = _POSTS.c[name].type
    for clause in [*where, *(v for v in values.values() if isinstance(v, ClauseElement))]:
        for element in iterate(clause):
            if isinstance(element, BindParameter) and element.key.startswith("p_"):
                kind = element.type
                found.setdefault(element.key[2:], String() if isinstance(kind, NullType) else kind)
    return found


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
