"""Redis connections built from settings: plain, TLS (``rediss://``) and Sentinel.

Connections are always passed explicitly (``Queue(name, connection=...)``); nothing here keeps
a global client. Errors name host, port and db so an operator can act on them, and never the
password.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel, SentinelConnectionPool

from atomq.core.errors import ConfigurationError, RedisFullError, RedisUnavailableError
from atomq.core.settings import Settings

#: Seconds to wait for a TCP connection to Redis before giving up on one attempt.
CONNECT_TIMEOUT = 5.0

#: Seconds between asking Sentinel where the primary is (see :class:`FollowingSentinelPool`).
SENTINEL_RECHECK_SECONDS = 1.0

#: Longest wait between a worker's attempts to reach Redis again. Short enough that a worker
#: picks up a Sentinel failover or a restarted Redis within seconds; a PING every 10 s is
#: nothing to a Redis that is back.
MAX_RECONNECT_BACKOFF_SECONDS = 10.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, without the secret: what error messages and logs may show."""

    host: str
    port: int
    db: int
    tls: bool = False
    sentinel_master: str | None = None
    #: A ``unix://`` URL's socket path (then host and port mean nothing).
    socket_path: str | None = None

    def describe(self) -> str:
        """``host:port db N`` (plus TLS or Sentinel), safe to print."""
        if self.socket_path:
            return f"unix://{self.socket_path} db {self.db}"
        scheme = "rediss" if self.tls else "redis"
        where = f"{scheme}://{self.host}:{self.port} db {self.db}"
        if self.sentinel_master:
            where = f"sentinel master {self.sentinel_master!r} via {self.host}:{self.port}, db {self.db}"
        return where


def parse_target(settings: Settings) -> RedisTarget:
    """Work out host, port and db from ``REDIS_URL`` or the ``REDIS_*`` variables."""
    if settings.redis_sentinels:
        first_host, first_port = _split_host_port(settings.redis_sentinels[0], "ATOMQ_REDIS_SENTINELS", 26379)
        return RedisTarget(
            first_host, first_port, settings.redis_db, sentinel_master=settings.redis_sentinel_master
        )
    if settings.redis_url:
        parsed = _parse_url(settings.redis_url)
        if parsed.scheme == "unix":
            # unix:///run/redis.sock?db=2: the path is the socket, the db is a query parameter.
            db_values = parse_qs(parsed.query).get("db", ["0"])
            return RedisTarget(
                "localhost", 0, _db_from_path(db_values[-1], settings.redis_url), socket_path=parsed.path
            )
        db = _db_from_path(parsed.path, settings.redis_url)
        try:
            port = parsed.port or 6379
        except ValueError:
            raise ConfigurationError(
                f"REDIS_URL has an invalid port: {_redact(settings.redis_url)}", field="REDIS_URL"
            ) from None
        return RedisTarget(parsed.hostname or "localhost", port, db, tls=parsed.scheme == "rediss")
    return RedisTarget(settings.redis_host, settings.redis_port, settings.redis_db)


def connect(settings: Settings, *, check: bool = True, **extra: Any) -> redis.Redis:
    """Return a Redis client for ``settings``.

    With ``check`` (the default) a PING proves the server answers and, on failure, raises
    :class:`RedisUnavailableError` with one line naming where it tried. ``extra`` goes to the
    client (for example a longer ``socket_timeout`` for blocking worker commands).
    """
    target = parse_target(settings)
    client: redis.Redis = _client(redis.Redis, settings, target, extra)
    if check:
        ping(client, target)
    return client


def connect_async(settings: Settings, **extra: Any) -> redis.asyncio.Redis:
    """An asyncio Redis client for ``settings`` (URL, TLS, unix sockets, Sentinel), as
    :func:`connect` builds sync ones. Nothing is sent yet: build it inside the event loop that
    will use it; it connects on its first command."""
    return _client(redis.asyncio.Redis, settings, parse_target(settings), extra)  # type: ignore[no-any-return]


def _client(kind: Any, settings: Settings, target: RedisTarget, extra: dict[str, Any]) -> Any:
    """A client of class ``kind`` (redis-py's sync or asyncio ``Redis``) for ``settings``."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": 30,
        "socket_keepalive": True,
    }
    options.update(extra)
    if target.socket_path:
        options.pop("socket_keepalive")  # a TCP option; Unix sockets take none
    if settings.redis_sentinels:
        if kind is redis.asyncio.Redis:
            return _async_sentinel_client(settings, options)
        return _sentinel_client(settings, options)
    if settings.redis_url:
        if target.tls:
            options.update(_tls_options(settings))
        if settings.redis_username and "username" not in options:
            options["username"] = settings.redis_username
        try:
            return kind.from_url(settings.redis_url, **options)
        except ValueError as exc:
            raise ConfigurationError(
                f"REDIS_URL is not a valid Redis URL ({exc}): {_redact(settings.redis_url)}",
                field="REDIS_URL",
            ) from None
    return kind(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        username=settings.redis_username or None,
        **options,
    )


def ping(client: redis.Redis, target: RedisTarget | None = None) -> None:
    """PING ``client``; turn any failure into :class:`RedisUnavailableError`."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailableError(f"{_where(client, target)}: authentication failed ({exc})") from None
    except redis.ResponseError as exc:
        raise RedisUnavailableError(f"{_where(client, target)}: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailableError(
            f"cannot connect to Redis at {_where(client, target)}: {_reason(exc)}"
        ) from None


def blocking_timeout(client: Any, wanted: float) -> float:
    """``wanted`` seconds for a blocking command, cut to fit inside the socket timeout of
    ``client`` (redis-py's sync or asyncio client).

    A BLPOP that outlasts the socket timeout is reported as a dead connection; redis-py 8
    clients built without options time out after 5 s.
    """
    kwargs = client.connection_pool.connection_kwargs
    limit = kwargs.get("socket_timeout") or kwargs.get("orig_socket_timeout")
    if limit:
        return max(0.001, min(wanted, float(limit) - 0.5))
    return wanted


def describe_client(client: Any) -> str:
    """Where ``client`` points, safe to show (no password)."""
    return _where(client, None)


def _where(client: Any, target: RedisTarget | None) -> str:
    if target is not None:
        return target.describe()
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']} db {kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')} db {kwargs.get('db', 0)}"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    # redis-py prefixes "Error 111 connecting to host:port." - keep the useful tail only.
    if "connecting to" in text and ". " in text:
        text = text.split(". ", 1)[1]
    text = text.rstrip(".")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        # OpenSSL's wording ("self-signed certificate in certificate chain") does not say what
        # to change; name the two settings that decide it.
        text += (
            " (the server's certificate must be signed by the CA in ATOMQ_REDIS_SSL_CA_CERTS,"
            " or a system CA when unset, and name the host in REDIS_URL)"
        )
    return text


def _parse_url(url: str) -> Any:
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got {_redact(url)}", field="REDIS_URL"
        )
    return parsed


def _db_from_path(path: str, url: str) -> int:
    stripped = path.strip("/")
    if not stripped:
        return 0
    try:
        return int(stripped)
    except ValueError:
        raise ConfigurationError(
            f"REDIS_URL database must be a number, got {stripped!r} in {_redact(url)}", field="REDIS_URL"
        ) from None


def _redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc
    userinfo, _, hostpart = netloc.rpartition("@")
    user = unquote(userinfo.split(":", 1)[0])
    return parsed._replace(netloc=f"{user}:***@{hostpart}").geturl()


def _split_host_port(value: str, field: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host:
        return value, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigurationError(f"{field}: {value!r} is not host:port", field=field) from None


def _tls_options(settings: Settings) -> dict[str, Any]:
    # Certificate and host name checks stay on: a rediss:// URL that skipped them would
    # give the look of security without its substance.
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    if settings.redis_ssl_ca_certs:
        options["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    if settings.redis_ssl_certfile:
        options["ssl_certfile"] = settings.redis_ssl_certfile
    if settings.redis_ssl_keyfile:
        options["ssl_keyfile"] = settings.redis_ssl_keyfile
    return options


def _sentinel_options(
    settings: Settings, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    addresses = [_split_host_port(item, "ATOMQ_REDIS_SENTINELS", 26379) for item in settings.redis_sentinels]
    sentinel_options = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": options["socket_connect_timeout"],
    }
    if settings.redis_password:
        sentinel_options["password"] = settings.redis_password
    return addresses, sentinel_options


def _async_sentinel_client(settings: Settings, options: dict[str, Any]) -> redis.asyncio.Redis:
    # redis-py's asyncio Sentinel pool asks Sentinel where the primary is for each new
    # connection. The sync FollowingSentinelPool's faster failover tracking is not repeated
    # here: producers make short calls, and a refused write reconnects.
    addresses, sentinel_options = _sentinel_options(settings, options)
    sentinel = AsyncSentinel(addresses, sentinel_kwargs=sentinel_options, **options)
    client: redis.asyncio.Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        db=settings.redis_db,
        password=settings.redis_password or None,
        username=settings.redis_username or None,
    )
    return client


def _sentinel_client(settings: Settings, options: dict[str, Any]) -> redis.Redis:
    addresses, sentinel_options = _sentinel_options(settings, options)
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options, **options)
    client: redis.Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=FollowingSentinelPool,
        db=settings.redis_db,
        password=settings.redis_password or None,
        username=settings.redis_username or None,
    )
    return client


class FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel pool that notices a failover within a second, not when the old primary
    finally refuses a write.

    redis-py asks Sentinel where the primary is only when it opens a connection, and a demoted
    primary refuses writes only once Sentinel gets round to reconfiguring it (about ten seconds
    after a ``SENTINEL FAILOVER``). Until then open connections keep writing to the old
    primary, and what they write is acknowledged and then lost when it resyncs from the new
    one. Here taking a connection asks Sentinel again at most every
    ``SENTINEL_RECHECK_SECONDS``; on a change redis-py drops the idle connections, and busy
    ones are dropped when given back (``owns_connection`` compares addresses).
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._checked_at = time.monotonic()
        self._check_lock = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= SENTINEL_RECHECK_SECONDS and self._check_lock.acquire(blocking=False):
            try:
                self._checked_at = now
                self.get_master_address()  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # Sentinel unreachable: keep the connections we have; the next take retries
            finally:
                self._check_lock.release()
        return super().get_connection(*args, **kwargs)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write because ``maxmemory`` is reached.

    redis-py raises ``OutOfMemoryError`` and strips Redis's ``OOM`` prefix from the message
    (so looking for "OOM" in the text never matched); a plain ``ResponseError`` that still
    carries the prefix (another client library, a relayed script error) counts too.
    """
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).lstrip().startswith("OOM")


def unavailable_error(exc: BaseException, client: Any) -> RedisUnavailableError | None:
    """The error to raise instead of redis-py's ``exc`` from ``client`` (sync or asyncio):
    a lost connection or a write refused by a full Redis; None for anything else."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return RedisUnavailableError(f"lost the connection to Redis at {describe_client(client)}: {exc}")
    if is_out_of_memory(exc):
        return RedisFullError(full_message(describe_client(client)))
    return None


def full_message(where: str) -> str:
    """The one message every front end gives for a write refused by a full Redis."""
    return (
        f"Redis at {where} is out of memory (maxmemory reached, policy noeviction) and refused "
        "the write; nothing was queued. Free memory or raise maxmemory, then retry."
    )
