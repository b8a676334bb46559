"""Scaling benchmark: how atomq's throughput grows with worker processes and with "hosts"
(separate supervisors) against ONE Redis, and where that Redis's ceiling is.

Every row drains a filled ``bench`` queue with ``atomq worker bench --no-scheduler`` on a
private redis-server this script starts (bench/harness.py's ``Server``):

* **no-op jobs** (``--jobs``, 20,000; the CPU-bound floor): ``--count P`` for each P of
  ``--processes`` (1, 2, 4) in one supervisor, and "2 hosts": two separate
  ``atomq worker --count 1`` supervisors (two process trees), as two machines would run them.
  Measured as bench_engine.py measures it (its ``measure_drain``): while the queue goes from
  90 % down to 10 % of the jobs.
* **waiting jobs** (``--io-jobs``, 4,000): the bench ``io`` task, ``async def`` waiting
  100 ms, with P = 1 and 2 processes and ``--concurrency`` 100 and 200; measured between
  10 % and 90 % of the jobs done. The task counts itself done with one ``INCR``, which is in
  its row's Redis commands and CPU per job.

Per row: jobs/s; the ratio to the P=1 row (of the same concurrency); Redis commands per job
(``INFO commandstats``, net of this script's polling); Redis CPU ms per job (/proc/<redis
pid>/stat); Redis's share of one core during the drain (Redis CPU seconds / drain wall
seconds); worker CPU ms per job (every process of the worker trees); and the projected
ceiling, the jobs/s one Redis core carries at that cost (1000 / Redis CPU ms per job).

On a machine with few cores, worker processes compete with Redis for them, so jobs/s stops
growing with P early; the projected ceiling is the figure that transfers to bigger machines.
Every run repeats ``--repeat`` times; the tables show medians. JSON goes to bench/results/.

    .venv/bin/python bench/bench_scaling.py                    # 20,000 no-op, 4,000 waiting jobs
    .venv/bin/python bench/bench_scaling.py --processes 1,2,4,8 --repeat 3
    .venv/bin/python bench/bench_scaling.py --jobs 3000 --io-jobs 1000 --processes 1,2   # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* and the peers' tasks

from bench.bench_engine import Workers, fill, measure_drain
from bench.harness import Server, median_of, redis_costs, write_json
from bench.peers.common import DONE_KEY
from bench.systems import Atomq

#: Worker processes and ``--concurrency`` values of the waiting-jobs rows.
IO_PROCESSES = (1, 2)
IO_CONCURRENCY = (100, 200)

COLUMNS = [
    ("drain_per_s", "jobs/s", "{:,.0f}"),
    ("ratio", "vs P=1", "{:.2f}"),
    ("commands_per_job", "Redis cmds/job", "{:.1f}"),
    ("redis_cpu_ms_per_job", "Redis CPU ms/job", "{:.4f}"),
    ("redis_core_share", "Redis core share", "{:.0%}"),
    ("cpu_ms_per_job", "worker CPU ms/job", "{:.3f}"),
    ("jobs_per_redis_core", "ceiling jobs/s (1 Redis core)", "{:,.0f}"),
]


@dataclass(frozen=True)
class Setup:
    """One row: ``hosts`` supervisors of ``processes`` worker processes each."""

    label: str
    processes: int
    hosts: int = 1
    concurrency: int | None = None
    baseline: str = "P=1"  # the row the ratio is against


class AtomqHosts(Atomq):
    """``hosts`` separate ``atomq worker --count P`` supervisors, each its own process tree
    (bench_engine's ``Workers`` starts every command in its own session)."""

    def __init__(self, url: str, setup: Setup) -> None:
        super().__init__(url, name=setup.label, concurrency=setup.concurrency, count=setup.processes)
        self.hosts = setup.hosts

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [list(command) for command in super().worker_commands(scheduling) for _ in range(self.hosts)]


def noop_setups(processes: Sequence[int]) -> list[Setup]:
    return [Setup(f"P={p}", p) for p in processes] + [Setup("2 hosts x P=1", 1, hosts=2)]


def io_setups() -> list[Setup]:
    return [
        Setup(f"P={p} c={c}", p, concurrency=c, baseline=f"P=1 c={c}")
        for c in IO_CONCURRENCY
        for p in IO_PROCESSES
    ]


def measure_io(system: Atomq, server: Server, n: int, log_dir: Path) -> dict[str, float | None]:
    """Waiting jobs: completions per second and costs between 10 % and 90 % of ``n`` done
    (bench_engine's ``measure_io_drain``, with Redis snapshots at both ends)."""
    fill(system, server, n, "io")
    workers = Workers(system, scheduling=False, log_dir=log_dir, tag="io")
    start: dict[str, float] | None = None
    end: dict[str, float] | None = None
    polls = 0
    deadline = time.monotonic() + 60 + n * 0.1  # one job at a time, plus start-up
    try:
        while end is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: I/O drain did not finish in time")
            done = int(server.client.get(DONE_KEY) or 0)
            polls += 1
            if start is None and done >= 0.1 * n:
                start = server.snapshot() | {"done": done, "cpu": workers.cpu_seconds()}
                polls = 0
            elif start is not None and done >= 0.9 * n:
                end = server.snapshot() | {"done": done, "cpu": workers.cpu_seconds()}
            time.sleep(0.01)
        # Stop with nothing running: the group-wide SIGTERM of Workers.stop reaches each worker
        # twice (directly and from its supervisor), which atomq takes as a cold shutdown.
        while int(server.client.get(DONE_KEY) or 0) < n and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        workers.stop()
    assert start is not None
    jobs = end["done"] - start["done"]
    return {
        "drain_jobs": jobs,
        "drain_per_s": jobs / (end["time"] - start["time"]),
        **redis_costs(start, end, jobs, own=polls),
        "cpu_ms_per_job": (end["cpu"] - start["cpu"]) * 1000 / jobs,
    }


def run_section(
    setups: list[Setup], kind: str, jobs: int, repeat: int, server: Server, log_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every setup ``repeat`` times (the order rotated between repeats); medians and runs."""
    systems = {setup.label: AtomqHosts(server.url, setup) for setup in setups}
    per_run: dict[str, list[dict[str, Any]]] = {setup.label: [] for setup in setups}
    try:
        for index in range(repeat):
            shift = index % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                print(
                    f"run {index + 1}/{repeat}: {kind} {setup.label} ({jobs} jobs)...",
                    file=sys.stderr,
                    flush=True,
                )
                system = systems[setup.label]
                if kind == "noop":
                    row = measure_drain(system, server, jobs, log_dir)
                else:
                    row = measure_io(system, server, jobs, log_dir)
                per_run[setup.label].append(row | {"redis_core_share": core_share(row)})
    finally:
        for system in systems.values():
            system.close()
    results = {setup.label: median_of(per_run[setup.label]) for setup in setups}
    for setup in setups:
        base = results.get(setup.baseline, {}).get("drain_per_s")
        value = results[setup.label].get("drain_per_s")
        results[setup.label]["ratio"] = value / base if value and base else None
    return results, per_run


def core_share(row: dict[str, Any]) -> float | None:
    """Redis CPU seconds per drain wall second: (CPU s / job) x (jobs / s)."""
    ms, rate = row.get("redis_cpu_ms_per_job"), row.get("drain_per_s")
    return ms * rate / 1000 if ms is not None and rate else None


def markdown_table(results: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """One row per setup; ``columns`` are (key, title, format). Missing values print as '-'."""
    lines = [
        "| setup | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in results.items():
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_processes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of process counts >= 1")
    return sorted(set(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs drained per row and run")
    parser.add_argument("--io-jobs", type=int, default=4_000, help="waiting (100 ms) jobs per row and run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the tables show medians")
    parser.add_argument(
        "--processes",
        type=parse_processes,
        default=parse_processes("1,2,4"),
        help="worker processes of the no-op rows, comma-separated (default 1,2,4)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="where to write results (default bench/results/)"
    )
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"{cpus} cores; load average at the start (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    server = Server()
    log_dir = Path(tempfile.mkdtemp(prefix="atomq-bench-logs-"))
    try:
        noop, noop_runs = run_section(
            noop_setups(args.processes), "noop", args.jobs, args.repeat, server, log_dir
        )
        io, io_runs = run_section(io_setups(), "io", args.io_jobs, args.repeat, server, log_dir)
    finally:
        server.stop()
    print(f"\n### No-op jobs ({args.jobs:,} per row; medians of {args.repeat} run(s))\n")
    print(markdown_table(noop, COLUMNS))
    print(f"\n### Waiting jobs ({args.io_jobs:,} of 100 ms per row; ratio vs P=1 of the same concurrency)\n")
    print(markdown_table(io, COLUMNS))
    print(
        f"\nnote: on this {cpus}-core machine, worker processes beyond {cpus} share cores with Redis"
        " (which needs one of its own), so jobs/s here flattens early; the projected ceiling"
        " (1000 / Redis CPU ms per job) is the figure that transfers to bigger machines."
    )
    target = write_json(
        "scaling",
        {
            "args": vars(args) | {"json": str(args.json)},
            "cpus": cpus,
            "loadavg_start_1_5_15": load,
            "noop": {"medians": noop, "runs": noop_runs},
            "io": {"medians": io, "runs": io_runs},
        },
        args.json,
    )
    print(f"JSON: {target}; worker logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
