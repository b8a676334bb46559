"""Dashboard pages and buttons for running queues (issue 15): one queue with its charts and
its pause/resume button, and the history the charts refresh from.

Built on the helpers of :mod:`atomq.api.routes.dashboard` (session, CSRF, scope, flashes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData

from atomq.api import dashboard_web as web
from atomq.api.deps import State
from atomq.api.routes.dashboard import act, chart_context, render_page
from atomq.api.state import AppState
from atomq.core.errors import AtomqError, NotFoundError
from atomq.core.options import validate_queue_name
from atomq.ops import admin, charts, monitor

router = APIRouter(prefix=web.BASE, include_in_schema=False)


def _queue(state: AppState, name: str, range_name: str) -> Callable[[web.Viewer], dict[str, Any]]:
    def load(who: web.Viewer) -> dict[str, Any]:
        validate_queue_name(name)
        if name not in monitor.known_queues(state.redis, state.settings.queues):
            raise NotFoundError(f"no queue named {name!r}", field="name")
        stats = monitor.queue_stats(state.redis, [name])[0]
        workers = [w for w in monitor.list_workers(state.redis) if name in w.queues]
        return {"queue": stats, "workers": workers, **chart_context(state, range_name, name)}

    return load


@router.get("/queues/{name}")
def queue_page(
    request: Request, state: State, name: str, range_name: Annotated[str, Query(alias="range")] = "1h"
) -> Response:
    return render_page(request, state, "queue.html", _queue(state, name, range_name))


@router.get("/partials/history")
def history_data(
    request: Request,
    state: State,
    range_name: Annotated[str, Query(alias="range")] = "1h",
    queue: str | None = None,
) -> Response:
    """The charts' data as JSON (what ``GET /api/v1/tasks/stats`` returns), for the session."""
    try:
        if web.viewer(request, state) is None:
            return JSONResponse({"detail": "session expired"}, status_code=401)
        found = charts.job_history(state.redis, state.settings.queues, range_name=range_name, queue=queue)
    except AtomqError as exc:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return JSONResponse({"detail": exc.message}, status_code=status)
    except (redis.ConnectionError, redis.TimeoutError):
        return JSONResponse({"detail": "Redis is unreachable"}, status_code=503)
    return web.secure(JSONResponse(found.as_dict()))


@router.post("/queues/{name}/pause")
async def pause_queue(request: Request, state: State, name: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        admin.pause_queue(state.redis, name)
        return f"paused queue {name}: workers leave its jobs alone until it is resumed"

    return await act(request, state, "admin", action)


@router.post("/queues/{name}/resume")
async def resume_queue(request: Request, state: State, name: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        if admin.resume_queue(state.redis, name):
            return f"resumed queue {name}"
        return f"queue {name} was not paused"

    return await act(request, state, "admin", action)
