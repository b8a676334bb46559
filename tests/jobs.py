"""Tasks the tests enqueue. Worker processes import this module (ATOMQ_TASK_MODULES)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from atomq import PermanentError, RetryableError, task


@task("add")
def add(a: int, b: int) -> int:
    return a + b


@task("echo", queue="high_priority")
def echo(value: Any = None) -> Any:
    return value


@task("fail")
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task("fail_permanently", retry=3)
def fail_permanently(message: str = "no point retrying") -> None:
    raise PermanentError(message)


@task("count_attempts")
def count_attempts(path: str, fail_times: int = 0, retry_after: float | None = None) -> int:
    """Append a line per attempt; fail the first ``fail_times`` attempts."""
    with open(path, "a") as handle:
        handle.write(f"{time.time()}\n")
    attempts = len(Path(path).read_text().splitlines())
    if attempts <= fail_times:
        if retry_after is not None:
            raise RetryableError(f"attempt {attempts} failed", delay=retry_after)
        raise RuntimeError(f"attempt {attempts} failed")
    return attempts


@task("sleep_for", timeout=120)
def sleep_for(seconds: float, started_file: str | None = None, done_file: str | None = None) -> float:
    """Sleep, marking start and end in files so tests can see both."""
    if started_file:
        Path(started_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    if done_file:
        Path(done_file).write_text("done")
    return seconds


@task("record")
def record(path: str, key: str) -> str:
    """Append ``key`` to a ledger file (one line per run) and return it."""
    with open(path, "a") as handle:
        handle.write(key + "\n")
    return key


@task("has_timeout_param")
def has_timeout_param(url: str, timeout: int = 10) -> dict[str, Any]:
    return {"url": url, "timeout": timeout}


@task("slow_first_attempt", timeout=120)
def slow_first_attempt(path: str, seconds: float = 60) -> int:
    """The first attempt records its pid and sleeps; later attempts return at once."""
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    attempts = len(Path(path).read_text().splitlines())
    if attempts == 1:
        time.sleep(seconds)
    return attempts


@task("crash", retry=2)
def crash(path: str) -> None:
    """Crash the process that runs it (a poison job), noting each attempt."""
    import ctypes

    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    ctypes.string_at(0)  # segfault


@task("crash_isolated", isolation="fork")
def crash_isolated() -> None:
    """Crash, but in a child process of its own (isolation='fork')."""
    import ctypes

    ctypes.string_at(0)


@task("isolated_add", isolation="fork")
def isolated_add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b, "pid": os.getpid()}


@task("deaf_sleep")
def deaf_sleep(seconds: float) -> None:
    """Sleep with SIGALRM blocked, as C code holding the GIL would: only a kill stops it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)


@task("record_start")
def record_start(path: str, key: str, due: float) -> None:
    with open(path, "a") as handle:
        handle.write(f"{key} {due} {time.time()}\n")


@task("publish_post", queue="social_media")
def publish_post(post_id: str, user_id: str, fail: bool = False) -> dict[str, str]:
    """Logs like the guide's process_scheduled_post, so log tests can grep for the post id."""
    import logging

    from atomq.observability.logging import bind_log_fields

    log = logging.getLogger("tests.publish")
    log.info("publishing post")
    bind_log_fields(platform="mastodon")  # on every later line of this job, the worker's too
    if fail:
        log.error("Failed to publish post: platform said no")
        raise RuntimeError("platform said no")
    return {"post_id": post_id, "user_id": user_id}


@task("defer_twice", retry=1)
def defer_twice(path: str) -> int:
    """Ask twice to run later (a rate limit, say), then succeed."""
    from atomq import Defer

    with open(path, "a") as handle:
        handle.write(f"{time.time()}\n")
    runs = len(Path(path).read_text().splitlines())
    if runs < 3:
        raise Defer(0.5, "rate limit not refilled yet")
    return runs
