"""A fake Mastodon ``POST /api/v1/statuses``: bearer tokens, Idempotency-Key, 429/500/slow;
``POST /api/v2/media`` (200 processed, or 202 and then ``GET /api/v1/media/{id}`` answering 206
while "processing") and statuses with ``media_ids``.

Like the real server it keeps each ``Idempotency-Key`` it served and answers a repeat with
the status it already created, instead of creating another.
"""

from __future__ import annotations

import itertools
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from testkit.fakes.server import FakeServer, Plan, Recorded


class FakeMastodon(FakeServer):
    def __init__(self, token: str = "masto-token") -> None:
        super().__init__()
        self.token = token
        self.statuses: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(109_000_000_000)
        #: Uploaded attachments by id: filename, content_type, data, polls_left, url.
        self.media: dict[str, dict[str, Any]] = {}
        #: Polls answered 206 before an upload is processed; 0 = answered 200 at once.
        self.processing_polls = 0
        self.media_plans: list[Plan] = []
        self._media_ids = itertools.count(110_000_000_000)

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, {"error": "The access token is invalid"}
        if request.method == "POST" and request.path == "/api/v2/media":
            return self.upload(request)
        if request.method == "GET" and request.path.startswith("/api/v1/media/"):
            return self.poll(request.path.rsplit("/", 1)[1])
        if request.method != "POST" or request.path != "/api/v1/statuses":
            return 404, {}, {"error": "Record not found"}
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
                        "media_attachments": [
                            self.attachment(str(i)) for i in request.json().get("media_ids", [])
                        ],
                    }
                    self.statuses.append(created)
                    if key:
                        self.by_key[key] = created
        if plan.delay:
            self.wait(plan.delay)
        if plan.status != 200:
            return plan.status, plan.headers, plan.body or {"error": f"planned {plan.status}"}
        return 200, plan.headers, created

    def plan_media(self, *plans: Plan) -> None:
        """Answer the next uploads with ``plans`` (statuses keep their own queue, :meth:`plan`)."""
        with self.lock:
            self.media_plans.extend(plans)

    def upload(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            plan = self.media_plans.pop(0) if self.media_plans else Plan()
        if plan.status != 200:
            return plan.status, plan.headers, plan.body or {"error": f"planned {plan.status}"}
        content_type = request.headers.get("content-type", "")
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        )
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        file = parts.get("file")
        if file is None:
            return 422, {}, {"error": "Validation failed: File can't be blank"}
        with self.lock:
            media_id = str(next(self._media_ids))
            self.media[media_id] = {
                "filename": file.get_filename(),
                "content_type": file.get_content_type(),
                "data": file.get_payload(decode=True),
                "polls_left": self.processing_polls,
                "url": f"{self.url}/system/media/{media_id}.bin",
            }
        if self.processing_polls:
            return 202, {}, {"id": media_id, "type": "image", "url": None}
        return 200, {}, self.attachment(media_id)

    def poll(self, media_id: str) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            media = self.media.get(media_id)
            if media is None:
                return 404, {}, {"error": "Record not found"}
            if media["polls_left"] > 0:
                media["polls_left"] -= 1
                return 206, {}, {"id": media_id, "type": "image", "url": None}
        return 200, {}, self.attachment(media_id)

    def attachment(self, media_id: str) -> dict[str, Any]:
        media = self.media.get(media_id)
        if media is None or media["polls_left"] > 0:
            return {"id": media_id, "url": None}
        return {"id": media_id, "type": "image", "url": media["url"]}


class MediaHost(FakeServer):
    """Serves files: ``files`` maps a path to its bytes; anything else is a 404."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.files: dict[str, tuple[bytes, str]] = {}

    def add(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (data, content_type)
        return f"{self.url}{path}"

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        found = self.files.get(request.path)
        if found is None:
            return 404, {"Content-Type": "text/plain"}, b"not found"
        data, content_type = found
        return 200, {"Content-Type": content_type}, data


def rate_limited(retry_after: str = "1") -> Plan:
    return Plan(
        status=429, headers={"Retry-After": retry_after}, body={"error": "Too many requests"}, act=False
    )


def server_error() -> Plan:
    return Plan(status=500, body={"error": "Internal server error"}, act=False)


def slow(seconds: float) -> Plan:
    """Create the status, then answer only after ``seconds`` (the client times out first)."""
    return Plan(delay=seconds)
