"""JSON in and out of the API, in one place.

In: every route is a :class:`JsonRoute`, whose request body is decoded by :func:`decode_body`
before FastAPI reads it. Python's ``json`` silently keeps the last of two equal keys
(``{"task": "ping", "task": "process_scheduled_post"}`` would run the second) and turns a
``"\\ud800"`` escape into a lone surrogate that no database, Redis reply or JSON answer can
carry; both are refused here with a 422 naming the field.

Out: stored text is escaped where it is read (:func:`atomq.core.text.loads`), so answers
keep FastAPI's fast serializer; :class:`SafeJSONResponse`, which the error answers use, shows
any text that still cannot be encoded escaped (``\\ud800`` as six visible characters) instead
of failing the answer.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from atomq.core.errors import DuplicateKeyError
from atomq.core.options import check_text
from atomq.core.text import printable, printable_tree

#: A JSON escape of a UTF-16 surrogate: the only way a UTF-8 body can hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Repeated(dict[str, Any]):
    """An object in which ``key`` appeared more than once (found again by :func:`_inspect`)."""

    key: str = ""


def _repeated(obj: dict[str, Any], pairs: list[tuple[str, Any]]) -> _Repeated:
    seen: set[str] = set()
    repeated = _Repeated(obj)
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _inspect(value: Any, path: str) -> None:
    """Raise for the first repeated key or invalid text in ``value`` (document order)."""
    if isinstance(value, str):
        check_text(value, path or "body")
    elif isinstance(value, dict):
        if isinstance(value, _Repeated):
            key = printable(value.key)
            where = f"the object at {path}" if path else "the body"
            raise DuplicateKeyError(
                f"the key {key!r} appears more than once in {where}; send each key once",
                field=_join(path, key),
            )
        for key, item in value.items():
            check_text(key, _join(path, printable(key)))
            _inspect(item, _join(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _inspect(item, f"{path}[{index}]")


def decode_body(raw: bytes) -> Any:
    """The JSON document ``raw``; repeated keys and lone surrogates raise a 422 naming the field.

    Malformed JSON raises :class:`json.JSONDecodeError` (or :class:`UnicodeDecodeError`) as
    ``json.loads`` does. The tree is walked only when it may hold a problem: a key was
    repeated, or the body holds a surrogate escape (or is not UTF-8, where escapes cannot be
    spotted in the bytes).
    """
    repeats = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeats
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        repeats = True
        return _repeated(obj, items)

    value = json.loads(raw, object_pairs_hook=pairs)
    if repeats or _SURROGATE_ESCAPE.search(raw) or b"\x00" in raw:
        _inspect(value, "")
    return value


class _StrictRequest(Request):
    """A request whose ``json()`` is :func:`decode_body`."""

    _decoded: Any

    async def json(self) -> Any:
        if not hasattr(self, "_decoded"):
            self._decoded = decode_body(await self.body())
        return self._decoded

    def may_carry_json(self) -> bool:
        """Whether FastAPI may read this body as JSON (no content type, or a JSON one)."""
        kind = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        return (
            not kind
            or kind == "application/json"
            or (kind.startswith("application/") and kind.endswith("+json"))
        )


class JsonRoute(APIRoute):
    """An API route whose JSON body goes through :func:`decode_body` first.

    FastAPI turns any error raised while it reads a body into a bare 400, so the body is
    decoded here, before FastAPI's handler runs: a repeated key or invalid text becomes the
    usual 422 naming the field. Malformed JSON is left for FastAPI to report in its own words.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict(request: Request) -> Response:
            request = _StrictRequest(request.scope, request.receive)
            if takes_body and request.may_carry_json():
                # Not JSON at all: FastAPI reads it again and answers 422 (or 400) in its words.
                with contextlib.suppress(ValueError, RecursionError):
                    await request.json()
            return await handler(request)

        return strict


class SafeJSONResponse(JSONResponse):
    """Starlette's JSON answer, except that text UTF-8 cannot encode is shown escaped rather
    than failing the answer (and the connection) with a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(printable_tree(content))
