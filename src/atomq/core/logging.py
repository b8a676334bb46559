"""Logging for every atomq process: text by default, JSON with ``ATOMQ_LOG_FORMAT=json``.

Lines written while a job runs carry its ``job_id``, ``task`` and ``queue``, plus every
id-like keyword argument of the job (``post_id=post_123``, ``user_id=...``: names ending in
``_id`` with a short string or integer value), so ``grep ERROR`` and ``grep post_123`` on a
worker log find what they should. Task code adds its own fields for the rest of the job with
:func:`bind_log_fields`, or for a block with :func:`log_context`.

In the text format the fields follow the first line of the message, so a multi-line message
(a traceback) keeps its ``ERROR`` and its ids on the line ``grep`` shows.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import re
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

#: Extras RQ attaches to its exception log line that atomq leaves out: ``task`` already names
#: the function, and whole argument lists would turn every error line into a wall of data
#: (the id-like arguments are there already, see :func:`job_log_fields`).
_DROPPED = {"arguments", "kwargs", "func"}

#: Longest id value copied from a job's keyword arguments into its log fields.
MAX_ID_FIELD_LENGTH = 128

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


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


def current_log_fields() -> dict[str, Any]:
    """A copy of the fields every log line gets here and now (to log later, elsewhere, with
    them: a worker records a job's failure on another thread than the job's)."""
    return dict(_context.get() or {})


def bind_log_fields(**fields: Any) -> None:
    """Add ``fields`` to every later log line of the current job (or :func:`log_context` block).

    Inside a task: ``bind_log_fields(post_id=post.id, platform="mastodon")``. Outside any
    block the fields stay for the rest of the thread.
    """
    current = _context.get()
    values = {k: v for k, v in fields.items() if v is not None}
    if current is None:
        _context.set(values)
    else:
        current.update(values)


def job_log_fields(job: Any, queue: str) -> dict[str, Any]:
    """The log fields of a job: ``job_id``, ``task``, ``queue`` and its id-like kwargs."""
    fields: dict[str, Any] = {"job_id": job.id}
    try:
        fields["task"] = job.func_name
        kwargs = job.kwargs
    except Exception:  # an undecodable job is still logged by id
        kwargs = None
    fields["queue"] = queue
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if not (isinstance(key, str) and key.endswith("_id")) or key in fields:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                continue
            if isinstance(value, str) and (len(value) > MAX_ID_FIELD_LENGTH or "\n" in value):
                continue
            fields[key] = value
    return fields


def current_context() -> dict[str, Any]:
    """The fields :func:`log_context` has set for this thread or task."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copy the current log context onto each record (and drop RQ's argument extras)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Straight on the record's __dict__: workers log a line or two per job.
        attributes = record.__dict__
        for key in _DROPPED:
            attributes.pop(key, None)
        fields = _context.get()
        if fields:
            for key, value in fields.items():
                if key not in attributes:
                    attributes[key] = value
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "context"}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger[pid]: message key=value...``, fields on the message's first line."""

    _second: int = -1
    _stamp: str = ""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Rendered once per second rather than once per line: workers log a line per job.
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = _fields(record)
        if not extra:
            return text
        rendered = "".join(f" {k}={_text(v)}" for k, v in extra.items())
        first, newline, rest = text.partition("\n")
        return f"{first}{rendered}{newline}{rest}"


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
        for key, value in _fields(record).items():
            payload[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class RotationAwareFileHandler(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler that checks for rotation at most once a second, not on every line."""

    _checked: float = 0.0

    def reopenIfNeeded(self) -> None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            super().reopenIfNeeded()


#: Characters that make a field's value quoted in the text format.
_NEEDS_QUOTES = re.compile(r'[ "=\n]')


def _text(value: Any) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


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
    sink.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(sink)
    root.setLevel(level.upper())
    # RQ attaches its own handlers when it finds none; ours are on the root, so it won't.
    for name in ("rq.worker", "rq.job", "rq.queue", "rq.scheduler"):
        logging.getLogger(name).setLevel(level.upper())
    # Alembic narrates every plugin it loads at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request at INFO; a publish is already logged with its post and job id,
    # and in a burst of posts the duplicate lines cost a worker measurable CPU.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
