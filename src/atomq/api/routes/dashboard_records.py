"""Dashboard pages for the records behind jobs (issue 15): posts, workflow runs, batches.

Each has a list (filters, keyset pages) and a page of its own, with the buttons the HTTP API
already allows (cancel or publish a scheduled post now, retry or cancel a run, cancel a
batch), guarded as every dashboard button is (session, same origin, CSRF token, scope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from atomq.api import dashboard_web as web
from atomq.api.deps import State
from atomq.api.routes.dashboard import act, render_page
from atomq.api.state import AppState
from atomq.core.errors import InvalidInputError
from atomq.features.batches.progress import batch_progress, list_batches
from atomq.features.batches.tracking import cancel_batch
from atomq.features.posts.models import POST_STATUSES
from atomq.features.posts.records import post_events
from atomq.features.posts.service import PostChanges, PostsService, post_view
from atomq.features.workflows import service as workflows
from atomq.features.workflows.tasks import RUN_STATES

router = APIRouter(prefix=web.BASE, include_in_schema=False)

#: Rows per page of each list.
PER_PAGE = 50

Loader = Callable[[web.Viewer], dict[str, Any]]


def _posts(state: AppState) -> PostsService:
    return PostsService(state.database, state.task_queue, state.settings)


def _next_url(path: str, filters: dict[str, str], cursor: str | None) -> str | None:
    """The address of the next page, keeping the filters (``None`` on the last page)."""
    if cursor is None:
        return None
    return f"{path}?{urlencode({**{k: v for k, v in filters.items() if v}, 'cursor': cursor})}"


def _field_message(exc: InvalidInputError) -> str:
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


# -- posts ---------------------------------------------------------------------------------

_POST_FILTERS = ("status", "account_id", "user_id", "due_after", "due_before")


@router.get("/posts")
def posts_page(request: Request, state: State) -> Response:
    filters = {name: request.query_params.get(name, "").strip() for name in _POST_FILTERS}
    cursor = request.query_params.get("cursor") or None

    def load(who: web.Viewer) -> dict[str, Any]:
        shown: dict[str, Any] = {"filters": filters, "statuses": POST_STATUSES, "paged": cursor is not None}
        try:
            page = _posts(state).list_posts(
                status=[filters["status"]] if filters["status"] else None,
                account_id=filters["account_id"] or None,
                user_id=filters["user_id"] or None,
                due_after=filters["due_after"] or None,
                due_before=filters["due_before"] or None,
                limit=PER_PAGE,
                cursor=cursor,
            )
        except InvalidInputError as exc:  # a filter typed wrong: keep the form, say which field
            return {**shown, "posts": [], "next_url": None, "error": _field_message(exc)}
        return {
            **shown,
            "posts": [post_view(p) for p in page.items],
            "next_url": _next_url(f"{web.BASE}/posts", filters, page.next_cursor),
            "error": None,
        }

    return render_page(request, state, "posts.html", load)


@router.get("/posts/{post_id}")
def post_page(request: Request, state: State, post_id: str) -> Response:
    def load(who: web.Viewer) -> dict[str, Any]:
        service = _posts(state)
        post = post_view(service.get(post_id))
        job = service.status(post_id)
        events = post_events(state.database, post_id)
        return {"post": post, "job": job, "events": events}

    return render_page(request, state, "post.html", load)


@router.post("/posts/{post_id}/cancel")
async def cancel_post(request: Request, state: State, post_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        post = _posts(state).cancel(post_id)
        return f"post {post.id} is {post.status}"

    return await act(request, state, "write", action)


@router.post("/posts/{post_id}/publish-now")
async def publish_post_now(request: Request, state: State, post_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        post = _posts(state).update(post_id, PostChanges(publish_now=True))
        return f"post {post.id} will be published now"

    return await act(request, state, "write", action)


# -- workflow runs ---------------------------------------------------------------------------


@router.get("/workflows")
def runs_page(request: Request, state: State) -> Response:
    filters = {name: request.query_params.get(name, "").strip() for name in ("workflow", "status")}
    cursor = request.query_params.get("cursor") or None

    def load(who: web.Viewer) -> dict[str, Any]:
        shown: dict[str, Any] = {"filters": filters, "statuses": RUN_STATES, "paged": cursor is not None}
        try:
            page = workflows.list_runs(
                state.database,
                workflow=filters["workflow"] or None,
                status=filters["status"] or None,
                limit=PER_PAGE,
                cursor=cursor,
            )
        except InvalidInputError as exc:
            return {**shown, "runs": [], "next_url": None, "error": _field_message(exc)}
        return {
            **shown,
            "runs": page["items"],
            "next_url": _next_url(f"{web.BASE}/workflows", filters, page["next_cursor"]),
            "error": None,
        }

    return render_page(request, state, "workflows.html", load)


def step_levels(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Steps in columns: each step one column right of the last step it waits for."""
    by_name = {step["name"]: step for step in steps}
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            parents = [p for p in by_name[name]["depends_on"] if p in by_name and p not in seen]
            depth[name] = 1 + max((level(p, seen | {name}) for p in parents), default=-1)
        return depth[name]

    columns: list[list[dict[str, Any]]] = []
    for step in steps:
        index = level(step["name"])
        while len(columns) <= index:
            columns.append([])
        columns[index].append(step)
    return columns


@router.get("/workflows/{run_id}")
def run_page(request: Request, state: State, run_id: str) -> Response:
    def load(who: web.Viewer) -> dict[str, Any]:
        run = workflows.get_run(state.database, run_id)
        return {"run": run, "levels": step_levels(run["steps"])}

    return render_page(request, state, "workflow_run.html", load)


@router.post("/workflows/{run_id}/retry")
async def retry_run(request: Request, state: State, run_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        run = workflows.retry_run(state.database, state.task_queue, run_id)
        return f"run {run_id} is {run['status']}: its failed steps run again"

    return await act(request, state, "write", action)


@router.post("/workflows/{run_id}/cancel")
async def cancel_run(request: Request, state: State, run_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        run = workflows.cancel_run(state.database, state.task_queue, run_id)
        return f"run {run_id} is {run['status']}"

    return await act(request, state, "write", action)


# -- batches -------------------------------------------------------------------------------


@router.get("/batches")
def batches_page(request: Request, state: State) -> Response:
    raw = request.query_params.get("before") or None

    def load(who: web.Viewer) -> dict[str, Any]:
        try:
            before = float(raw) if raw is not None else None
        except ValueError:
            raise InvalidInputError(f"before must be a number, not {raw!r}", field="before") from None
        page, more = list_batches(state.redis, limit=PER_PAGE, before=before)
        return {
            "batches": [b.as_dict() for b in page],
            "next_url": None if more is None else f"{web.BASE}/batches?before={more!r}",
            "paged": before is not None,
        }

    return render_page(request, state, "batches.html", load)


@router.get("/batches/{batch_id}")
def batch_page(request: Request, state: State, batch_id: str) -> Response:
    def load(who: web.Viewer) -> dict[str, Any]:
        return {"batch": batch_progress(state.redis, batch_id).as_dict()}

    return render_page(request, state, "batch.html", load)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch_action(request: Request, state: State, batch_id: str) -> Response:
    def action(form: FormData, who: web.Viewer) -> str:
        progress = cancel_batch(state.redis, batch_id, result_ttl=state.settings.result_ttl)
        return f"batch {batch_id} is {progress.state}: {progress.canceled} unstarted item(s) canceled"

    return await act(request, state, "write", action)
