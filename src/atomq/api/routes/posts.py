"""Scheduled posts: the guide's ``/api/v1/tasks/scheduled-posts`` endpoints.

Thin layer over :class:`atomq.features.posts.service.PostsService`; errors become HTTP statuses in
``atomq.api.errors`` (422 naming the field, 404, 409), never here. A token bound to a user
reaches that user's posts only, through that user's accounts; what each scope sees of a post
follows :mod:`atomq.core.visibility`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from atomq.api.auth import Principal
from atomq.api.deps import State, UserReader, UserWriter, current_principal, user_filter, user_for_new
from atomq.api.jsonio import JsonRoute
from atomq.api.schemas import GuideStatusOut
from atomq.features.posts.service import MAX_PAGE, PostChanges, PostInput, PostsService, post_view

router = APIRouter(prefix="/api/v1/tasks/scheduled-posts", tags=["scheduled posts"], route_class=JsonRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such post"},
    409: {"description": "The post is publishing or has already ended"},
    422: {"description": "A field is invalid; `error.field` names it"},
}


async def get_service(
    state: State, principal: Annotated[Principal | None, Depends(current_principal)]
) -> PostsService:
    """The posts service, acting for the token's user when it is bound to one. (The route's
    own scope dependency refuses a missing or invalid token.)"""
    # async: a cheap constructor needs no trip through the thread pool.
    owner = principal.user if principal is not None else None
    return PostsService(state.database, state.task_queue, state.settings, owner=owner)


Service = Annotated[PostsService, Depends(get_service)]


class PostIn(BaseModel):
    """A post to schedule."""

    model_config = ConfigDict(extra="forbid")

    account_id: str = Field(max_length=64, description="The account to publish through.")
    content: str = Field(description="The text; at most the platform's limit (Mastodon: 500).")
    scheduled_for: datetime | None = Field(
        default=None,
        description="When to publish: ISO-8601 with an offset (2026-02-06T14:30:00+01:00), or "
        "without one together with `timezone`. May be omitted with `publish_now`.",
    )
    timezone: str | None = Field(default=None, description="IANA zone, e.g. Europe/Paris.")
    publish_now: bool = Field(default=False, description="Publish at once (a past time is allowed).")
    media_urls: list[str] = Field(default_factory=list, description="http(s) URLs (webhook and outbox).")
    user_id: str | None = Field(
        default=None,
        max_length=128,
        description="Whose post this is; defaults to the token's user (if bound to one) or name.",
    )


class PostPatch(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    scheduled_for: datetime | None = None
    timezone: str | None = None
    media_urls: list[str] | None = None
    publish_now: bool = False


class PostOut(BaseModel):
    """A scheduled post. Its text, media and error message are null for the read scope."""

    id: str
    user_id: str
    account_id: str
    content: str | None
    media_urls: list[str] | None
    scheduled_for: datetime = Field(description="Due time, UTC.")
    timezone: str
    scheduled_for_local: datetime = Field(description="Due time in `timezone`.")
    status: str = Field(description="scheduled, publishing, published, failed, canceled or unconfirmed")
    revision: int
    job_id: str | None
    attempts: int
    platform_post_id: str | None
    platform_url: str | None
    last_error: str | None
    published_at: datetime | None
    canceled_at: datetime | None
    created_at: datetime
    updated_at: datetime


class PostPage(BaseModel):
    """One page of posts, newest due first."""

    items: list[PostOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class PostStatusOut(GuideStatusOut):
    """The guide's job status dictionary, with the post's own state merged in."""

    job_id: str | None  # type: ignore[assignment]  # a post beyond the horizon has no job yet
    status: str = Field(description="The job's status (queued, scheduled, started, finished, failed...)")
    job_in_redis: bool = Field(description="False for posts beyond the horizon or whose job expired.")
    post_id: str
    post_status: str
    scheduled_for: datetime
    timezone: str
    attempts: int
    published_at: datetime | None
    platform_post_id: str | None
    platform_url: str | None
    last_error: str | None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PostOut,
    summary="Schedule a post",
    responses={422: _ERRORS[422]},
)
def create_post(body: PostIn, service: Service, principal: UserWriter) -> dict[str, Any]:
    post = service.create(
        PostInput(
            account_id=body.account_id,
            content=body.content,
            user_id=user_for_new(principal, body.user_id),
            scheduled_for=body.scheduled_for,
            timezone=body.timezone,
            publish_now=body.publish_now,
            media_urls=body.media_urls,
        )
    )
    return post_view(post, principal.scope)


@router.get("", response_model=PostPage, summary="List scheduled posts, newest due first")
def list_posts(
    service: Service,
    principal: UserReader,
    status_: Annotated[
        list[str] | None,
        Query(alias="status", description="Only these statuses (repeat, or comma-separate)."),
    ] = None,
    account_id: Annotated[str | None, Query()] = None,
    user_id: Annotated[str | None, Query()] = None,
    due_after: Annotated[str | None, Query(description="Due at or after (ISO-8601 with offset).")] = None,
    due_before: Annotated[str | None, Query(description="Due before (ISO-8601 with offset).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> PostPage:
    statuses = [s.strip() for item in status_ or [] for s in item.split(",") if s.strip()]
    page = service.list_posts(
        status=statuses or None,
        account_id=account_id,
        user_id=user_filter(principal, user_id),
        due_after=due_after,
        due_before=due_before,
        limit=limit,
        cursor=cursor,
    )
    return PostPage(
        items=[PostOut.model_validate(post_view(post, principal.scope)) for post in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{post_id}", response_model=PostOut, summary="One post", responses={404: _ERRORS[404]})
def get_post(post_id: str, service: Service, principal: UserReader) -> dict[str, Any]:
    return post_view(service.get(post_id), principal.scope)


@router.get(
    "/{post_id}/status",
    response_model=PostStatusOut,
    summary="The post's job status (the guide's dictionary) and the post's state",
    responses={404: _ERRORS[404]},
)
def get_post_status(post_id: str, service: Service, principal: UserReader) -> dict[str, Any]:
    return service.status(post_id, principal.scope)


@router.patch(
    "/{post_id}",
    response_model=PostOut,
    summary="Edit or reschedule a post not yet publishing",
    responses=_ERRORS,
)
def update_post(post_id: str, body: PostPatch, service: Service, principal: UserWriter) -> dict[str, Any]:
    changes = PostChanges(
        content=body.content,
        scheduled_for=body.scheduled_for,
        timezone=body.timezone,
        media_urls=body.media_urls,
        publish_now=body.publish_now,
    )
    return post_view(service.update(post_id, changes), principal.scope)


@router.delete(
    "/{post_id}/cancel",
    response_model=PostOut,
    summary="Cancel a post not yet publishing",
    responses={404: _ERRORS[404], 409: _ERRORS[409]},
)
def cancel_post(post_id: str, service: Service, principal: UserWriter) -> dict[str, Any]:
    return post_view(service.cancel(post_id), principal.scope)
