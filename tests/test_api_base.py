"""The API's shared behaviour: probes, authentication, one error shape, body limits."""

from __future__ import annotations

import pytest
from fastapi import Request

from testkit.fixtures import TOKENS


def test_health_needs_no_token(api):
    for path in ("/health", "/api/v1/tasks/health"):
        response = api.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_ready_checks_redis_and_the_database(api):
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


def test_ready_is_503_when_redis_is_unreachable(api_settings, database):
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app
    from testkit.support import free_port

    settings = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(settings, database=database)) as client:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["redis"].startswith("unreachable")
        assert body["checks"]["database"] == "ok"
        queues = client.get("/api/v1/tasks/queues", headers={"Authorization": f"Bearer {TOKENS['read']}"})
        assert queues.status_code == 503
        assert queues.json()["error"]["code"] == "redis_unavailable"


def test_missing_or_wrong_token_is_401_and_too_little_scope_is_403(api):
    missing = api.get("/api/v1/tasks/queues")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = api.get("/api/v1/tasks/queues", headers={"Authorization": "Bearer atq_nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "the bearer token is not valid"
    for scope in ("read", "write", "admin"):
        assert api.get("/api/v1/tasks/queues", headers=api.auth(scope)).status_code == 200


def test_guides_queue_statistics_shape(api, tq, burst):
    tq.enqueue("add", a=1, b=1, queue="social_media")
    tq.enqueue("fail", queue="social_media")
    burst()
    tq.enqueue("add", a=1, b=1, queue="social_media")
    response = api.get("/api/v1/tasks/queues", headers=api.auth("read"))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["queues"]
    social = next(q for q in body["queues"] if q["name"] == "social_media")
    assert {k: social[k] for k in ("name", "queued", "started", "finished", "failed")} == {
        "name": "social_media",
        "queued": 1,
        "started": 0,
        "finished": 1,
        "failed": 1,
    }
    assert set(social) == {
        "name",
        "queued",
        "started",
        "finished",
        "failed",
        "scheduled",
        "deferred",
        "canceled",
        "oldest_queued_age",
        "paused_since",
    }
    assert social["paused_since"] is None  # flowing (a paused queue gives when it was paused)


def test_unknown_endpoint_uses_the_error_shape(api):
    response = api.get("/api/v1/tasks/nothing-here", headers=api.auth())
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": "no such endpoint: GET /api/v1/tasks/nothing-here",
            "field": None,
        }
    }


@pytest.mark.parametrize("chunked", [False, True])
def test_bodies_over_the_limit_are_413(api_settings, connection, database, chunked):
    from fastapi.testclient import TestClient

    from atomq.api.app import create_app

    settings = api_settings.model_copy(update={"api_max_body_bytes": 1000})
    app = create_app(settings, redis_client=connection, database=database)

    @app.post("/echo-length")
    async def echo_length(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    with TestClient(app) as client:
        assert client.post("/echo-length", content=b"x" * 900).json() == {"length": 900}
        payload = b"x" * 5000
        content = iter([payload[:2500], payload[2500:]]) if chunked else payload
        response = client.post("/echo-length", content=content)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_openapi_document_is_served(api):
    response = api.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert "/api/v1/tasks/queues" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert api.get("/docs").status_code == 200
