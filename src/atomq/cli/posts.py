"""``atomq accounts add|list|remove`` and ``atomq posts list|show|create|cancel``.

The same service functions as the HTTP API, on the database in ``DATABASE_URL`` (the SQLite
file under ``ATOMQ_DATA_DIR`` by default) and the Redis in ``REDIS_URL``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option, url_option
from atomq.core.errors import InvalidInputError

if TYPE_CHECKING:  # the database layer loads only when a command needs it
    from atomq.db.engine import Database
    from atomq.features.posts.service import PostsService


@contextmanager
def _database(runtime: Runtime) -> Iterator[Database]:
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.db.engine import Database

    database = Database.from_settings(runtime.settings)
    try:
        yield database
    finally:
        database.dispose()


@contextmanager
def _service(url: str | None) -> Iterator[PostsService]:
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.service import PostsService

    runtime = Runtime(url)
    with _database(runtime) as database:
        yield PostsService(database, runtime.task_queue, runtime.settings)


def _pairs(values: tuple[str, ...], field: str) -> dict[str, Any]:
    """``KEY=VALUE`` items; a value that reads as JSON (true, 300, "x") is taken as JSON."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"expected KEY=VALUE, got {item.split('=')[0]!r}=...", field=field)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# -- accounts ---------------------------------------------------------------------------------


@click.group()
def accounts() -> None:
    """Accounts posts are published through (mastodon, webhook, outbox)."""


@accounts.command("add")
@click.argument("platform", type=click.Choice(["mastodon", "webhook", "outbox"]))
@click.argument("handle")
@click.option("--url", "target", metavar="URL", help="Mastodon instance or webhook target URL.")
@click.option(
    "--credential",
    "credential",
    multiple=True,
    metavar="KEY=VALUE",
    help="A credential (access_token=... for Mastodon, secret=... for webhooks). Prefer "
    "--credentials-stdin or the prompt: command lines are visible to other users.",
)
@click.option("--credentials-stdin", is_flag=True, help="Read the credentials as a JSON object from stdin.")
@click.option("--option", "option", multiple=True, metavar="KEY=VALUE", help="visibility=unlisted, ...")
@click.option("--user", "user_id", default="cli", show_default=True, help="The account's owner.")
@json_option
def accounts_add(
    platform: str,
    handle: str,
    target: str | None,
    credential: tuple[str, ...],
    credentials_stdin: bool,
    option: tuple[str, ...],
    user_id: str,
    as_json: bool,
) -> None:
    """Add an account; print its id. Missing credentials are asked for (hidden input)."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.accounts import AccountInput, account_view, create_account
    from atomq.features.posts.publishers import PLATFORMS

    credentials: dict[str, Any] = {k: str(v) for k, v in _pairs(credential, "credentials").items()}
    if credentials_stdin:
        try:
            loaded = json.loads(sys.stdin.read())
        except json.JSONDecodeError:
            raise InvalidInputError(
                "stdin is not a JSON object of credentials", field="credentials"
            ) from None
        if not isinstance(loaded, dict):
            raise InvalidInputError("stdin must hold a JSON object of credentials", field="credentials")
        credentials.update(loaded)
    for name in PLATFORMS[platform].credentials:
        if name not in credentials and sys.stdin.isatty():
            credentials[name] = click.prompt(name, hide_input=True)
    runtime = Runtime()
    with _database(runtime) as database:
        account = create_account(
            database,
            runtime.settings,
            AccountInput(platform, handle, user_id, target, credentials, _pairs(option, "options")),
        )
    if as_json:
        _print_json(account_view(account))
    else:
        click.echo(account.id)


@accounts.command("list")
@click.option("--platform", type=click.Choice(["mastodon", "webhook", "outbox"]))
@click.option("--user", "user_id", help="Only this owner's accounts.")
@json_option
def accounts_list(platform: str | None, user_id: str | None, as_json: bool) -> None:
    """List accounts (credentials are never shown)."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.accounts import account_view, list_accounts

    with _database(Runtime()) as database:
        found = list_accounts(database, user_id=user_id, platform=platform)
    if as_json:
        _print_json([account_view(a) for a in found])
        return
    output.table(
        None,
        ["ID", "Platform", "Handle", "URL", "User", "Credentials", "Created"],
        [
            (
                a.id,
                a.platform,
                a.handle,
                a.url,
                a.user_id,
                "yes" if a.credentials else "no",
                a.created_at.isoformat(),
            )
            for a in found
        ],
    )


@accounts.command("remove")
@click.argument("account_id")
def accounts_remove(account_id: str) -> None:
    """Remove an account that has nothing left to publish; its credentials are erased."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.accounts import remove_account

    with _database(Runtime()) as database:
        remove_account(database, account_id)
    click.echo(f"removed {account_id}")


# -- posts ------------------------------------------------------------------------------------


@click.group()
def posts() -> None:
    """Scheduled posts: list, show, create, cancel."""


@posts.command("list")
@url_option
@click.option("--status", "status", multiple=True, help="Only this status (repeatable).")
@click.option("--account", "account_id", help="Only this account's posts.")
@click.option("--user", "user_id", help="Only this user's posts.")
@click.option("--due-after", metavar="DATETIME", help="Due at or after (ISO-8601 with offset).")
@click.option("--due-before", metavar="DATETIME", help="Due before (ISO-8601 with offset).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", help="Continue after a previous page (printed at its end).")
@json_option
def posts_list(
    url: str | None,
    status: tuple[str, ...],
    account_id: str | None,
    user_id: str | None,
    due_after: str | None,
    due_before: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List posts, newest due first."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.service import post_view

    with _service(url) as service:
        page = service.list_posts(
            status=list(status) or None,
            account_id=account_id,
            user_id=user_id,
            due_after=due_after,
            due_before=due_before,
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        _print_json({"items": [post_view(p) for p in page.items], "next_cursor": page.next_cursor})
        return
    output.table(
        None,
        ["ID", "Status", "Due (UTC)", "Account", "Attempts", "Content"],
        [
            (p.id, p.status, p.scheduled_for.isoformat(), p.account_id, p.attempts, _short(p.content))
            for p in page.items
        ],
    )
    if page.next_cursor:
        output.line(f"more: atomq posts list --cursor {page.next_cursor}")


@posts.command("show")
@url_option
@click.argument("post_id")
@json_option
def posts_show(url: str | None, post_id: str, as_json: bool) -> None:
    """Show a post and its job's status."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.service import post_view

    with _service(url) as service:
        view = post_view(service.get(post_id))
        view["job"] = service.status(post_id)
    if as_json:
        _print_json(view)
        return
    job = view.pop("job")
    for key, value in view.items():
        output.line(f"{key:<20} {'-' if value is None else value}")
    output.line(f"{'job status':<20} {job['status']}{'' if job['job_in_redis'] else ' (not in Redis)'}")
    if job.get("error"):
        output.line(f"{'job error':<20} {job['error']}")


@posts.command("create")
@url_option
@click.option("--account", "account_id", required=True, help="Account id (atomq accounts list).")
@click.option("--content", help="The text; '-' reads it from stdin.")
@click.option("--at", "at", metavar="DATETIME", help="When: ISO-8601, with an offset or with --timezone.")
@click.option("--timezone", help="IANA zone a time without offset is in (Europe/Paris).")
@click.option("--now", "publish_now", is_flag=True, help="Publish at once.")
@click.option("--media", multiple=True, metavar="URL", help="A media URL (repeatable, up to 4).")
@click.option("--user", "user_id", default="cli", show_default=True, help="Whose post this is.")
@json_option
def posts_create(
    url: str | None,
    account_id: str,
    content: str | None,
    at: str | None,
    timezone: str | None,
    publish_now: bool,
    media: tuple[str, ...],
    user_id: str,
    as_json: bool,
) -> None:
    """Schedule a post; print its id."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.service import PostInput, post_view

    if content is None or content == "-":
        content = sys.stdin.read() if content == "-" else ""
    with _service(url) as service:
        post = service.create(
            PostInput(
                account_id=account_id,
                content=content,
                user_id=user_id,
                scheduled_for=at,
                timezone=timezone,
                publish_now=publish_now,
                media_urls=list(media),
            )
        )
    if as_json:
        _print_json(post_view(post))
    else:
        click.echo(post.id)


@posts.command("cancel")
@url_option
@click.argument("post_id")
@json_option
def posts_cancel(url: str | None, post_id: str, as_json: bool) -> None:
    """Cancel a post that has not started publishing."""
    # Deferred: loads httpx, SQLAlchemy only when this runs.
    from atomq.features.posts.service import post_view

    with _service(url) as service:
        post = service.cancel(post_id)
    if as_json:
        _print_json(post_view(post))
    else:
        click.echo(f"canceled {post.id}")


def _print_json(data: Any) -> None:
    """JSON with times in ISO-8601 (as the HTTP API shows them)."""

    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    output.print_json(convert(data))


def _short(text: str, width: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def register(group: click.Group) -> None:
    group.add_command(accounts)
    group.add_command(posts)
