"""A webhook receiver that checks atomq's signature (independently of atomq's own code)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from testkit.fakes.server import FakeServer, Recorded


class FakeWebhookReceiver(FakeServer):
    def __init__(self, secret: str = "hook-secret", dedupe: bool = False) -> None:
        super().__init__()
        self.secret = secret
        self.dedupe = dedupe
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[Recorded] = []
        self.seen_keys: set[str] = set()

    def signature_ok(self, request: Recorded) -> bool:
        timestamp = request.headers.get("x-atomq-timestamp", "")
        signature = request.headers.get("x-atomq-signature", "")
        expected = (
            "sha256="
            + hmac.new(
                self.secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
            ).hexdigest()
        )
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest(expected, signature)

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        if not self.signature_ok(request):
            with self.lock:
                self.rejected.append(request)
            return 401, {}, {"error": "bad signature"}
        plan = self.next_plan()
        key = request.headers.get("idempotency-key", "")
        if plan.act and plan.status < 300:
            with self.lock:
                if not (self.dedupe and key in self.seen_keys):
                    self.accepted.append(request.json())
                self.seen_keys.add(key)
        if plan.delay:
            self.wait(plan.delay)
        return plan.status, plan.headers, plan.body or {"id": f"hook-{len(self.accepted)}"}
