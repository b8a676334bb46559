"""``atomq backup``, ``atomq backups`` and ``atomq restore``."""

from __future__ import annotations

from pathlib import Path

import click

from atomq.cli import exits, output
from atomq.cli.common import Runtime, json_option, url_option


@click.command()
@url_option
@click.option(
    "--to",
    "to",
    envvar="ATOMQ_BACKUP_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the backup folder into (env ATOMQ_BACKUP_DIR; default ATOMQ_DATA_DIR/backups).",
)
@click.option(
    "--keep",
    envvar="ATOMQ_BACKUP_KEEP",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Keep only this many newest backups there (0 keeps all).",
)
@click.option("--skip-redis", is_flag=True, help="Back up the database only.")
@click.option("--skip-database", is_flag=True, help="Back up Redis only.")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Load the Redis snapshot into a throw-away redis-server to prove it reads, and count it.",
)
@json_option
def backup(
    url: str | None,
    to: Path | None,
    keep: int,
    skip_redis: bool,
    skip_database: bool,
    verify: bool,
    as_json: bool,
) -> None:
    """Snapshot Redis and the database into one timestamped folder with a manifest.

    Redis comes over the network (redis-cli --rdb), so it may run on another host; the
    database is copied with SQLite's online backup or pg_dump.
    """
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.ops.backup import create_backup

    runtime = Runtime(url)
    result = create_backup(
        runtime.settings,
        root=to,
        include_redis=not skip_redis,
        include_database=not skip_database,
        verify=verify,
        keep=keep,
    )
    if as_json:
        output.print_json(
            {
                "path": str(result.path),
                "manifest": result.manifest,
                "removed": [str(p) for p in result.removed],
            }
        )
        return
    manifest = result.manifest
    click.echo(f"backup written to {result.path}")
    if "redis" in manifest:
        redis_facts = manifest["redis"]
        keys = sum((redis_facts.get("keys") or {}).values())
        counted = f", {keys} key(s)" if redis_facts.get("keys") is not None else ""
        click.echo(
            f"  redis:    {redis_facts['file']} ({redis_facts['bytes']} bytes{counted})"
            f" from {redis_facts['source']}"
        )
    if "database" in manifest:
        db = manifest["database"]
        rows = sum(db["tables"].values())
        click.echo(
            f"  database: {db['file']} ({db['dialect']}, {len(db['tables'])} table(s), {rows} row(s))"
            f" from {db['source']}"
        )
    for path in result.removed:
        click.echo(f"  removed old backup {path}")


@click.command("backups")
@click.option(
    "--dir",
    "directory",
    envvar="ATOMQ_BACKUP_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the backups (env ATOMQ_BACKUP_DIR).",
)
@json_option
def backups(directory: Path | None, as_json: bool) -> None:
    """List the complete backups, oldest first."""
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.ops.backup import backup_root, list_backups

    root = directory or backup_root(Runtime().settings)
    found = list_backups(root)
    if as_json:
        output.print_json(found)
        return
    output.table(
        f"{len(found)} backup(s) in {root}",
        ["Path", "Created at", "Redis keys", "Database", "Bytes"],
        [[b["path"], b["created_at"], b["redis_keys"], b["database"], b["bytes"]] for b in found],
    )


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@url_option
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    help="Database to restore into (env DATABASE_URL); it must be empty unless --force.",
)
@click.option("--skip-redis", is_flag=True, help="Restore the database only.")
@click.option("--skip-database", is_flag=True, help="Restore Redis only.")
@click.option("--force", is_flag=True, help="Overwrite a target that is not empty.")
@json_option
def restore(
    path: Path,
    url: str | None,
    database_url: str | None,
    skip_redis: bool,
    skip_database: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Bring Redis (REDIS_URL) and the database (DATABASE_URL) back from the backup in PATH.

    Stop workers, schedulers and the API first. Jobs that were running when the backup was
    taken are recovered like those of a crashed worker (retried, or failed with the reason).
    """
    # Deferred: loads SQLAlchemy only when this runs.
    from atomq.ops.backup import restore_backup

    overrides = {"database_url": database_url} if database_url else {}
    runtime = Runtime(url, **overrides)
    report = restore_backup(
        runtime.settings,
        path,
        include_redis=not skip_redis,
        include_database=not skip_database,
        replace=force,
    )
    problems = []
    if "database" in report:
        problems += [
            f"database: table {name} had {d['backup']} row(s), now {d['restored']}"
            for name, d in report["database"]["differences"].items()
        ]
    if as_json:
        output.print_json({**report, "problems": problems})
    else:
        click.echo(f"restored {path} (taken {report['created_at']})")
        if "database" in report:
            tables = report["database"]["tables"]
            click.echo(
                f"  database: {len(tables)} table(s), {sum(tables.values())} row(s)"
                f" into {report['database']['target']}"
            )
        if "redis" in report:
            r = report["redis"]
            queued = sum(q["queued"] for q in r["queues"].values())
            scheduled = sum(q["scheduled"] for q in r["queues"].values())
            failed = sum(q["failed"] for q in r["queues"].values())
            # Keys with a TTL (finished jobs, worker heartbeats) may have expired since the backup.
            gone = (r["expected_keys"] or r["keys"]) - r["keys"]
            click.echo(
                f"  redis:    {r['keys']} key(s); jobs queued {queued}, scheduled {scheduled},"
                f" failed {failed}" + (f" ({gone} key(s) expired since the backup)" if gone > 0 else "")
            )
            interrupted = len(r["running_jobs_retried"]) + len(r["running_jobs_failed"])
            if interrupted or r["returned_to_queues"]:
                click.echo(
                    f"  {interrupted} job(s) were running at backup time: {len(r['running_jobs_retried'])} "
                    f"retried, {len(r['running_jobs_failed'])} failed; {r['returned_to_queues']} claimed "
                    "job(s) went back to their queues"
                )
        for problem in problems:
            click.echo(f"warning: {problem}", err=True)
    if problems:
        raise SystemExit(exits.FAILURE)


def register(group: click.Group) -> None:
    for command in (backup, backups, restore):
        group.add_command(command)
