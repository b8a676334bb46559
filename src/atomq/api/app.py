"""``create_app()``: the FastAPI application, built from settings (never at import time).

Run it with ``atomq serve`` (uvicorn); OpenAPI is at ``/docs`` and ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import redis
from fastapi import FastAPI

from atomq.api import errors
from atomq.api.limits import BodySizeLimit
from atomq.api.openapi_errors import document_errors
from atomq.api.routes import ROUTERS
from atomq.api.state import AppState
from atomq.core.settings import Settings, load_settings
from atomq.db.engine import Database
from atomq.engine.tasks import load_task_modules


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    database: Database | None = None,
) -> FastAPI:
    """Build the API. Pass ``redis_client``/``database`` to share ones you own (tests)."""
    settings = settings or load_settings()
    load_task_modules(settings.task_modules)
    state = AppState(settings, redis_client=redis_client, database_=database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.aclose()
        state.close()

    app = FastAPI(
        title="atomq",
        version=version("atomq"),
        summary="Background tasks: queues, jobs, scheduled posts, workflows and batches.",
        lifespan=lifespan,
    )
    app.state.atomq = state
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    errors.install(app)  # after every middleware: its last resort wraps them all
    for router in ROUTERS:
        app.include_router(router)
    document_errors(app)
    return app


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory atomq.api.app:app_from_environment``."""
    return create_app()
