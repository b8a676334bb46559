"""Logging for every atomq process: text by default, JSON with ``ATOMQ_LOG_FORMAT=json``.

Lines written while a job runs carry its ``job_id``, ``task`` and ``queue`` (and any other
context a task adds, such as ``post_id``), so ``grep ERROR`` and ``grep post_123`` on a
worker log find what they should.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "atomq_log_context", default=None
)

#: Attributes of a LogRecord that are not user context.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s%(context)s"


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (nesting merges)."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields :func:`log_context` has set for this thread or task."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copy the current log context onto each record and render it for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get() or {}
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "context"}
        record.context = "".join(f" {k}={_text(v)}" for k, v in sorted(extra.items())) if extra else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "context":
                payload[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """The text format, with the timestamp rendered once per second instead of once per line."""

    _second: int = -1
    _stamp: str = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class RotationAwareFileHandler(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler that checks for rotation at most once a second, not on every line."""

    _checked: float = 0.0

    def reopenIfNeeded(self) -> None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            super().reopenIfNeeded()


def _text(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if " " in text else text


def setup_logging(level: str = "INFO", fmt: str = "text", log_file: Path | str | None = None) -> None:
    """Configure the root logger once per process.

    ``log_file`` uses a WatchedFileHandler, so logrotate can move the file away (the guide's
    ``postrotate`` reload is then harmless rather than required).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    sink: logging.Handler
    if log_file:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = RotationAwareFileHandler(path, encoding="utf-8")
    else:
        sink = logging.StreamHandler(sys.stderr)
    sink.addFilter(ContextFilter())
    sink.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root.addHandler(sink)
    root.setLevel(level.upper())
    # RQ attaches its own handlers when it finds none; ours are on the root, so it won't.
    for name in ("rq.worker", "rq.job", "rq.queue", "rq.scheduler"):
        logging.getLogger(name).setLevel(level.upper())
    # Alembic narrates every plugin it loads at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
