"""Bearer tokens with scopes ``read`` < ``write`` < ``admin``.

Tokens are configured as hashes (``ATOMQ_API_TOKENS=name:scope:sha256hex,...``), so the
settings never hold a usable secret. A presented token is hashed and compared with every
configured hash in constant time. ``atomq token create`` makes a token and its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from atomq.core.errors import ConfigurationError

#: Scopes from weakest to strongest; each includes the ones before it.
SCOPES: tuple[str, ...] = ("read", "write", "admin")

#: Prefix of generated tokens, so they are recognisable in logs and secret scanners.
TOKEN_PREFIX = "atq_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scope."""

    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        """Whether this principal's scope includes ``needed``."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class TokenEntry:
    """A configured token: name, scope and the SHA-256 of the secret."""

    name: str
    scope: str
    digest: bytes


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (tokens are long and random, so a plain hash suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def entry_for(name: str, scope: str, token: str) -> str:
    """The ``name:scope:hash`` line to put in ``ATOMQ_API_TOKENS``."""
    return f"{name}:{scope}:{hash_token(token)}"


def parse_entries(raw: list[str]) -> list[TokenEntry]:
    """Parse ``name:scope:sha256hex`` entries, refusing malformed ones with the entry named."""
    entries = []
    for item in raw:
        parts = item.split(":")
        if len(parts) != 3 or parts[1] not in SCOPES or len(parts[2]) != 64:
            raise ConfigurationError(
                f"ATOMQ_API_TOKENS entry {parts[0]!r} must be name:scope:sha256hex "
                "with scope read, write or admin"
            )
        try:
            digest = bytes.fromhex(parts[2])
        except ValueError:
            raise ConfigurationError(
                f"ATOMQ_API_TOKENS entry {parts[0]!r} has a hash that is not hex"
            ) from None
        entries.append(TokenEntry(parts[0], parts[1], digest))
    return entries


def authenticate(entries: list[TokenEntry], token: str) -> Principal | None:
    """The principal whose hash matches ``token``, checking every entry in constant time."""
    presented = hashlib.sha256(token.encode()).digest()
    found: TokenEntry | None = None
    for entry in entries:
        # No early exit: the time taken does not depend on which entry matched.
        if hmac.compare_digest(presented, entry.digest):
            found = entry
    return Principal(found.name, found.scope) if found else None
