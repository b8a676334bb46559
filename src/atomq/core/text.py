"""Text that cannot be encoded as UTF-8: lone surrogates such as ``"\\ud800"``.

A JSON escape (``"\\ud800"``) or a command line that is not UTF-8 produces one; no Redis reply,
database driver or JSON answer can carry it. Every entrance refuses such text
(:func:`atomq.core.options.check_text`); what was stored before, or written by someone else,
is escaped when it is read back (:func:`loads`), so a read never fails on it.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: A JSON escape of a UTF-16 surrogate: the only way JSON text can hold a lone one.
_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode written as visible ``\\udXXX``."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_tree(value: Any) -> Any:
    """``value`` (JSON-like) with :func:`printable` applied to every string and key."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: printable_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_tree(item) for item in value]
    return value


def loads(raw: str | bytes | bytearray) -> Any:
    """``json.loads``, with any lone surrogate the document spells as an escape written as
    visible ``\\udXXX`` text. The tree is rebuilt only when such an escape is present."""
    value = json.loads(raw)
    pattern = _ESCAPE if isinstance(raw, str) else _ESCAPE_BYTES
    if pattern.search(raw):  # type: ignore[arg-type]
        return printable_tree(value)
    return value
