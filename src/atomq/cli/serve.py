"""``atomq serve`` (the HTTP API), ``atomq token create`` and ``atomq db ...``."""

from __future__ import annotations

import click

from atomq.cli import output
from atomq.cli.common import Runtime, json_option
from atomq.core.logging import setup_logging


@click.command()
@click.option("--host", envvar="ATOMQ_API_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port", envvar="ATOMQ_API_PORT", type=click.IntRange(1, 65535), default=8000, show_default=True
)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="API processes.")
@click.option("--log-level", envvar="ATOMQ_LOG_LEVEL", default="INFO", show_default=True)
@click.option("--log-file", envvar="ATOMQ_LOG_FILE", type=click.Path(dir_okay=False))
@click.option("--log-format", envvar="ATOMQ_LOG_FORMAT", type=click.Choice(["text", "json"]), default="text")
def serve(host: str, port: int, workers: int, log_level: str, log_file: str | None, log_format: str) -> None:
    """Serve the HTTP API (OpenAPI at /docs)."""
    import uvicorn

    settings = Runtime(log_level=log_level, log_format=log_format, log_file=log_file).settings
    setup_logging(log_level, log_format, log_file)
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.db.engine import Database
    from atomq.db.migrate import is_current

    database = Database.from_settings(settings)
    try:
        if not is_current(database):
            click.echo("warning: the database schema is not up to date; run `atomq db upgrade`", err=True)
    finally:
        database.dispose()
    uvicorn.run(
        "atomq.api.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # keep atomq's logging configuration
        proxy_headers=True,
        access_log=True,
    )


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", default="admin", show_default=True, help="A label for the token (shown in logs).")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True)
@click.option(
    "--user",
    default=None,
    help="Bind the token to this user: it then reaches only that user's accounts, posts and workflow runs.",
)
@json_option
def token_create(name: str, scope: str, user: str | None, as_json: bool) -> None:
    """Make a new token; print it once, with the entry to add to ATOMQ_API_TOKENS."""
    # Deferred: loads FastAPI, httpx only when this runs.
    from atomq.api.auth import USER_PATTERN, entry_for, generate_token

    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.BadParameter("use letters, digits, '-' and '_'", param_hint="--name")
    if user is not None and not USER_PATTERN.fullmatch(user):
        raise click.BadParameter("use 1-128 characters, no commas or control characters", param_hint="--user")
    secret = generate_token()
    entry = entry_for(name, scope, secret, user)
    if as_json:
        output.print_json({"token": secret, "entry": entry})
        return
    click.echo(f"token:  {secret}")
    click.echo(f"entry:  {entry}")
    click.echo(
        "Add the entry to ATOMQ_API_TOKENS (comma-separated); keep the token secret, it is not stored."
    )


@click.group()
def db() -> None:
    """The records database (SQLite under ./var, or DATABASE_URL)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.db.engine import Database, database_url
    from atomq.db.migrate import upgrade

    settings = Runtime().settings
    database = Database.from_settings(settings)
    try:
        database.ping()
        upgrade(database)
    finally:
        database.dispose()
    click.echo(f"database is up to date ({_safe(database_url(settings))})")


@db.command("current")
def db_current() -> None:
    """Show the applied and the expected schema revisions."""
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.db.engine import Database
    from atomq.db.migrate import current_revisions, head_revisions

    database = Database.from_settings(Runtime().settings)
    try:
        database.ping()
        current, heads = current_revisions(database), head_revisions()
    finally:
        database.dispose()
    click.echo(f"applied:  {', '.join(sorted(current)) or 'none'}")
    click.echo(f"expected: {', '.join(sorted(heads))}")
    if current != heads:
        click.echo("run `atomq db upgrade`", err=True)
        raise SystemExit(1)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register(group: click.Group) -> None:
    for command in (serve, token, db):
        group.add_command(command)
