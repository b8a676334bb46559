"""Probes: ``/health`` (the process answers) and ``/ready`` (Redis and the database answer)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from atomq.api.deps import State
from atomq.api.jsonio import JsonRoute
from atomq.core.errors import AtomqError

router = APIRouter(tags=["probes"], route_class=JsonRoute)


@router.get("/health", summary="The API process is alive")
@router.get("/api/v1/tasks/health", include_in_schema=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Redis and the database are reachable",
    responses={503: {"description": "Something the API needs is unreachable"}},
)
@router.get("/api/v1/tasks/ready", include_in_schema=False)
def ready(state: State) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        state.redis.ping()
        checks["redis"] = "ok"
    except (redis.RedisError, OSError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        state.database.ping()
        checks["database"] = "ok"
    except AtomqError as exc:
        checks["database"] = f"unreachable: {exc.message.split(': ', 1)[-1]}"
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
