"""A fake Mastodon ``POST /api/v1/statuses``: bearer tokens, Idempotency-Key, 429/500/slow.

Like the real server it keeps each ``Idempotency-Key`` it served and answers a repeat with
the status it already created, instead of creating another.
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.fakes.server import FakeServer, Plan, Recorded


class FakeMastodon(FakeServer):
    def __init__(self, token: str = "masto-token") -> None:
        super().__init__()
        self.token = token
        self.statuses: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(109_000_000_000)

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        if request.path != "/api/v1/statuses":
            return 404, {}, {"error": "Record not found"}
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, {"error": "The access token is invalid"}
        plan = self.next_plan()
        key = request.headers.get("idempotency-key")
        created = None
        if plan.act and plan.status == 200:
            with self.lock:
                created = self.by_key.get(key) if key else None
                if created is None:
                    status_id = str(next(self._ids))
                    created = {
                        "id": status_id,
                        "url": f"{self.url}/@tester/{status_id}",
                        "content": request.json()["status"],
                        "visibility": request.json().get("visibility"),
                    }
                    self.statuses.append(created)
                    if key:
                        self.by_key[key] = created
        if plan.delay:
            self.wait(plan.delay)
        if plan.status != 200:
            return plan.status, plan.headers, plan.body or {"error": f"planned {plan.status}"}
        return 200, plan.headers, created


def rate_limited(retry_after: str = "1") -> Plan:
    return Plan(
        status=429, headers={"Retry-After": retry_after}, body={"error": "Too many requests"}, act=False
    )


def server_error() -> Plan:
    return Plan(status=500, body={"error": "Internal server error"}, act=False)


def slow(seconds: float) -> Plan:
    """Create the status, then answer only after ``seconds`` (the client times out first)."""
    return Plan(delay=seconds)
