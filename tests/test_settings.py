"""Configuration: the guide's variables, TLS, Sentinel, and clear errors."""

from __future__ import annotations

import ssl

import pytest

from atomq.core.connection import connect, parse_target
from atomq.core.errors import ConfigurationError, RedisUnavailableError
from atomq.core.settings import DEFAULT_QUEUES, load_settings
from atomq.engine.tasks import TaskRegistry, task
from testkit.support import free_port


def test_defaults(monkeypatch):
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "ATOMQ_QUEUES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.redis_url is None
    assert (settings.redis_host, settings.redis_port, settings.redis_db) == ("localhost", 6379, 0)
    assert (
        settings.queues == list(DEFAULT_QUEUES) == ["high_priority", "social_media", "workflows", "default"]
    )
    assert settings.timezone == "UTC"
    assert settings.default_timeout == 300


def test_guide_variables_are_read(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6390")
    monkeypatch.setenv("REDIS_DB", "4")
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    monkeypatch.setenv("ATOMQ_QUEUES", "urgent, default")
    monkeypatch.setenv("ATOMQ_DEFAULT_TIMEOUT", "60")
    monkeypatch.setenv("ATOMQ_TIMEZONE", "Europe/Paris")
    settings = load_settings()
    target = parse_target(settings)
    assert (target.host, target.port, target.db) == ("cache.internal", 6390, 4)
    assert settings.redis_password == "pw"
    assert settings.queues == ["urgent", "default"]
    assert settings.default_timeout == 60
    assert str(settings.tz) == "Europe/Paris"


def test_url_wins_over_parts(monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("REDIS_URL", "redis://:secret@queue-host:6380/2")
    target = parse_target(load_settings())
    assert (target.host, target.port, target.db) == ("queue-host", 6380, 2)
    assert "secret" not in target.describe()


def test_rediss_verifies_certificates():
    settings = load_settings(
        redis_url="rediss://localhost:6379/0", redis_ssl_ca_certs="/etc/ssl/certs/ca.pem"
    )
    client = connect(settings, check=False)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["ssl_ca_certs"] == "/etc/ssl/certs/ca.pem"
    assert parse_target(settings).tls


def test_sentinel_settings_build_a_sentinel_client():
    settings = load_settings(redis_sentinels="10.0.0.1:26379,10.0.0.2:26379", redis_sentinel_master="queues")
    target = parse_target(settings)
    assert "sentinel master 'queues'" in target.describe()
    client = connect(settings, check=False)
    # redis-py's Sentinel pool, rechecking where the primary is (follows a failover at once).
    assert type(client.connection_pool).__name__ == "FollowingSentinelPool"
    assert type(client.connection_pool).__mro__[1].__name__ == "SentinelConnectionPool"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis_url": "http://localhost"}, "REDIS_URL must start with redis://"),
        ({"redis_url": "redis://localhost:99999999/0"}, "invalid port"),
        ({"redis_url": "redis://localhost:6379/zero"}, "database must be a number"),
        ({"timezone": "Nowhere/Special"}, "unknown IANA timezone"),
        ({"queues": "ok,not ok"}, "invalid queue name"),
        ({"log_format": "xml"}, "must be 'text' or 'json'"),
        ({"default_timeout": 0}, "ATOMQ_DEFAULT_TIMEOUT"),
    ],
)
def test_bad_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        connect(load_settings(**overrides), check=False)
    assert "\n" not in str(info.value)


def test_unreachable_redis_names_host_port_db_but_not_the_password():
    port = free_port()
    with pytest.raises(RedisUnavailableError) as info:
        connect(load_settings(redis_url=f"redis://user:hunter2@127.0.0.1:{port}/5"))
    text = str(info.value)
    assert f"127.0.0.1:{port} db 5" in text
    assert "hunter2" not in text
    assert "\n" not in text


def test_task_registration_rules():
    registry = TaskRegistry()

    def first() -> None: ...

    def second() -> None: ...

    task("dup", registry=registry)(first)
    task("dup", registry=registry)(first)  # the same function again is harmless
    with pytest.raises(ConfigurationError, match="already registered"):
        task("dup", registry=registry)(second)
    with pytest.raises(ConfigurationError, match="invalid task name"):
        task("no spaces allowed", registry=registry)(first)
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        task("q", queue="bad queue", registry=registry)(first)
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        task("t", timeout=0, registry=registry)(first)
    assert [spec.name for spec in registry] == ["dup"]


def test_unknown_task_module_is_a_configuration_error():
    from atomq.engine.tasks import load_task_modules

    with pytest.raises(ConfigurationError, match="cannot import task module 'no.such.module'"):
        load_task_modules(["no.such.module"])
