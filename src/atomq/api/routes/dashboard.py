"""The web dashboard at ``/dashboard``: server-rendered pages over the same services as the API.

Pages: the overview (queues, workers, scheduler, recent failures, timeline, progress), the
failed-job list, and one job. Buttons post forms (requeue, delete) guarded by the session's
CSRF token and the token's scope. ``/dashboard/partials/...`` serves the live part of each
page for the auto-refresh script.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import quote

import redis
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from atomq.api import dashboard_web as web
from atomq.api.auth import authenticate, hash_token
from atomq.api.deps import State
from atomq.api.state import AppState
from atomq.core.errors import AtomqError, InvalidInputError, NotFoundError, UnavailableError
from atomq.core.options import validate_queue_name
from atomq.dashboard import overview
from atomq.dashboard.sections import load_sources
from atomq.dashboard.sessions import csrf_matches
from atomq.engine.plugins import Context
from atomq.ops import admin, charts, monitor
from atomq.ops.admin import delete_job

logger = logging.getLogger("atomq.dashboard")

router = APIRouter(prefix=web.BASE, include_in_schema=False)

_STATIC = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "charts.js": "text/javascript",
    "uPlot.iife.min.js": "text/javascript",  # vendored, see static/VENDORED.md
    "uPlot.min.css": "text/css",
}


def context(state: AppState, who: web.Viewer) -> Context:
    load_sources(state.settings.dashboard_modules)
    return Context(
        settings=state.settings,
        connection=state.redis,
        now=datetime.now(UTC),
        scope=who.principal.scope,
        database_factory=lambda: state.database,
    )


def render_page(
    request: Request,
    state: AppState,
    template: str,
    load: Callable[[web.Viewer], dict[str, Any]],
    *,
    partial: bool = False,
) -> Response:
    """Render a read-only page (or its live fragment) for a logged-in viewer."""
    try:
        who = web.viewer(request, state)
        if who is None:
            return (
                web.fragment_error(401, "session expired; reload to log in")
                if partial
                else web.to_login(request)
            )
        data = load(who)
        if not partial:
            data["flashes"] = web.store(state).pop_flashes(who.session_id)
    except NotFoundError as exc:
        if partial:
            return web.fragment_error(404, exc.message)
        return web.problem(request, state, 404, "Not found", exc.message)
    except InvalidInputError as exc:  # a hand-edited address (a range, a filter): say which part
        message = f"{exc.field}: {exc.message}" if exc.field else exc.message
        if partial:
            return web.fragment_error(400, message)
        return web.problem(request, state, 400, "Bad request", message)
    except (redis.ConnectionError, redis.TimeoutError, UnavailableError) as exc:
        logger.error("dashboard %s: Redis unreachable: %s", request.url.path, exc)
        message = "Redis is unreachable; the figures cannot be read. Retrying..."
        if partial:
            return web.fragment_error(503, message)
        return web.problem(request, state, 503, "Redis unreachable", message)
    name = f"_{template}" if partial else template
    return web.render(request, state, name, data, who=who)


# -- pages ---------------------------------------------------------------------------------


def _overview(state: AppState, range_name: str | None = None) -> Callable[[web.Viewer], dict[str, Any]]:
    def load(who: web.Viewer) -> dict[str, Any]:
        ctx = context(state, who)
        view = overview.gather(ctx)
        data: dict[str, Any] = {"view": view, "now": view.now, "live_url": f"{web.BASE}/partials/overview"}
        if range_name is not None:  # the full page draws the history; its live part does not
            data.update(chart_context(state, range_name))
        return data

    return load


def chart_context(state: AppState, range_name: str, queue: str | None = None) -> dict[str, Any]:
    """What ``_charts.html`` needs: the history of ``queue`` (or every queue) over ``range_name``."""
    found = charts.job_history(state.redis, state.settings.queues, range_name=range_name, queue=queue)
    return {"history": found, "ranges": charts.RANGE_NAMES, "chart_queue": queue}


@router.get("")
@router.get("/")
def overview_page(
    request: Request, state: State, range_name: Annotated[str, Query(alias="range")] = "1h"
) -> Response:
    return render_page(request, state, "overview.html", _overview(state, range_name))


@router.get("/partials/overview")
def overview_partial(request: Request, state: State) -> Response:
    return render_page(request, state, "overview.html", _overview(state), partial=True)


def _failed(state: AppState, queue: str | None, page: int) -> Callable[[web.Viewer], dict[str, Any]]:
    def load(who: web.Viewer) -> dict[str, Any]:
        ctx = context(state, who)
        listing = overview.failed_page(ctx, queue=queue or None, page=page)
        query = f"?page={listing.page}" + (f"&queue={queue}" if queue else "")
        return {"listing": listing, "now": ctx.now, "live_url": f"{web.BASE}/partials/failed{query}"}

    return load


@router.get("/failed")
def failed_page(
    request: Request, state: State, queue: str | None = None, page: Annotated[int, Query(ge=1)] = 1
) -> Response:
    return render_page(request, state, "failed.html", _failed(state, queue, page))


@router.get("/partials/failed")
def failed_partial(
    request: Request, state: State, queue: str | None = None, page: Annotated[int, Query(ge=1)] = 1
) -> Response:
    return render_page(request, state, "failed.html", _failed(state, queue, page), partial=True)


def _job(state: AppState, job_id: str) -> Callable[[web.Viewer], dict[str, Any]]:
    def load(who: web.Viewer) -> dict[str, Any]:
        job = overview.job_detail(state.task_queue, job_id, scope=who.principal.scope)
        return {"job": job, "live_url": f"{web.BASE}/partials/jobs/{job_id}"}

    return load


@router.get("/jobs/{job_id}")
def job_page(request: Request, state: State, job_id: str) -> Response:
    return render_page(request, state, "job.html", _job(state, job_id))


@router.get("/partials/jobs/{job_id}")
def job_partial(request: Request, state: State, job_id: str) -> Response:
    return render_page(request, state, "job.html", _job(state, job_id), partial=True)


# -- actions -------------------------------------------------------------------------------


async def act(
    request: Request, state: AppState, scope: str, action: Callable[[FormData, web.Viewer], str]
) -> Response:
    """Check session, origin, CSRF token and scope; run ``action``; flash its outcome; redirect."""
    form = await request.form()
    back = web.safe_next(str(form.get("next") or ""))
    try:
        who = web.viewer(request, state)
    except (redis.ConnectionError, redis.TimeoutError):
        return web.problem(
            request, state, 503, "Redis unreachable", "Redis is unreachable; nothing was changed."
        )
    if who is None:
        # Back to the page the button was on once logged in (not to this POST-only address).
        return web.redirect(f"{web.BASE}/login?next={quote(back, safe='/')}")
    if not web.same_origin(request):
        logger.warning(
            "dashboard: refused a cross-origin %s from %s", request.url.path, request.headers.get("origin")
        )
        return web.problem(request, state, 403, "Refused", "the request came from another site", who)

    if not csrf_matches(who.session, str(form.get("csrf") or "")):
        return web.problem(
            request,
            state,
            403,
            "Refused",
            "the form's security token is missing or stale; reload the page",
            who,
        )
    if not who.allows(scope):
        return web.problem(request, state, 403, "Not allowed", web.scope_needed(scope), who)
    sessions = web.store(state)
    try:
        message = action(form, who)
    except AtomqError as exc:
        sessions.flash(who.session_id, "bad", exc.message)
    except (redis.ConnectionError, redis.TimeoutError):
        return web.problem(
            request, state, 503, "Redis unreachable", "Redis is unreachable; nothing was changed.", who
        )
    else:
        logger.info("dashboard: %s by %s (%s)", message, who.principal.name, who.principal.scope)
        sessions.flash(who.session_id, "good", message)
    return web.redirect(back)


@router.post("/jobs/{job_id}/requeue")
async def requeue_job(request: Request, state: State, job_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        done = admin.requeue_failed(state.redis, job_ids=[job_id])
        return f"requeued job {job_id}" if done else f"job {job_id} was no longer in the failed list"

    return await act(request, state, "write", action)


@router.post("/jobs/{job_id}/delete")
async def delete_job_action(request: Request, state: State, job_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        status = delete_job(state.redis, job_id)
        return f"deleted job {job_id} (it was {status})"

    return await act(request, state, "admin", action)


@router.post("/failed/requeue")
async def requeue_failed(request: Request, state: State) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        queue = str(form.get("queue") or "")
        if queue:
            validate_queue_name(queue)
        names = [queue] if queue else monitor.known_queues(state.redis, state.settings.queues)
        done = admin.requeue_failed(state.redis, queues=names)
        where = f"queue {queue}" if queue else "every queue"
        return f"requeued {len(done)} failed job(s) of {where}"

    return await act(request, state, "write", action)


# -- login ---------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, state: State, next: str | None = None) -> Response:
    import secrets

    nonce = secrets.token_urlsafe(24)
    response = web.render(
        request, state, "login.html", {"nonce": nonce, "next": web.safe_next(next), "error": None}
    )
    _set_cookie(request, response, web.LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/login")
def login(
    request: Request,
    state: State,
    token: Annotated[str, Form(max_length=512)] = "",
    nonce: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    import hmac

    target = web.safe_next(next)
    cookie = request.cookies.get(web.LOGIN_COOKIE, "")
    if not web.same_origin(request) or not cookie or not hmac.compare_digest(cookie.encode(), nonce.encode()):
        return _login_again(request, state, target, "the login form expired; try again", 403)
    principal = authenticate(state.tokens, token.strip()) if token.strip() else None
    if principal is None:
        client = request.client.host if request.client else "?"
        logger.warning("dashboard: failed login from %s", client)
        return _login_again(request, state, target, "that token is not valid", 401)
    if principal.user is not None:
        message = "this token acts for one user; the dashboard, which shows every user's work, needs another"
        return _login_again(request, state, target, message, 403)
    try:
        session_id, _ = web.store(state).create(principal.name, bytes.fromhex(hash_token(token.strip())))
    except (redis.ConnectionError, redis.TimeoutError):
        return _login_again(request, state, target, "Redis is unreachable, so no session can be opened", 503)
    logger.info("dashboard: %s logged in (%s scope)", principal.name, principal.scope)
    response = web.redirect(target)
    _set_cookie(request, response, web.SESSION_COOKIE, session_id)
    response.delete_cookie(web.LOGIN_COOKIE, path=web.BASE)
    return response


def _login_again(request: Request, state: AppState, target: str, error: str, status: int) -> Response:
    import secrets

    nonce = secrets.token_urlsafe(24)
    response = web.render(
        request, state, "login.html", {"nonce": nonce, "next": target, "error": error}, status=status
    )
    _set_cookie(request, response, web.LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/logout")
async def logout(request: Request, state: State) -> Response:
    """End the session. Like every other button it needs the session's CSRF token and the
    dashboard's own origin: another site must not be able to log anyone out."""
    form = await request.form()
    unreachable = "Redis is unreachable; you are still logged in."
    try:
        who = web.viewer(request, state)
    except (redis.ConnectionError, redis.TimeoutError):
        return web.problem(request, state, 503, "Redis unreachable", unreachable)
    if who is not None:
        if not web.same_origin(request) or not csrf_matches(who.session, str(form.get("csrf") or "")):
            return web.problem(
                request,
                state,
                403,
                "Refused",
                "the form's security token is missing or stale; reload the page to log out",
                who,
            )
        try:
            web.store(state).delete(who.session_id)
        except (redis.ConnectionError, redis.TimeoutError):
            return web.problem(request, state, 503, "Redis unreachable", unreachable, who)
    # No live session (expired, or the token was removed): only a dead cookie to clear.
    response = web.redirect(f"{web.BASE}/login")
    response.delete_cookie(web.SESSION_COOKIE, path=web.BASE)
    return response


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=web.BASE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# -- static files --------------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    kind = _STATIC.get(name)
    if kind is None:
        return web.fragment_error(404, "no such file")
    body = files("atomq.dashboard").joinpath("static", name).read_bytes()
    response = Response(body, media_type=kind, headers={"Cache-Control": "public, max-age=300"})
    for header, value in web.SECURITY_HEADERS.items():
        response.headers.setdefault(header, value)
    return response
