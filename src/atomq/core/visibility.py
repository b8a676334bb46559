"""What each API scope sees of the work atomq holds: the policy written in
docs/operations.md ("What each scope sees"), in one place.

The API, the dashboard and the features' dashboard sections all ask here, so a field is
hidden the same way on every endpoint and page:

* ``read``, for monitoring: *how the work goes*. Ids, task, workflow and queue names,
  statuses, times, counts, progress fractions, workers. An error shows only as its kind
  (``ValueError``): messages often quote the arguments.
* ``write``, for the applications that submit work: also *what the work says*. Results,
  error messages, post text and media, workflow run inputs and step results, progress
  messages.
* ``admin``: also *what the work was called with*. Job arguments and meta, tracebacks,
  descriptions generated from the call, the step arguments of workflow definitions.

A field the scope does not show is ``null`` (the key stays, so the shape never changes).
"""

from __future__ import annotations

import re
from typing import Any

#: Scopes from weakest to strongest; each includes the ones before it.
SCOPES: tuple[str, ...] = ("read", "write", "admin")

#: The scope that sees results, error messages, post text, run inputs and step results.
CONTENT = "write"

#: The scope that sees job arguments, meta, tracebacks and generated descriptions.
INTERNALS = "admin"

#: Error texts atomq writes itself: they quote nothing a caller sent.
_OWN_ERRORS = frozenset({"maximum number of retries exceeded", "stopped on request"})

#: ``ValueError: ...`` or ``package.module.SomeError`` (a traceback's last line).
_KIND = re.compile(r"([A-Za-z_][\w.]*)(?::\s|:$|$)")

#: What ``read`` gets for an error whose kind cannot be told.
HIDDEN_ERROR = "error (its message needs the write scope)"


def allows(scope: str | None, needed: str) -> bool:
    """Whether ``scope`` includes ``needed`` (no scope includes nothing)."""
    if scope not in SCOPES:
        return False
    return SCOPES.index(scope) >= SCOPES.index(needed)


def shown(scope: str | None, needed: str, value: Any) -> Any:
    """``value`` when ``scope`` includes ``needed``, else ``None``."""
    return value if allows(scope, needed) else None


def error_kind(text: str) -> str:
    """The kind of an error (``ValueError``) without its message; atomq's own texts as they are."""
    if text in _OWN_ERRORS:
        return text
    match = _KIND.match(text.strip())
    return match.group(1).rsplit(".", 1)[-1] if match else HIDDEN_ERROR


def error_text(scope: str | None, text: str | None) -> str | None:
    """An error as ``scope`` may see it: whole for ``write`` and up, its kind for ``read``."""
    if text is None or allows(scope, CONTENT):
        return text
    return error_kind(text)


def job_status(scope: str | None, status: dict[str, Any]) -> dict[str, Any]:
    """The guide's status dictionary as ``scope`` may see it (``result`` and ``error``)."""
    if allows(scope, CONTENT):
        return status
    return {**status, "result": None, "error": error_text(scope, status.get("error"))}
