"""FastAPI dependencies: the app state, a database session, and scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from atomq.api.auth import Principal, authenticate
from atomq.api.errors import ApiError
from atomq.api.state import AppState
from atomq.engine.task_queue import TaskQueue

_bearer = HTTPBearer(auto_error=False, description="An atomq API token (`atomq token create`).")

#: The bearer-token extractor, for routes whose access rule depends on settings (``/metrics``).
bearer = _bearer


# The cheap dependencies are async on purpose: FastAPI runs a sync dependency in its thread
# pool, and the hop costs more than the work (it doubled the latency of GET /queues).
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.atomq
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_task_queue(state: State) -> TaskQueue:
    return state.task_queue


Queue = Annotated[TaskQueue, Depends(get_task_queue)]


def get_session(state: State) -> Iterator[Session]:
    """A session committed when the request succeeds, rolled back when it fails."""
    with state.database.session() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]


async def current_principal(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal | None:
    """The token's principal, or ``None`` (no token, or not a valid one). Once per request:
    FastAPI caches a dependency's value, so routes and services share it."""
    if credentials is None or not credentials.credentials:
        return None
    return authenticate(state.tokens, credentials.credentials)


def require(scope: str, *, users: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets the request through only with a token of at least ``scope``.

    A token bound to a user reaches only routes declared with ``users=True`` (a user's
    accounts, posts and workflow runs, which then narrow to that user); everything that spans
    users (queues, jobs, batches, metrics) refuses it with a 403.
    """

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        principal: Annotated[Principal | None, Depends(current_principal)],
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "unauthorized",
                "a bearer token is required (Authorization: Bearer ...)",
                headers=challenge,
            )
        if principal is None:
            raise ApiError(401, "unauthorized", "the bearer token is not valid", headers=challenge)
        if not principal.allows(scope):
            raise ApiError(
                403, "forbidden", f"this needs the {scope!r} scope; the token has {principal.scope!r}"
            )
        if principal.user is not None and not users:
            raise ApiError(
                403,
                "forbidden",
                f"this token acts for user {principal.user!r} only: it reaches that user's accounts, "
                "scheduled posts and workflow runs, not what all users share",
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]

#: For a user's own records (accounts, posts, workflow runs): a token bound to a user is let
#: through, and the route narrows what it reaches to that user (:func:`owner_of`).
UserReader = Annotated[Principal, Depends(require("read", users=True))]
UserWriter = Annotated[Principal, Depends(require("write", users=True))]


def user_for_new(principal: Principal, asked: str | None) -> str:
    """The ``user_id`` a new record gets: the token's user (asking for another is a 403), else
    the one asked for, else the token's name."""
    if principal.user is None:
        return asked or principal.name
    if asked is not None and asked != principal.user:
        raise ApiError(403, "forbidden", f"this token acts for user {principal.user!r} only", field="user_id")
    return principal.user


def user_filter(principal: Principal, asked: str | None) -> str | None:
    """The ``user_id`` a listing is narrowed to: the token's user (asking for another is a
    403), else the one asked for (or none)."""
    if principal.user is None:
        return asked
    if asked and asked != principal.user:
        raise ApiError(403, "forbidden", f"this token acts for user {principal.user!r} only", field="user_id")
    return principal.user
