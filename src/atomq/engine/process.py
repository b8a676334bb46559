"""Small process-level helpers shared by the worker, the supervisor and `atomq up`."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys

#: prctl option asking the kernel to signal us when our parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux only).

    A job process whose worker was SIGKILLed would otherwise run on unsupervised while the
    supervisor hands its job to someone else, and the job would run twice at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except OSError:
        return
    # The parent may have died between fork and prctl: then nobody will signal us.
    if os.getppid() != parent:
        os._exit(1)


def set_process_title(title: str) -> None:
    """Show ``title`` in ``ps`` when setproctitle is installed; otherwise do nothing."""
    try:
        from setproctitle import setproctitle  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    setproctitle(title)


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (zombies count as alive until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def limit_memory(megabytes: int | None) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``megabytes``; ``None`` leaves it alone.

    Called in a process that runs one job (a forked job, an RQ work-horse): a job that grows
    past the cap gets ``MemoryError`` from its next allocation instead of waking the kernel's
    OOM killer, which might pick the worker, Redis or anything else on the host.
    """
    if megabytes is None:
        return
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
