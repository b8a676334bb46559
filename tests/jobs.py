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


@task("noop")
def noop(i: int = 0) -> int:
    return i


@task("fail_odd")
def fail_odd(i: int) -> int:
    if i % 2:
        raise ValueError(f"odd item {i}")
    return i


@task("long_steps", timeout=120)
def long_steps(
    steps: int, step_seconds: float, started_file: str | None = None, cooperative: bool = True
) -> dict:
    """Report progress at each step; leave cleanly (raise JobStopped) when asked to stop."""
    from atomq import raise_if_stopping, report_progress

    if started_file:
        Path(started_file).write_text(str(os.getpid()))
    for n in range(steps):
        if cooperative:
            raise_if_stopping()
        time.sleep(step_seconds)
        report_progress((n + 1) / steps, f"step {n + 1} of {steps}")
    return {"steps": steps}


@task("sum_chunk")
def sum_chunk(items: list[int], out_dir: str | None = None) -> int:
    total = sum(items)
    if out_dir:
        Path(out_dir, f"{items[0]}").write_text(str(total))
    return total
