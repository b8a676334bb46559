"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"}}``.

Errors become HTTP statuses here and only here; routes and services raise atomq's errors.
An error nothing expected becomes a 500 here too (:class:`LastResort`), and the connection
it came on stays open.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atomq.api.jsonio import SafeJSONResponse as JSONResponse
from atomq.core.connection import describe_client, full_message, is_out_of_memory
from atomq.core.errors import (
    AtomqError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RedisFullError,
    UnavailableError,
)

logger = logging.getLogger("atomq.api")

_STATUS: list[tuple[type[AtomqError], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (UnavailableError, 503),
]


class ApiError(Exception):
    """An error raised by the HTTP layer itself (authentication, body size, routing)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The error document every non-2xx response carries."""
    return {"error": {"code": code, "message": _shorten(message), "field": field}}


#: A run of non-blank characters this long in a message is input echoed back (a 10 KB id).
_LONG_WORD = re.compile(r"\S{120,}")


def _shorten(message: str) -> str:
    """The message with echoed-back input cut short, so an error never mirrors a huge value."""
    return _LONG_WORD.sub(lambda m: f"{m.group(0)[:60]}...({len(m.group(0))} characters)", message)


#: Seconds a client should wait before retrying a write Redis refused for lack of memory
#: (someone has to free memory or raise maxmemory first).
FULL_RETRY_AFTER = 30


def _retry_after(exc: AtomqError) -> dict[str, str] | None:
    """A ``Retry-After`` header for errors that pass once Redis is back or has room again."""
    if isinstance(exc, RedisFullError):
        return {"Retry-After": str(FULL_RETRY_AFTER)}
    if isinstance(exc, UnavailableError):
        return {"Retry-After": "5"}
    return None


def status_for(exc: AtomqError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(AtomqError)
    async def _atomq(request: Request, exc: AtomqError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.field), status_code=status, headers=_retry_after(exc)
        )

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            # Its location is a character position, not a field: name the body instead.
            position = tuple(first.get("loc") or ("?",))[-1]
            context = first.get("ctx")
            reason = (
                context.get("error", "cannot be parsed") if isinstance(context, dict) else "cannot be parsed"
            )
            message = f"the request body is not valid JSON ({reason} at character {position})"
            return JSONResponse(error_body("invalid_json", message, "body"), status_code=422)
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header"))
        message = "; ".join(_describe(e) for e in errors[:5])
        return JSONResponse(error_body("invalid_request", message, field or None), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        field = None
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words for a body that is not UTF-8 / not parseable at all.
            code, field = "malformed_body", "body"
            message = "the request body is not valid JSON (UTF-8 text expected)"
        return JSONResponse(
            error_body(code, message, field),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
        return JSONResponse(
            error_body("redis_unavailable", "Redis is unreachable; try again shortly"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(redis.ResponseError)
    async def _redis_refused(request: Request, exc: redis.ResponseError) -> JSONResponse:

        if is_out_of_memory(exc):
            # A write outside TaskQueue (which raises RedisFullError itself): same answer.
            where = describe_client(request.app.state.atomq.redis)
            logger.error("%s %s: Redis is full: %s", request.method, request.url.path, exc)
            return JSONResponse(
                error_body(RedisFullError.code, full_message(where)),
                status_code=503,
                headers={"Retry-After": str(FULL_RETRY_AFTER)},
            )
        logger.error("%s %s: Redis refused a command: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("redis_error", "Redis refused the operation"), status_code=503)

    # Last, so that it wraps every other middleware (see LastResort).
    app.add_middleware(LastResort)


class LastResort:
    """ASGI middleware: an exception no handler took is logged and answered with the 500 error
    document, and goes no further.

    Starlette's own last resort (``ServerErrorMiddleware``, where a handler for ``Exception``
    lands) answers and then re-raises for the server to log; uvicorn, seeing an exception after
    the answer started, closes the connection. So every 500 reset a keep-alive connection,
    and the client's next request on it failed too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("%s %s: unexpected error", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer went out: closing the connection is all that is left
            response = JSONResponse(
                error_body("internal_error", "unexpected server error; see the API log"), status_code=500
            )
            await response(scope, receive, send)


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
    message = str(error.get("msg", "invalid"))
    return f"{location}: {message}" if location else message
