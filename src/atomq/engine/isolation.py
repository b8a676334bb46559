"""Fork isolation for tasks that ask for it (``@task(..., isolation="fork")``).

The job runs in a child process that reports its outcome to the worker through a pipe and
never talks to Redis on the worker's behalf; the worker records the outcome as for any job.
A child that crashes (segfault, out of memory) or outlives its time limit is killed and its
job failed or retried, while the worker carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any

from rq.timeouts import JobTimeoutException

from atomq.core.errors import Defer, PermanentError, RetryableError
from atomq.engine.process import die_with_parent, limit_memory

if TYPE_CHECKING:
    from atomq.engine.context import Running
    from atomq.engine.jobs import AtomqJob

#: Longest a reply from the child may be (a return value or a traceback).
_MAX_REPLY = 16 * 1024 * 1024


class ChildCrashed(Exception):
    """The job's process died without reporting (signal, or exit without a reply)."""


def run_forked(
    running: Running, job: AtomqJob, timeout: float, memory_limit_mb: int | None
) -> tuple[str, Any]:
    """Run ``job`` in a child process: ``("ok", value)`` or ``("failed", (exception,
    traceback text))``. A stop raised in the calling thread kills the child and propagates."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        os.close(read_fd)
        _child(job, write_fd, memory_limit_mb)
    os.close(write_fd)
    with contextlib.suppress(OSError):  # also here, so a kill never races the child's own call
        os.setpgid(pid, pid)
    running.child_pid = pid
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(pid)
                return "failed", _error(
                    JobTimeoutException(f"Task exceeded maximum timeout value ({timeout} seconds)")
                )
            ready, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:  # a stop request or a cold shutdown, raised in this thread
        _kill(pid)
        raise
    finally:
        os.close(read_fd)
        running.child_pid = None
    _, status = os.waitpid(pid, 0)
    reply = b"".join(chunks)
    if not reply:
        how = (
            f"signal {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else (f"exit code {os.WEXITSTATUS(status)}")
        )
        return "failed", _error(ChildCrashed(f"the job's process died ({how}) before reporting a result"))
    message = json.loads(reply)
    if message["ok"]:
        return "ok", message["value"]
    return "failed", (_rebuild(message), message["traceback"])


def _child(job: AtomqJob, write_fd: int, memory_mb: int | None) -> None:  # pragma: no cover - child
    # A process group of its own: the kill at the time limit takes whatever the job started
    # too (a subprocess busy in a loop would otherwise outlive its job, unsupervised).
    os.setpgid(0, 0)
    die_with_parent()
    limit_memory(memory_mb)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        value = job.perform()
        try:
            reply = json.dumps({"ok": True, "value": value})
        except (TypeError, ValueError):
            reply = json.dumps({"ok": True, "value": "Unserializable return value"})
    except BaseException as exc:
        reply = json.dumps(
            {
                "ok": False,
                "kind": _kind(exc),
                "delay": getattr(exc, "delay", None),
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
            }
        )
    data = reply.encode()[:_MAX_REPLY]
    view = memoryview(data)
    while view:
        written = os.write(write_fd, view)
        view = view[written:]
    os._exit(0)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, RetryableError):
        return "retryable"
    if isinstance(exc, Defer):
        return "defer"
    return "error"


def kill_child(pid: int) -> None:
    """Kill a forked job's process group (the waiting thread then sees it end)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill(pid: int) -> None:
    """Kill the job's process and everything in its process group, then reap it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        # Not (yet) a group leader: the child was killed before its setpgid ran.
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    os.waitpid(pid, 0)


def _error(exc: BaseException) -> tuple[BaseException, str]:
    return exc, "".join(traceback.format_exception(exc))


def _rebuild(message: dict[str, Any]) -> BaseException:
    if message["kind"] == "permanent":
        return PermanentError(message["message"])
    if message["kind"] == "retryable":
        return RetryableError(message["message"], delay=message.get("delay"))
    if message["kind"] == "defer":
        return Defer(message.get("delay") or 0.0, message["message"])
    return RuntimeError(message["message"])
