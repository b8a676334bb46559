"""Bearer tokens with scopes ``read`` < ``write`` < ``admin``, optionally bound to a user.

Tokens are configured as hashes (``ATOMQ_API_TOKENS=name:scope:sha256hex[:user],...``), so
the settings never hold a usable secret. A presented token is hashed and compared with every
configured hash in constant time. ``atomq token create`` makes a token and its entry.

A token whose entry names a user acts for that user only: it reaches that user's accounts,
scheduled posts and workflow runs, and nothing that spans users (queues, jobs, batches,
metrics, the dashboard). Entries without a user keep the scope's full reach.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from atomq.core.errors import ConfigurationError
from atomq.core.visibility import SCOPES, allows

#: Prefix of generated tokens, so they are recognisable in logs and secret scanners.
TOKEN_PREFIX = "atq_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scope, and the user it acts for (if bound to one)."""

    name: str
    scope: str
    user: str | None = None

    def allows(self, needed: str) -> bool:
        """Whether this principal's scope includes ``needed``."""
        return allows(self.scope, needed)


@dataclass(frozen=True)
class TokenEntry:
    """A configured token: name, scope, the SHA-256 of the secret, and its user (if any)."""

    name: str
    scope: str
    digest: bytes
    user: str | None = None

    def principal(self) -> Principal:
        return Principal(self.name, self.scope, self.user)


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (tokens are long and random, so a plain hash suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def entry_for(name: str, scope: str, token: str, user: str | None = None) -> str:
    """The ``name:scope:hash[:user]`` line to put in ``ATOMQ_API_TOKENS``."""
    entry = f"{name}:{scope}:{hash_token(token)}"
    return f"{entry}:{user}" if user else entry


#: A user a token may be bound to: what posts and accounts accept as ``user_id``, minus the
#: comma that separates entries.
USER_PATTERN = re.compile(r"[^\x00-\x1f\x7f,\ud800-\udfff]{1,128}")


def parse_entries(raw: list[str]) -> list[TokenEntry]:
    """Parse ``name:scope:sha256hex[:user]`` entries, refusing malformed ones with the entry
    named. The user is everything after the third colon (it may hold colons itself)."""
    entries = []
    for item in raw:
        parts = item.split(":", 3)
        user = parts[3] if len(parts) == 4 else None
        if (
            len(parts) < 3
            or parts[1] not in SCOPES
            or len(parts[2]) != 64
            or (user is not None and not USER_PATTERN.fullmatch(user))
        ):
            raise ConfigurationError(
                f"ATOMQ_API_TOKENS entry {parts[0]!r} must be name:scope:sha256hex[:user] "
                "with scope read, write or admin (and a user of 1-128 characters)"
            )
        try:
            digest = bytes.fromhex(parts[2])
        except ValueError:
            raise ConfigurationError(
                f"ATOMQ_API_TOKENS entry {parts[0]!r} has a hash that is not hex"
            ) from None
        entries.append(TokenEntry(parts[0], parts[1], digest, user))
    return entries


def authenticate(entries: list[TokenEntry], token: str) -> Principal | None:
    """The principal whose hash matches ``token``, checking every entry in constant time."""
    presented = hashlib.sha256(token.encode()).digest()
    found: TokenEntry | None = None
    for entry in entries:
        # No early exit: the time taken does not depend on which entry matched.
        if hmac.compare_digest(presented, entry.digest):
            found = entry
    return found.principal() if found else None
