"""Tasks the tests enqueue. Worker processes import this module (ATOMQ_TASK_MODULES)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from atomq import PermanentError, Retry, RetryableError, task


@task("add")
def add(a: int, b: int) -> int:
    return a + b


@task("echo", queue="high_priority")
def echo(value: Any = None) -> Any:
    return value


@task("fail")
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task("undecodable_name")
def undecodable_name(fail: bool = False) -> str:
    """A file name that is not UTF-8, as os.listdir would return it (a lone surrogate): the
    text a task can make itself, which Redis, JSON and databases cannot carry as such."""
    name = os.fsdecode(b"/data/report-\xff.csv")
    if fail:
        raise FileNotFoundError(f"no such file: {name}")
    return name


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

    from atomq.core.logging import bind_log_fields

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


# -- workflows -------------------------------------------------------------------------------

from atomq.features.workflows import Workflow, register_workflow, workflow  # noqa: E402


@task("wf_start")
def wf_start(input: dict) -> int:
    return int(input["n"])


@task("wf_double")
def wf_double(results: dict) -> int:
    return 2 * results["A"]


@task("wf_add_ten")
def wf_add_ten(results: dict) -> int:
    return results["A"] + 10


@task("wf_merge")
def wf_merge(results: dict) -> dict:
    return {"B": results["B"], "C": results["C"], "sum": results["B"] + results["C"]}


@task("wf_gate")
def wf_gate(input: dict) -> str:
    """Fails until the file named by input["flag"] exists."""
    if not Path(input["flag"]).exists():
        raise ValueError(f"gate closed: {input['flag']} is missing")
    return "open"


@task("wf_ledger")
def wf_ledger(input: dict, key: str) -> str:
    with open(input["ledger"], "a") as handle:
        handle.write(f"{key} {os.getpid()}\n")
    return key


@task("wf_sleepy", timeout=120)
def wf_sleepy(input: dict) -> int:
    """Writes its pid; the first attempt then sleeps a minute (tests kill it)."""
    with open(input["ledger"], "a") as handle:
        handle.write(f"K {os.getpid()}\n")
    attempts = sum(1 for line in Path(input["ledger"]).read_text().splitlines() if line.startswith("K "))
    if attempts == 1:
        time.sleep(60)
    return attempts


@workflow("diamond")
def diamond(w: Workflow) -> None:
    """A feeds B and C, which both feed D."""
    w.step("A", "wf_start")
    w.step("B", "wf_double", depends_on=["A"])
    w.step("C", "wf_add_ten", depends_on=["A"])
    w.step("D", "wf_merge", depends_on=["B", "C"])


register_workflow(
    Workflow("gated")
    .step("A", "wf_start")
    .step("G", "wf_gate", depends_on=["A"])
    .step("E", "wf_ledger", kwargs={"key": "E"}, depends_on=["G"])
    .step("side", "wf_ledger", kwargs={"key": "side"})
)

register_workflow(
    Workflow("slow_chain")
    .step("S", "long_steps", kwargs={"steps": 300, "step_seconds": 0.1})
    .step("T", "noop", depends_on=["S"])
)

register_workflow(
    Workflow("crashy")
    .step("K", "wf_sleepy", retry=Retry(max=2, delay=0, jitter=0))
    .step("L", "wf_ledger", kwargs={"key": "L"}, depends_on=["K"])
)


@task("record_tick")
def record_tick(path: str) -> str:
    """Append the running job's id (one line per run)."""
    from rq import get_current_job

    job = get_current_job()
    with open(path, "a") as handle:
        handle.write(f"{job.id if job else '-'}\n")
    return job.id if job else "-"


@task("async_sleep", timeout=60)
async def async_sleep(seconds: float = 0.1, started_file: str | None = None) -> float:
    """Waits on the event loop: many run at once in one worker process."""
    import asyncio

    if started_file:
        Path(started_file).write_text(str(time.time()))
    await asyncio.sleep(seconds)
    return seconds


@task("async_add")
async def async_add(a: int, b: int) -> int:
    return a + b


@task("async_fail")
async def async_fail(message: str = "async boom") -> None:
    raise ValueError(message)


@task("thread_sleep", timeout=60)
def thread_sleep(seconds: float = 0.1) -> float:
    """Waits in a plain function: a thread of its own."""
    time.sleep(seconds)
    return seconds


@task("imported")
def imported(modules: list[str]) -> dict[str, bool]:
    """Which of ``modules`` the worker process had imported when this job ran."""
    import sys

    return {name: name in sys.modules for name in modules}


#: What the warm-ups below saw, in the worker process that called them.
WARMED: dict[str, Any] = {"calls": 0}


async def warm_up_on_the_loop(connection: Any) -> None:
    """``warmed``'s warm-up: notes the loop it ran on and that the worker's Redis answered."""
    import asyncio

    WARMED["calls"] += 1
    WARMED["loop"] = id(asyncio.get_running_loop())
    WARMED["redis"] = bool(connection.ping())
    WARMED["at"] = time.time()


@task("warmed", queue="warm_ups", warm_up="tests.jobs:warm_up_on_the_loop")
async def warmed() -> dict[str, Any]:
    """What the warm-up had done when this job ran, and whether it shared the job's loop."""
    import asyncio

    return {
        "calls": WARMED["calls"],
        "same_loop": WARMED.get("loop") == id(asyncio.get_running_loop()),
        "redis": WARMED.get("redis"),
        "before_job": WARMED.get("at", float("inf")) < time.time(),
    }


def warm_up_that_fails(connection: Any) -> None:
    raise RuntimeError("no warm-up today")


@task("cold", queue="cold_starts", warm_up="tests.jobs:warm_up_that_fails")
def cold() -> str:
    return "ran anyway"
