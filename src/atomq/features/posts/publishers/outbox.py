"""The outbox: "publishes" by appending one JSON line per post to a local file.

For development and demos (``atomq up`` creates an outbox account), so the whole path from
API to worker to "published" can be watched with ``tail -f var/outbox.jsonl`` and no account
anywhere. Lines are appended under an exclusive lock and fsynced, so concurrent workers
never interleave them. The write (lock, append, fsync) blocks, so it runs off the event loop.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from atomq.features.posts.offloop import off_loop
from atomq.features.posts.publishers.base import NotSent, OutcomeUnknown, Published, PublishRequest

#: Largest post the outbox takes.
MAX_CHARACTERS = 100_000


class OutboxPublisher:
    """Appends posts to ``path`` as JSON lines."""

    #: A line is either fully written or not at all, but a worker killed between the write
    #: and recording it leaves no way to tell, so repeats are not assumed to be safe.
    idempotent = False
    idempotency_window = 0.0

    def __init__(self, path: Path) -> None:
        self.path = path

    async def publish(self, request: PublishRequest) -> Published:
        return await off_loop(self._append, request)

    def _append(self, request: PublishRequest) -> Published:
        line = {
            "id": request.idempotency_key,
            "post_id": request.post_id,
            "revision": request.revision,
            "account_id": request.account_id,
            "handle": request.handle,
            "content": request.content,
            "media_urls": request.media_urls,
            "scheduled_for": request.scheduled_for.isoformat(),
            "published_at": datetime.now(UTC).isoformat(),
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise NotSent(f"cannot open the outbox {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            # Part of the line may be in the file: the outcome is not known.
            raise OutcomeUnknown(f"writing to the outbox {self.path} failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        return Published(request.idempotency_key, f"file://{self.path.resolve()}#{request.idempotency_key}")
