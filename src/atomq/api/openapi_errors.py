"""The error answers in the OpenAPI document.

FastAPI documents only the success answer and its own validation error shape, but atomq answers
every failure with ``{"error": {"code", "message", "field"}}`` (see :mod:`atomq.api.errors`):
401/403 where a token is needed, 404/409 where a path names something, 413 for bodies over the
limit, 422 for invalid input and 503 when Redis or the database is unavailable. Clients
generated from the document, and the schema fuzzing in reliability/, need those answers listed
with their real shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

#: The error document's schema (components/schemas/Error).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable reason."},
                "message": {"type": "string", "description": "A sentence saying what to change."},
                "field": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "description": "The input at fault, when one is.",
                },
            },
        }
    },
}

_DESCRIPTIONS = {
    "400": "The request body cannot be parsed at all.",
    "401": "No token, or a token that is not valid.",
    "403": "The token's scope does not allow this.",
    "404": "No such resource (or endpoint).",
    "409": "The resource is in a state that does not allow this, or cannot be read.",
    "413": "The request body is over the size limit.",
    "422": "The input is invalid; `field` names it.",
    "503": "Redis or the database is unavailable; try again (see Retry-After).",
}


def _statuses(path: str, operation: dict[str, Any]) -> list[str]:
    statuses = ["422", "503"]
    if operation.get("security"):
        statuses += ["401", "403"]
    if "{" in path or operation.get("requestBody") or "parameters" in operation:
        statuses += ["404", "409"]
    if operation.get("requestBody"):
        statuses += ["400", "413"]
    return statuses


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` list atomq's error answers on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        # FastAPI's own validation-error shape is never sent (atomq's handler replaces it).
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in _statuses(path, operation):
                    responses[status] = {"description": _DESCRIPTIONS[status], "content": reference}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
