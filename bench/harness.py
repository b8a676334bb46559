"""What the benchmarks share: a private redis-server (testkit's, the tests' own), process
handling, percentiles, tables and JSON output. Nothing here imports atomq."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis

from testkit.support import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"

#: Clock ticks per second of /proc/<pid>/stat's utime and stime.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


class Server:
    """A private redis-server on a free port (testkit's, as the tests use), without persistence
    unless ``aof``; stopped by PID."""

    def __init__(self, *, aof: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="atomq-bench-"))
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else []
        self.server = RedisServer(self.dir, extra=persistence).start()
        self.port = self.server.port
        self.url = self.server.url
        assert self.server.process is not None
        self.process = self.server.process
        self.client = redis.Redis.from_url(self.url, socket_timeout=30)

    def proc_cpu_seconds(self) -> float:
        """utime + stime of the redis-server process, from /proc/<pid>/stat (10 ms ticks)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            # The command name (field 2) may hold spaces; count fields after its closing ')'.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def snapshot(self) -> dict[str, float]:
        """Server-wide counters, read in one round trip (three INFO commands, pipelined)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.info("commandstats")
        pipe.info("stats")
        pipe.info("cpu")
        commands, stats, cpu = pipe.execute()
        return {
            "time": time.perf_counter(),
            "calls": sum(int(v["calls"]) for v in commands.values()),
            "reads": int(stats["total_reads_processed"]),
            "info_cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "proc_cpu": self.proc_cpu_seconds(),
        }

    def stop(self) -> None:
        self.client.close()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_costs(
    before: dict[str, float], after: dict[str, float], units: float, own: int
) -> dict[str, float]:
    """Redis commands, round trips and CPU per unit (job, enqueue) between two snapshots.

    ``own`` is how many commands and read events the benchmark itself sent in between
    (polling). Of the snapshots' own INFO pipelines, the first one's last two commands and
    the second one's read event fall in between.
    """
    proc_ms = (after["proc_cpu"] - before["proc_cpu"]) * 1000 / units
    info_ms = (after["info_cpu"] - before["info_cpu"]) * 1000 / units
    return {
        "commands_per_job": (after["calls"] - before["calls"] - own - 2) / units,
        "round_trips_per_job": (after["reads"] - before["reads"] - own - 1) / units,
        "redis_cpu_ms_per_job": proc_ms,
        "redis_cpu_info_ms_per_job": info_ms,
        # /proc, read outside Redis, is the figure to trust; INFO cpu cross-checks it.
        "jobs_per_redis_core": 1000 / proc_ms if proc_ms > 0 else None,
    }


class Processes:
    """Child processes started in their own sessions, stopped by process group (their PIDs)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(command), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def stop(self, grace: float = 20) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.started:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Forked children (saq, huey, dramatiq) may outlive their leader: end the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.started.clear()


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and every live descendant,
    from /proc (0.0 where /proc is missing). The processes' own time, so another tenant
    taking the host's cores (steal) does not count, where it inflates every latency."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / tick  # utime, stime
        todo += children.get(pid, [])
    return total


class AsyncRunner:
    """An event loop in a thread, for the asyncio peers' clients (arq, saq, atomq.aio), so
    that synchronous benchmark code (and a producer thread) can drive them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(seconds: Sequence[float], prefix: str) -> dict[str, float]:
    """p50/p99/max in milliseconds of ``seconds``, keys prefixed."""
    if not seconds:
        return {}
    return {
        f"{prefix}_p50_ms": statistics.median(seconds) * 1000,
        f"{prefix}_p99_ms": pct(seconds, 0.99) * 1000,
        f"{prefix}_max_ms": max(seconds) * 1000,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median of the runs' numeric values (other values: the first run's)."""
    keys = {k for run in runs for k in run}
    out: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        if values and all(isinstance(v, int | float) for v in values):
            out[key] = statistics.median(values)
        else:
            out[key] = values[0] if values else None
    return out


def print_table(
    results: dict[str, dict[str, Any]], columns: Iterable[tuple[str, str, str]], width: int = 13
) -> None:
    """One row per system; ``columns`` are (key, title, format). Missing values print as '-'."""
    columns = list(columns)
    widths = [max(width, len(title) + 2) for _, title, _ in columns]
    name_width = max(len(n) for n in results) + 2
    header = "system".ljust(name_width) + "".join(
        title.rjust(w) for (_, title, _), w in zip(columns, widths, strict=True)
    )
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = []
        for (key, _, fmt), w in zip(columns, widths, strict=True):
            value = row.get(key)
            if value is None:
                text = "-"
            elif isinstance(value, str):
                text = value
            else:
                text = fmt.format(value)
            cells.append(text.rjust(w))
        print(name.ljust(name_width) + "".join(cells))


def write_json(kind: str, payload: dict[str, Any], target: Path | None) -> Path:
    """Write ``payload`` to ``target`` or bench/results/<kind>-<UTC time>.json, with the
    machine's load average at the end (the machine may be shared: a load well above the core
    count makes every figure of the run suspect)."""
    path = target or RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    path.write_text(json.dumps(payload | {"loadavg_1_5_15": load}, indent=2, default=str))
    print(f"load average at the end (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return path


def child_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker processes: the bench's Redis, bench/ importable, no stray
    ATOMQ_/REDIS_ settings from the calling shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMQ_", "REDIS_"))}
    env["BENCH_REDIS_URL"] = url
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra or {})
    return env
