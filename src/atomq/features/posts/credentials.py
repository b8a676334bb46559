"""Account credentials at rest: encrypted with Fernet (AES-128-CBC + HMAC-SHA256).

Keys come from ``ATOMQ_CREDENTIALS_KEY`` (comma-separated, newest first: the first encrypts,
all decrypt, which is how a key is rotated). Without it, one key is generated on first use
and kept in ``ATOMQ_DATA_DIR/credentials.key`` (mode 0600), which is what ``atomq up`` needs;
a deployment with API and workers on different hosts must set the variable.

Credentials are decrypted only by the worker, right before a publisher uses them; they are
never returned by the API, printed by the CLI or written to a log.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from atomq.core.errors import ConfigurationError
from atomq.core.settings import Settings

#: Decrypted tokens a box remembers (least recently used dropped first).
OPENED_CACHE = 1024

#: File under ATOMQ_DATA_DIR holding the generated key when ATOMQ_CREDENTIALS_KEY is unset.
KEY_FILE = "credentials.key"


class CredentialsBox:
    """Encrypts and decrypts credential dictionaries with the configured keys."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigurationError("ATOMQ_CREDENTIALS_KEY holds no key")
        self._lock = threading.Lock()
        self._opened: OrderedDict[str, dict[str, Any]] = OrderedDict()
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError:
            raise ConfigurationError(
                "ATOMQ_CREDENTIALS_KEY must be Fernet keys (32 url-safe base64 bytes each); "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialsBox:
        """The box for ``settings``: the configured keys, or the key file (made on first use)."""
        if settings.credentials_key is not None:
            raw = settings.credentials_key.get_secret_value()
            return cls([item.strip().encode() for item in raw.split(",") if item.strip()])
        return cls([_key_file(settings.data_dir / KEY_FILE)])

    def seal(self, credentials: dict[str, Any]) -> str:
        """Encrypt ``credentials`` (a JSON-able dict) into an opaque string."""
        return self._fernet.encrypt(json.dumps(credentials, sort_keys=True).encode()).decode()

    def open(self, token: str, *, account_id: str = "?") -> dict[str, Any]:
        """Decrypt what :meth:`seal` made, or explain which key setting is wrong.

        Recently opened tokens are remembered (a worker publishing an account's posts opens
        the same token for each: the HMAC check and AES were 3 % of a publish's CPU). A token
        is immutable, so the cache cannot go stale; each caller gets its own copy.
        """
        with self._lock:
            known = self._opened.get(token)
            if known is not None:
                self._opened.move_to_end(token)
                return copy.deepcopy(known)
        try:
            value: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigurationError(
                f"cannot decrypt the credentials of account {account_id}: this process has a different "
                "ATOMQ_CREDENTIALS_KEY (or credentials.key) than the one that stored them; "
                "use the same key on every host"
            ) from None
        with self._lock:
            self._opened[token] = value
            while len(self._opened) > OPENED_CACHE:
                self._opened.popitem(last=False)
        return copy.deepcopy(value)


def _key_file(path: Path) -> bytes:
    """Read the key file, creating it atomically (first writer wins) when missing."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # Written whole under a private name, then linked into place: a concurrent reader sees
    # either no file or the complete key, and of two creators the first link wins.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return path.read_bytes().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return key
