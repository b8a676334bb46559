"""Accounts posts are published through. Credentials go in and never come out.

A token bound to a user reaches that user's accounts only (another user's is a 404).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from atomq.api.deps import State, UserReader, UserWriter, user_filter, user_for_new
from atomq.api.jsonio import JsonRoute
from atomq.features.posts import accounts

router = APIRouter(prefix="/api/v1/accounts", tags=["accounts"], route_class=JsonRoute)


class AccountIn(BaseModel):
    """An account to publish through."""

    model_config = ConfigDict(extra="forbid")

    platform: str = Field(description="mastodon, webhook or outbox")
    handle: str = Field(description="@user@instance for Mastodon; any label for the others.")
    url: str | None = Field(
        default=None,
        description="Mastodon: the instance (derived from the handle when omitted); webhook: the "
        "target URL, which ATOMQ_POSTS_ALLOWED_HOSTS must allow.",
    )
    credentials: dict[str, str] | None = Field(
        default=None,
        description="Write-only. Mastodon: {access_token}; webhook: {secret} (HMAC key); outbox: none.",
        json_schema_extra={"writeOnly": True},
    )
    options: dict[str, Any] | None = Field(
        default=None,
        description="Mastodon: visibility, language, max_characters, rate_limit ('300/300'); "
        "webhook: idempotent, idempotency_window, max_characters, rate_limit.",
    )
    user_id: str | None = Field(
        default=None, max_length=128, description="Owner; defaults to the token's user (if bound) or name."
    )


class AccountOut(BaseModel):
    """An account, without its credentials."""

    id: str
    user_id: str
    platform: str
    handle: str
    url: str | None
    options: dict[str, Any]
    has_credentials: bool
    created_at: datetime
    removed_at: datetime | None


class AccountList(BaseModel):
    accounts: list[AccountOut]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AccountOut,
    summary="Add an account",
    responses={
        409: {"description": "The user already has this account"},
        422: {"description": "Invalid field"},
    },
)
def create_account(body: AccountIn, state: State, principal: UserWriter) -> dict[str, Any]:
    account = accounts.create_account(
        state.database,
        state.settings,
        accounts.AccountInput(
            platform=body.platform,
            handle=body.handle,
            user_id=user_for_new(principal, body.user_id),
            url=body.url,
            credentials=dict(body.credentials or {}),
            options=dict(body.options or {}),
        ),
    )
    return accounts.account_view(account)


@router.get("", response_model=AccountList, summary="List accounts")
def list_accounts(
    state: State,
    principal: UserReader,
    platform: Annotated[str | None, Query()] = None,
    user_id: Annotated[str | None, Query()] = None,
) -> AccountList:
    found = accounts.list_accounts(state.database, user_id=user_filter(principal, user_id), platform=platform)
    return AccountList(accounts=[AccountOut.model_validate(accounts.account_view(a)) for a in found])


@router.get("/{account_id}", response_model=AccountOut, summary="One account", responses={404: {}})
def get_account(account_id: str, state: State, principal: UserReader) -> dict[str, Any]:
    return accounts.account_view(accounts.get_account(state.database, account_id, owner=principal.user))


@router.delete(
    "/{account_id}",
    response_model=AccountOut,
    summary="Remove an account (its credentials are erased)",
    responses={404: {}, 409: {"description": "Posts are still scheduled or publishing"}},
)
def remove_account(account_id: str, state: State, principal: UserWriter) -> dict[str, Any]:
    return accounts.account_view(accounts.remove_account(state.database, account_id, owner=principal.user))
