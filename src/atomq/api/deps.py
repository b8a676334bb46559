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


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets the request through only with a token of at least ``scope``."""

    async def check(
        state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "unauthorized",
                "a bearer token is required (Authorization: Bearer ...)",
                headers=challenge,
            )
        principal = authenticate(state.tokens, credentials.credentials)
        if principal is None:
            raise ApiError(401, "unauthorized", "the bearer token is not valid", headers=challenge)
        if not principal.allows(scope):
            raise ApiError(
                403, "forbidden", f"this needs the {scope!r} scope; the token has {principal.scope!r}"
            )
        return principal

    return check


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]
