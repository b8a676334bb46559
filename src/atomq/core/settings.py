"""atomq's configuration, read from the environment.

The guide's Redis variables keep their names (``REDIS_URL``, ``REDIS_HOST``, ``REDIS_PORT``,
``REDIS_DB``, ``REDIS_PASSWORD``); everything atomq adds is prefixed ``ATOMQ_``.
Settings are built by :func:`load_settings` when a command or an application asks for them,
never at import time, so tests and embedding applications can build their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from atomq.core.errors import ConfigurationError, InvalidJobOptionError
from atomq.core.options import validate_queue_name

#: Queues a worker listens on when none are given, highest priority first.
DEFAULT_QUEUES: tuple[str, ...] = ("high_priority", "social_media", "workflows", "default")

#: Seconds a job may run before it is killed, unless its task or the call says otherwise.
#: The guide's start_workers.sh uses 300.
DEFAULT_JOB_TIMEOUT = 300

#: Jobs one worker process holds at once (``atomq worker --concurrency``): async tasks on its
#: event loop, waiting tasks on threads; tasks that compute run one after the other whatever
#: this is (see atomq.engine.lanes). Chosen by measurement: docs/operations.md.
DEFAULT_CONCURRENCY = 100

#: Seconds a finished job and its result stay in Redis (RQ's default of 500 s is too short
#: for the status endpoints; a day lets people look at yesterday's work).
DEFAULT_RESULT_TTL = 86_400

#: Seconds a failed job stays in the failed registry (RQ's default: a year).
DEFAULT_FAILURE_TTL = 365 * 86_400


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting atomq reads. Field descriptions double as the reference documentation."""

    model_config = SettingsConfigDict(env_prefix="ATOMQ_", extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "ATOMQ_REDIS_URL"),
        description="Full Redis URL: redis://[:password@]host:port/db, rediss:// for TLS. "
        "When unset, REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD are used.",
    )
    redis_host: str = Field(
        default="localhost", validation_alias=AliasChoices("REDIS_HOST", "ATOMQ_REDIS_HOST")
    )
    redis_port: int = Field(default=6379, validation_alias=AliasChoices("REDIS_PORT", "ATOMQ_REDIS_PORT"))
    redis_db: int = Field(default=0, validation_alias=AliasChoices("REDIS_DB", "ATOMQ_REDIS_DB"))
    redis_password: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_PASSWORD", "ATOMQ_REDIS_PASSWORD")
    )
    redis_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_USERNAME", "ATOMQ_REDIS_USERNAME"),
        description="ACL user name (Redis 6+); the password comes from REDIS_PASSWORD or the URL.",
    )
    redis_ssl_ca_certs: str | None = Field(
        default=None, description="CA bundle that verifies a rediss:// server (system CAs when unset)."
    )
    redis_ssl_certfile: str | None = Field(default=None, description="Client certificate for mutual TLS.")
    redis_ssl_keyfile: str | None = Field(default=None, description="Client key for mutual TLS.")
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sentinel addresses as host:port,host:port. When set, the master is found through them.",
    )
    redis_sentinel_master: str = Field(default="mymaster", description="Master name known to the sentinels.")
    redis_socket_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a Redis command may take before the connection is dropped."
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "ATOMQ_DATABASE_URL"),
        description="SQLAlchemy URL of the records database (postgresql://... ); "
        "a SQLite file under ATOMQ_DATA_DIR when unset.",
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_QUEUES),
        description="Queues in priority order, highest first.",
    )
    worker_concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=10_000,
        description="Jobs each worker process runs at once (`atomq worker --concurrency`).",
    )
    worker_lease_seconds: float = Field(
        default=3.0,
        ge=1.0,
        le=600.0,
        description="Seconds a worker's lease lasts without renewal: a host silent this long is "
        "taken for dead and its jobs run elsewhere (renewed every 0.5 s).",
    )
    default_timeout: int = Field(
        default=DEFAULT_JOB_TIMEOUT, gt=0, description="Default job timeout, seconds."
    )
    result_ttl: int = Field(
        default=DEFAULT_RESULT_TTL, description="Seconds results are kept; -1 keeps forever."
    )
    failure_ttl: int = Field(default=DEFAULT_FAILURE_TTL, description="Seconds failed jobs are kept.")
    timezone: str = Field(default="UTC", description="IANA zone used to read naive datetimes.")
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules imported at start-up so their @task functions are registered.",
    )
    data_dir: Path = Field(
        default=Path("var"), description="Where `atomq up` keeps Redis data, logs and files."
    )
    api_host: str = Field(default="127.0.0.1", description="Address `atomq serve` listens on.")
    api_port: int = Field(default=8000, ge=1, le=65535, description="Port `atomq serve` listens on.")
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API tokens as name:scope:sha256hex entries (scope read, write or admin); "
        "`atomq token create` prints one.",
    )
    api_max_body_bytes: int = Field(
        default=1_000_000, gt=0, description="Largest request body the API accepts."
    )
    stop_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Seconds a running job gets to stop cleanly (job_stopping()) before it is killed.",
    )
    job_memory_limit_mb: int | None = Field(
        default=None,
        ge=16,
        description="Address-space limit (RLIMIT_AS), in MB, of each process that runs one job: "
        "tasks with isolation='fork' and the work-horses of --worker-class rq. A job growing past "
        "it gets MemoryError (or dies) and is retried or failed like any error; the worker lives "
        "on. Jobs running inside the fast worker's own process are not limited. Unset: no limit.",
    )
    batch_chunk_size: int = Field(
        default=1000, ge=1, le=100_000, description="Jobs written to Redis per round trip by enqueue_batch."
    )
    batch_ttl: int = Field(
        default=7 * 86_400, gt=0, description="Seconds a batch's progress record is kept after it is created."
    )
    recurring_file: Path | None = Field(
        default=None, description="YAML or JSON file of recurring jobs (cron or interval, timezone)."
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a token (for a Prometheus on a private network); "
        "otherwise it needs a token with the read scope.",
    )
    history_retention_seconds: int = Field(
        default=86_400,
        ge=3600,
        le=30 * 86_400,
        description="How long the per-minute history behind the dashboard's charts and "
        "GET /api/v1/tasks/stats is kept (issue 15); older minutes expire.",
    )
    metrics_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Seconds one rendering of /metrics is reused (0: read Redis on every scrape).",
    )
    credentials_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) that encrypt account credentials at rest, comma-separated, newest "
        "first (older ones still decrypt, for rotation). When unset, a key is made once and kept "
        "in ATOMQ_DATA_DIR/credentials.key: set it explicitly when API and workers run on "
        "different hosts.",
    )
    posts_horizon: float = Field(
        default=86_400,
        gt=0,
        description="Seconds ahead within which a scheduled post has its job in Redis; posts due "
        "later live only in the database until the reconciler brings them in.",
    )
    posts_reconcile_interval: float = Field(
        default=30,
        gt=0,
        description="Seconds between two reconciler passes (also run at once when Redis lost its data).",
    )
    posts_publish_timeout: float = Field(
        default=30, gt=0, description="Seconds a publisher's outside call may take (connect, send, read)."
    )
    posts_media_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Largest media file (bytes) a post may attach; bigger downloads are refused and "
        "the post fails.",
    )
    posts_max_attempts: int = Field(
        default=5, ge=1, description="Publish attempts (sends) before a post is marked failed."
    )
    posts_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Hosts webhook and Mastodon accounts may target: names, *.domain, IPs or CIDRs. "
        "'*' allows any public address. Private, loopback and link-local addresses (and names "
        "resolving to them) are refused unless listed explicitly (not through '*').",
    )
    posts_rate_limits: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per-account request limits by platform, e.g. 'mastodon=300/300,webhook=120/60' "
        "(requests/seconds; 0/0 for no limit). Mastodon defaults to 300 per 5 minutes.",
    )
    posts_outbox_path: Path | None = Field(
        default=None,
        description="File the outbox publisher appends JSON lines to "
        "(ATOMQ_DATA_DIR/outbox.jsonl when unset).",
    )
    log_level: str = Field(default="INFO")
    log_format: str = Field(default="text", description="text or json")
    log_file: Path | None = Field(default=None)

    # -- dashboard (issue 4) ----------------------------------------------------------------
    dashboard_session_ttl: int = Field(
        default=8 * 3600,
        ge=60,
        description="Seconds a dashboard login lasts without use (at most 24 hours after login).",
    )
    dashboard_refresh: float = Field(
        default=5.0, ge=0, description="Seconds between dashboard auto-refreshes; 0 turns it off."
    )
    dashboard_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules the API imports so their dashboard timeline/progress sources register.",
    )

    # -- backups (issue 4) ------------------------------------------------------------------
    backup_dir: Path | None = Field(
        default=None,
        description="Where `atomq backup` writes its folders (ATOMQ_DATA_DIR/backups when unset).",
    )
    backup_keep: int = Field(
        default=0, ge=0, description="Backups `atomq backup` keeps, deleting older ones; 0 keeps all."
    )

    @field_validator(
        "queues",
        "task_modules",
        "redis_sentinels",
        "api_tokens",
        "posts_allowed_hosts",
        "posts_rate_limits",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("dashboard_modules", mode="before")
    @classmethod
    def _csv_dashboard(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("queues")
    @classmethod
    def _queues_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue is required")

        for name in value:
            try:
                validate_queue_name(name)
            except InvalidJobOptionError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown IANA timezone {value!r} (for example 'UTC' or 'Europe/Paris')"
            ) from exc
        return value

    @field_validator("posts_rate_limits")
    @classmethod
    def _rate_limits(cls, value: list[str]) -> list[str]:
        for item in value:
            platform, sep, spec = item.partition("=")
            count, slash, seconds = spec.partition("/")
            if not (sep and slash and platform.strip() and count.strip().isdigit() and _number(seconds)):
                raise ValueError(f"{item!r} must read platform=requests/seconds, e.g. mastodon=300/300")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("must be 'text' or 'json'")
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The configured timezone as a ``ZoneInfo``."""
        return ZoneInfo(self.timezone)


def _number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with ``overrides`` taking precedence.

    Raises :class:`ConfigurationError` with one line per bad variable instead of pydantic's
    multi-line report, so the CLI can print it as is.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            env_name = _env_name(name)
            problems.append(f"{env_name}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


def _env_name(field_name: str) -> str:
    if field_name.startswith("redis_") and field_name.upper() in os.environ:
        return field_name.upper()
    return f"ATOMQ_{field_name.upper()}" if not field_name.isupper() else field_name
