"""Accounts: where posts go. Credentials are write-only: encrypted on the way in, never
returned (:func:`account_view` shows only whether there are some)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from atomq.core.errors import (
    AccountInUseError,
    AccountNotFoundError,
    DuplicateAccountError,
    InvalidInputError,
)
from atomq.core.options import check_json
from atomq.core.settings import Settings
from atomq.core.timeutil import utcnow
from atomq.db.base import new_id
from atomq.db.engine import Database
from atomq.features.posts.credentials import CredentialsBox
from atomq.features.posts.models import Account, ScheduledPost
from atomq.features.posts.netguard import HostPolicy, check_url
from atomq.features.posts.publishers import PLATFORMS
from atomq.features.posts.publishers.mastodon import VISIBILITIES
from atomq.features.posts.validation import check_text, is_id

#: Options each platform accepts, with a check for each value.
_OPTIONS: dict[str, dict[str, Any]] = {
    "mastodon": {
        "visibility": "visibility",
        "language": "text",
        "max_characters": "count",
        "rate_limit": "rate",
    },
    "webhook": {
        "idempotent": "bool",
        "idempotency_window": "seconds",
        "max_characters": "count",
        "rate_limit": "rate",
    },
    "outbox": {"max_characters": "count", "rate_limit": "rate"},
}


@dataclass
class AccountInput:
    """What ``POST /api/v1/accounts`` and ``atomq accounts add`` take."""

    platform: str
    handle: str
    user_id: str
    url: str | None = None
    credentials: dict[str, Any] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)


def create_account(database: Database, settings: Settings, data: AccountInput) -> Account:
    """Validate and store a new account (credentials encrypted)."""
    if data.platform not in PLATFORMS:
        raise InvalidInputError(
            f"unknown platform {data.platform!r}: use one of {', '.join(PLATFORMS)}", field="platform"
        )
    spec = PLATFORMS[data.platform]
    handle = check_text((data.handle or "").strip(), "handle", single_line=True)
    if not handle or len(handle) > 255:
        raise InvalidInputError("handle must be 1-255 characters", field="handle")
    check_text(data.user_id, "user_id", max_length=128, single_line=True)
    for name, value in (("url", data.url), ("options", data.options), ("credentials", data.credentials)):
        check_json(value, name)  # the one rule for text: valid Unicode only
    options = _check_options(data.platform, data.options or {})
    url = _account_url(data.platform, handle, data.url, settings)
    credentials = _check_credentials(spec.credentials, data.credentials or {})
    sealed = CredentialsBox.from_settings(settings).seal(credentials) if credentials else None
    account = Account(
        id=new_id("acct"),
        user_id=data.user_id,
        platform=data.platform,
        handle=handle,
        url=url if spec.needs_url else None,
        credentials=sealed,
        options=options,
    )
    try:
        with database.session() as session:
            _refuse_duplicate(session, account)
            session.add(account)
    except IntegrityError:
        raise _duplicate(account) from None
    return account


def list_accounts(
    database: Database, *, user_id: str | None = None, platform: str | None = None
) -> list[Account]:
    """Live accounts, oldest first, optionally for one user or platform."""
    query = select(Account).where(Account.removed_at.is_(None)).order_by(Account.created_at, Account.id)
    if user_id:
        query = query.where(Account.user_id == check_text(user_id, "user_id"))
    if platform:
        query = query.where(Account.platform == check_text(platform, "platform"))
    with database.session() as session:
        accounts = list(session.scalars(query))
        session.expunge_all()
    return accounts


def get_account(database: Database, account_id: str, *, owner: str | None = None) -> Account:
    """The live account ``account_id`` (of user ``owner``, when given), or
    :class:`AccountNotFoundError`: another user's account is as absent as a missing one."""
    account = None
    if is_id(account_id):
        with database.session() as session:
            account = session.get(Account, account_id)
            session.expunge_all()
    if account is None or account.removed_at is not None or not _owned(account, owner):
        raise AccountNotFoundError(f"no account {account_id!r}", field="account_id")
    return account


def _owned(account: Account, owner: str | None) -> bool:
    return owner is None or account.user_id == owner


def remove_account(database: Database, account_id: str, *, owner: str | None = None) -> Account:
    """Remove an account with no post left to publish; its credentials are erased.

    The row stays (marked removed) so published posts still name their account. With
    ``owner``, only that user's accounts can be removed.
    """
    if not is_id(account_id):
        raise AccountNotFoundError(f"no account {account_id[:80]!r}", field="account_id")
    with database.session() as session:
        account = session.get(Account, account_id, with_for_update=True)
        if account is None or account.removed_at is not None or not _owned(account, owner):
            raise AccountNotFoundError(f"no account {account_id!r}", field="account_id")
        pending = session.scalar(
            select(func.count())
            .select_from(ScheduledPost)
            .where(
                ScheduledPost.account_id == account_id, ScheduledPost.status.in_(("scheduled", "publishing"))
            )
        )
        if pending:
            raise AccountInUseError(
                f"account {account_id} still has {pending} post(s) scheduled or publishing; "
                "cancel them (or wait for them) first",
                field="account_id",
            )
        account.removed_at = utcnow()
        account.credentials = None
    return account


def ensure_outbox_account(
    database: Database, settings: Settings, *, user_id: str = "local", handle: str = "local"
) -> Account:
    """The local outbox account (made when missing), so ``atomq up`` can publish with no setup."""
    with database.session() as session:
        found = session.scalars(
            select(Account).where(
                Account.platform == "outbox",
                Account.user_id == user_id,
                Account.handle == handle,
                Account.removed_at.is_(None),
            )
        ).first()
        session.expunge_all()
    if found is not None:
        return found
    try:
        return create_account(database, settings, AccountInput("outbox", handle, user_id))
    except DuplicateAccountError:
        return ensure_outbox_account(database, settings, user_id=user_id, handle=handle)


def account_view(account: Account) -> dict[str, Any]:
    """What may be shown of an account: everything but the credentials."""
    return {
        "id": account.id,
        "user_id": account.user_id,
        "platform": account.platform,
        "handle": account.handle,
        "url": account.url,
        "options": dict(account.options or {}),
        "has_credentials": account.credentials is not None,
        "created_at": account.created_at,
        "removed_at": account.removed_at,
    }


def _refuse_duplicate(session: Any, account: Account) -> None:
    existing = session.scalars(
        select(Account.id).where(
            Account.user_id == account.user_id,
            Account.platform == account.platform,
            Account.handle == account.handle,
            Account.removed_at.is_(None),
        )
    ).first()
    if existing is not None:
        raise _duplicate(account, existing)


def _duplicate(account: Account, existing: str | None = None) -> DuplicateAccountError:
    which = f" ({existing})" if existing else ""
    return DuplicateAccountError(
        f"user {account.user_id!r} already has a {account.platform} account {account.handle!r}{which}",
        field="handle",
    )


def _account_url(platform: str, handle: str, url: str | None, settings: Settings) -> str | None:
    if platform == "outbox":
        return None
    if not url and platform == "mastodon":
        # @alice@mastodon.social lives on https://mastodon.social
        parts = handle.lstrip("@").split("@")
        if len(parts) != 2 or not parts[1]:
            raise InvalidInputError(
                "give the instance url, or a handle of the form @user@instance", field="url"
            )
        url = f"https://{parts[1]}"
    if not url:
        raise InvalidInputError(f"{platform} accounts need a url", field="url")
    return check_url(url, HostPolicy.parse(settings.posts_allowed_hosts), field="url")


def _check_credentials(required: tuple[str, ...], credentials: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(credentials, dict):
        raise InvalidInputError("credentials must be an object", field="credentials")
    for name in required:
        value = credentials.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"credentials.{name} is required", field=f"credentials.{name}")
    for name, value in credentials.items():
        if not isinstance(value, str) or len(value) > 4096:
            # Never echo the value: it is a secret.
            raise InvalidInputError(
                f"credentials.{name} must be a string of at most 4096 characters", field=f"credentials.{name}"
            )
    return {name: value for name, value in credentials.items() if name in required} if required else {}


def _check_options(platform: str, options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise InvalidInputError("options must be an object", field="options")
    allowed = _OPTIONS[platform]
    checked: dict[str, Any] = {}
    for name, value in options.items():
        kind = allowed.get(name)
        where = f"options.{name}"
        if kind is None:
            raise InvalidInputError(
                f"{platform} accounts take no option {name!r} (known: {', '.join(sorted(allowed))})",
                field=where,
            )
        if kind == "visibility":
            if value not in VISIBILITIES:
                raise InvalidInputError(f"{where} must be one of {', '.join(VISIBILITIES)}", field=where)
        elif kind == "text" and (not isinstance(value, str) or not 0 < len(value) <= 16):
            raise InvalidInputError(f"{where} must be a short language code such as 'en'", field=where)
        elif kind == "bool" and not isinstance(value, bool):
            raise InvalidInputError(f"{where} must be true or false", field=where)
        elif kind == "count" and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1_000_000
        ):
            raise InvalidInputError(f"{where} must be a whole number from 1 to 1000000", field=where)
        elif kind == "seconds" and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise InvalidInputError(f"{where} must be a positive number of seconds", field=where)
        elif kind == "rate":
            _check_rate(value, where)
        checked[name] = value
    return checked


def _check_rate(value: Any, where: str) -> None:
    text = value if isinstance(value, str) else ""
    count, slash, seconds = text.partition("/")
    try:
        ok = bool(slash) and int(count) >= 0 and float(seconds) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInputError(f"{where} must read requests/seconds, e.g. '300/300'", field=where)
