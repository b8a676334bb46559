"""``atomq backup`` and ``atomq restore``: Redis and the database in one timestamped folder.

A backup folder (``atomq-backup-20260206T031500Z``) holds:

* ``redis.rdb`` - a consistent snapshot of the whole Redis dataset (see
  :mod:`atomq.ops.redis_snapshot`), verified by loading it into a throw-away server, which also
  counts its keys and jobs per queue for the manifest;
* ``database.sqlite3`` or ``database.pgdump`` - the records database (see
  :mod:`atomq.ops.db_snapshot`), with its row count per table and schema revision;
* ``manifest.json`` - what was taken, from where, when, with sizes and SHA-256 checksums.

Redis is snapshotted first, then the database. Restored together, the database is then the
newer of the two, which is the safe way round: a record without its job is re-created by the
reconcilers, and a job whose record already moved on finds that out and does nothing.

The folder is written under a hidden ``.partial`` name and renamed when complete, so a backup
that failed half-way never looks like a good one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from atomq.core.connection import connect
from atomq.core.errors import ConfigurationError, InvalidInputError, NotFoundError
from atomq.core.settings import Settings
from atomq.db.engine import database_url
from atomq.ops import db_snapshot as dbs
from atomq.ops import monitor
from atomq.ops import redis_snapshot as rs
from atomq.ops.settle import settle_restored

#: Backup folders are named this followed by a UTC timestamp.
PREFIX = "atomq-backup-"

#: The manifest's name inside a backup folder.
MANIFEST = "manifest.json"

#: Version of the folder layout; restore refuses layouts it does not know.
FORMAT = 1

#: The Redis snapshot's name inside a backup folder.
REDIS_FILE = "redis.rdb"

#: Unfinished folders older than this are removed when backups are pruned.
STALE_PARTIAL_SECONDS = 86_400


class BackupError(InvalidInputError):
    """A backup folder is missing, incomplete or damaged."""

    code = "invalid_backup"


@dataclass
class BackupResult:
    """A finished backup: where it is, its manifest, and the old backups pruned."""

    path: Path
    manifest: dict[str, Any]
    removed: list[Path] = field(default_factory=list)


def backup_root(settings: Settings) -> Path:
    """Where backups go: ``ATOMQ_BACKUP_DIR``, else ``ATOMQ_DATA_DIR/backups``."""
    return settings.backup_dir or settings.data_dir / "backups"


def create_backup(
    settings: Settings,
    *,
    root: Path | None = None,
    include_redis: bool = True,
    include_database: bool = True,
    verify: bool = True,
    keep: int = 0,
) -> BackupResult:
    """Take a backup into a new folder under ``root``; keep only the newest ``keep`` (0: all)."""
    if not (include_redis or include_database):
        raise InvalidInputError("nothing to back up: both Redis and the database were skipped")
    root = (root or backup_root(settings)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    name = _unique_name(root, started)
    partial = root / f".{name}.partial"
    partial.mkdir()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "atomq_version": version("atomq"),
        "created_at": started.isoformat(),
        "order": "redis first, then the database",
    }
    try:
        if include_redis:
            manifest["redis"] = _backup_redis(settings, partial, verify=verify)
        if include_database:
            manifest["database"] = _backup_database(settings, partial)
        manifest["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 3)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = root / name
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    removed = prune(root, keep) if keep else []
    return BackupResult(final, manifest, removed)


def _unique_name(root: Path, moment: datetime) -> str:
    base = PREFIX + moment.strftime("%Y%m%dT%H%M%SZ")
    name, counter = base, 1
    while (root / name).exists() or (root / f".{name}.partial").exists():
        counter += 1
        name = f"{base}-{counter}"
    return name


def _backup_redis(settings: Settings, folder: Path, *, verify: bool) -> dict[str, Any]:
    facts = rs.snapshot(settings, folder / REDIS_FILE)
    try:
        client = connect(settings)
        facts["redis_version"] = rs.server_version(client)
        client.close()
    except (redis.RedisError, ConfigurationError):
        facts["redis_version"] = None  # a backup user without INFO still makes a good backup
    if verify:
        with rs.loaded(folder / REDIS_FILE) as snapshot:
            facts["keys"] = rs.keyspace(snapshot.client())
            jobs = snapshot.client(facts["db"])
            names = monitor.known_queues(jobs, settings.queues)
            facts["queues"] = {s.name: s.as_dict() for s in monitor.queue_stats(jobs, names)}
    return facts


def _backup_database(settings: Settings, folder: Path) -> dict[str, Any]:
    url = database_url(settings)
    dialect = dbs.dialect_of(url)
    if dialect == "sqlite":
        facts = dbs.sqlite_backup(url, folder / dbs.SQLITE_FILE)
    elif dialect == "postgresql":
        facts = dbs.postgres_backup(url, folder / dbs.POSTGRES_FILE)
    else:
        raise ConfigurationError(f"atomq backs up SQLite and PostgreSQL, not {dialect}", field="DATABASE_URL")
    facts.update(dialect=dialect, source=dbs.redacted(url), revisions=dbs.alembic_revisions(url))
    facts.update(rs.file_facts(folder / facts["file"]))
    return facts


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete backups, and stale unfinished ones."""
    complete = sorted(p for p in root.glob(f"{PREFIX}*") if (p / MANIFEST).is_file())
    doomed = complete[:-keep] if keep > 0 else []
    now = time.time()
    doomed += [p for p in root.glob(f".{PREFIX}*.partial") if now - p.stat().st_mtime > STALE_PARTIAL_SECONDS]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def list_backups(root: Path) -> list[dict[str, Any]]:
    """Complete backups under ``root``, oldest first, with the manifest's headline figures."""
    found = []
    for path in sorted(root.glob(f"{PREFIX}*")):
        try:
            manifest = read_manifest(path)
        except BackupError:
            continue
        found.append(
            {
                "path": str(path),
                "created_at": manifest.get("created_at"),
                "redis_keys": sum((manifest.get("redis") or {}).get("keys", {}).values()) or None,
                "database": (manifest.get("database") or {}).get("dialect"),
                "bytes": sum(f.stat().st_size for f in path.iterdir()),
            }
        )
    return found


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the backup in ``path``, or :class:`BackupError` saying what is wrong."""
    if not path.is_dir():
        raise NotFoundError(f"no backup folder at {path}", field="path")
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{path} has no {MANIFEST}: it is not a complete atomq backup", field="path"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path / MANIFEST} cannot be read: {exc}", field="path") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path} has backup format {manifest.get('format')!r}; this atomq reads {FORMAT}")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its size and checksum."""
    for part in ("redis", "database"):
        facts = manifest.get(part)
        if not facts:
            continue
        file = path / facts["file"]
        if not file.is_file():
            raise BackupError(f"{file} is missing from the backup")
        found = rs.file_facts(file)
        if found["sha256"] != facts["sha256"] or found["bytes"] != facts["bytes"]:
            raise BackupError(f"{file} does not match its checksum in the manifest: the backup is damaged")


def restore_backup(
    settings: Settings,
    path: Path,
    *,
    include_redis: bool = True,
    include_database: bool = True,
    replace: bool = False,
) -> dict[str, Any]:
    """Bring the configured Redis and database back from the backup in ``path``.

    Both targets must be empty unless ``replace``. Returns what was restored and any count that
    differs from the manifest (none, when all went well).
    """
    manifest = read_manifest(path)
    verify_files(path, manifest)
    report: dict[str, Any] = {"backup": str(path), "created_at": manifest.get("created_at")}
    if include_database and manifest.get("database"):
        report["database"] = _restore_database(settings, path, manifest["database"], replace=replace)
    if include_redis and manifest.get("redis"):
        report["redis"] = _restore_redis(settings, path, manifest["redis"], replace=replace)
    if len(report) == 2:
        raise BackupError(f"{path} holds nothing of what was asked to restore")
    return report


def _restore_redis(settings: Settings, path: Path, facts: dict[str, Any], *, replace: bool) -> dict[str, Any]:
    target = connect(settings)
    try:
        with rs.loaded(path / facts["file"]) as snapshot:
            copied = rs.copy_database(snapshot.client(int(facts["db"])), target, replace=replace)
        settled = settle_restored(target, settings.queues)
        expected = (facts.get("keys") or {}).get(str(facts["db"]))
        names = monitor.known_queues(target, settings.queues)
        queues = {s.name: s.as_dict() for s in monitor.queue_stats(target, names)}
        return {
            "keys": copied.keys,
            "expected_keys": expected,
            "expired_since_backup": copied.skipped_expired,
            "queues": queues,
            "stale_workers": settled.workers,
            "returned_to_queues": settled.returned,
            "running_jobs_retried": settled.retried,
            "running_jobs_failed": settled.failed,
        }
    finally:
        target.close()


def _restore_database(
    settings: Settings, path: Path, facts: dict[str, Any], *, replace: bool
) -> dict[str, Any]:
    url = database_url(settings)
    dialect = dbs.dialect_of(url)
    if dialect != facts["dialect"]:
        raise ConfigurationError(
            f"the backup holds a {facts['dialect']} database but DATABASE_URL is {dialect}; "
            "restore into the same kind of database",
            field="DATABASE_URL",
        )
    backup_file = path / facts["file"]
    if dialect == "sqlite":
        tables = dbs.sqlite_restore(backup_file, url, replace=replace)
    else:
        tables = dbs.postgres_restore(backup_file, url, replace=replace)
    differ = {
        name: {"backup": count, "restored": tables.get(name)}
        for name, count in facts.get("tables", {}).items()
        if tables.get(name) != count
    }
    return {"target": dbs.redacted(url), "tables": tables, "differences": differ}
