"""Tasks of the worker-side scenarios (1: workers killed, 5: deploys, 6: hostile jobs).

Worker processes import this module through ``ATOMQ_TASK_MODULES``; every task records its
effect in the scenario's ledger (``reliability.ledger``) under a key unique to its job, so the
scenario can tell "ran at least once" from "ran twice".
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from atomq import Retry, task
from reliability.ledger import record

#: Retries with no delay: a retry is the recovery of a killed attempt, not a back-off.
PROMPT_RETRY = Retry(max=2, delay=0, jitter=0)


@task("rel_w_effect", retry=Retry(max=20, delay=0, jitter=0))
def effect(key: str, seconds: float = 0.0) -> str:
    """Work ``seconds``, then record ``key``: a kill before the record leaves no trace; a kill
    after it, before the worker has recorded the job's end, makes the job run again."""
    if seconds:
        time.sleep(seconds)
    record(key)
    return key


@task("rel_w_long", timeout=600, retry=Retry(max=1, delay=0, jitter=0))
def long(key: str, seconds: float) -> str:
    """A long job: records ``start:key`` when it starts and ``done:key`` when it ends."""
    record(f"start:{key}")
    time.sleep(seconds)
    record(f"done:{key}")
    return key


@task("rel_w_ok")
def ok(key: str) -> str:
    """A well-behaved job, the stream that must keep flowing next to the hostile ones."""
    record(key)
    return key


# -- hostile jobs (scenario 6), each in a process of its own ---------------------------------


@task("rel_w_deaf", isolation="fork", timeout=2, retry=PROMPT_RETRY)
def deaf(key: str) -> None:
    """Block and ignore every signal it can, then sleep inside C: only SIGKILL ends it."""
    record(key)
    catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
    time.sleep(3600)


@task("rel_w_deaf_inline", timeout=2)
def deaf_inline(key: str) -> None:
    """Like ``rel_w_deaf`` but inside the worker's own process (the default, no isolation): the
    time limit's SIGALRM never arrives, so the supervisor kills the whole worker."""
    record(key)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(3600)


@task("rel_w_spinner", isolation="fork", timeout=2, retry=PROMPT_RETRY)
def spinner(key: str, pid_file: str) -> None:
    """Start a subprocess that spins in a busy loop and wait for it; the time limit must take
    the subprocess down with the job. Its pid goes to ``pid_file`` (one line per attempt)."""
    record(key)
    child = subprocess.Popen(  # noqa: S603 - our own interpreter, a fixed program
        [
            sys.executable,
            "-c",
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass",
        ]
    )
    with open(pid_file, "a") as handle:
        handle.write(f"{child.pid}\n")
    child.wait()


@task("rel_w_segfault", isolation="fork", retry=PROMPT_RETRY)
def segfault(key: str) -> None:
    """Dereference address 0 in C."""
    record(key)
    ctypes.string_at(0)


@task("rel_w_hog", isolation="fork", retry=PROMPT_RETRY)
def hog(key: str, step_mb: int = 64, give_up_mb: int = 3072) -> int:
    """Allocate (and touch) memory until refused. Past ``give_up_mb`` it stops on its own with
    a RuntimeError, so a memory limit that was not applied fails the scenario rather than the
    machine it runs on."""
    record(key)
    held: list[bytearray] = []
    while len(held) * step_mb < give_up_mb:
        held.append(bytearray(os.urandom(1)) * (step_mb * 1024 * 1024))
    raise RuntimeError(f"allocated {give_up_mb} MB and no memory limit stopped it")


# -- many jobs in flight in one worker process (scenario 10) --------------------------------


@task("rel_w_async", timeout=120)
async def async_long(key: str, seconds: float) -> str:
    """Waits on the worker's event loop: records ``start:key``, then ``done:key``. No retries:
    a run handed back because another job made the process die must not cost it an attempt."""
    import asyncio

    record(f"start:{key}")
    await asyncio.sleep(seconds)
    record(f"done:{key}")
    return key


@task("rel_w_deaf_thread", timeout=2)
def deaf_thread(key: str) -> None:
    """A plain task stuck in C past its limit, on a worker thread: neither the stop flag nor the
    exception raised in its thread reach it; the worker gives up on it and has its supervisor
    kill the process."""
    record(key)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(3600)
