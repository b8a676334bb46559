"""Dashboard login sessions, kept in Redis so every API process (and host) shares them.

Logging in with an API token creates a session; the browser holds only a random session id
in an HttpOnly cookie, never the token. Redis stores the session under the SHA-256 of that id
(someone reading Redis cannot replay a cookie), with the name and hash of the token it came
from and the session's CSRF token. Sessions expire after ``idle_ttl`` seconds without use and
:data:`MAX_AGE_SECONDS` after login whatever happens; logging out deletes them at once.

The token a session came from is looked up again on every request, so removing a token from
``ATOMQ_API_TOKENS`` (or lowering its scope) takes effect on open sessions too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import redis

from atomq.core.keys import PREFIX
from atomq.engine.scripts import decode

#: Prefix of session hashes in Redis.
SESSION_KEY_PREFIX = f"{PREFIX}:dashboard:session:"

#: A session ends this long after login, however active it is.
MAX_AGE_SECONDS = 24 * 3600

#: Seconds a message for the next page ("job requeued") waits to be shown.
FLASH_TTL_SECONDS = 300


@dataclass(frozen=True)
class Session:
    """A logged-in browser."""

    token_name: str
    token_digest: bytes
    csrf: str
    created: float


def _key(session_id: str) -> str:
    return SESSION_KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Create, look up and end dashboard sessions."""

    def __init__(self, connection: redis.Redis, *, idle_ttl: int) -> None:
        self.connection = connection
        self.idle_ttl = idle_ttl

    def create(self, token_name: str, token_digest: bytes) -> tuple[str, Session]:
        """Start a session; return the id to put in the cookie, and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(token_name, token_digest, secrets.token_urlsafe(32), time.time())
        key = _key(session_id)
        with self.connection.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "token_name": session.token_name,
                    "token_digest": session.token_digest.hex(),
                    "csrf": session.csrf,
                    "created": repr(session.created),
                },
            )
            pipe.expire(key, min(self.idle_ttl, MAX_AGE_SECONDS))
            pipe.execute()
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for ``session_id`` (its idle timer restarts), or ``None``."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        raw = self.connection.hgetall(key)
        if not raw:
            return None
        data = {decode(k): decode(v) for k, v in raw.items()}
        try:
            session = Session(
                data["token_name"], bytes.fromhex(data["token_digest"]), data["csrf"], float(data["created"])
            )
        except (KeyError, ValueError):
            self.connection.delete(key)
            return None
        left = MAX_AGE_SECONDS - (time.time() - session.created)
        if left <= 0:
            self.connection.delete(key)
            return None
        self.connection.expire(key, int(min(self.idle_ttl, left)) or 1)
        return session

    def delete(self, session_id: str | None) -> None:
        """End the session (logging out)."""
        if session_id and len(session_id) <= 128:
            key = _key(session_id)
            self.connection.delete(key, key + ":flash")

    def flash(self, session_id: str, kind: str, text: str) -> None:
        """Leave a message for the next page this session shows (after a redirect)."""
        key = _key(session_id) + ":flash"
        with self.connection.pipeline() as pipe:
            pipe.rpush(key, json.dumps({"kind": kind, "text": text}))
            pipe.expire(key, FLASH_TTL_SECONDS)
            pipe.execute()

    def pop_flashes(self, session_id: str) -> list[dict[str, str]]:
        """The messages left for this session, removed as they are read."""
        key = _key(session_id) + ":flash"
        with self.connection.pipeline() as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            raw, _ = pipe.execute()
        return [json.loads(item) for item in raw]


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Whether a form's CSRF token is the session's, compared in constant time."""
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())
