"""Engine benchmark: atomq's worker against RQ (forking and SimpleWorker), dramatiq, huey,
Celery, arq and saq, side by side on one Redis this script starts, in one invocation.
Every system runs 2 worker processes at its own defaults.

``--workload noop`` (default), for each system:

* enqueue rate, one call per job and (where the library has one) in bulk;
* drain throughput of no-op jobs, measured on the steady part of the drain (queue length
  from 90 % down to 10 %), so worker start-up and the last stragglers don't count;
* Redis commands per job (``INFO commandstats``) and round trips per job (Redis's
  ``total_reads_processed``: one read event per request batch a client sends), both net of
  this script's own polling;
* Redis CPU milliseconds per job, from /proc/<redis pid>/stat (utime + stime) and, as a
  cross-check, from ``INFO cpu``; and the jobs per second one Redis core could carry at that
  cost (1000 / Redis ms per job);
* worker CPU milliseconds per job (every process of the worker tree, forked children too)
  and the peak RSS of any single worker process;
* scheduling lateness of 200 jobs due 3-5 s ahead: p50, p99, max, and how many started early.

``--workload io``: ``--jobs`` (2,000) jobs that each wait 100 ms (``time.sleep`` in sync
systems, ``asyncio.sleep`` in arq, saq and atomq's ``async def`` task; ``atomq sync`` is the
same task as a plain ``def``). Drain rate is completions per second between 10 % and 90 % of
the jobs done; the ratio is against the best of dramatiq, arq and saq in the same run. When
``atomq worker`` takes ``--concurrency``, ``atomq c=200`` runs it with ``--concurrency 200``.

``--lateness-under-load``: 200 jobs due 3-5 s ahead while a producer thread keeps
``--load-rate`` (1,000) no-op jobs a second flowing through the same queue and workers.

Every run repeats ``--repeat`` times; the table shows medians. JSON goes to bench/results/.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_engine.py            # no-op, all systems, 20,000 jobs, 3 repeats
    .venv/bin/python bench/bench_engine.py --workload io --systems atomq,dramatiq,arq,saq --repeat 1
    .venv/bin/python bench/bench_engine.py --systems atomq,dramatiq --lateness-under-load
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* and the peers' tasks

from bench.harness import (
    Server,
    child_env,
    latency_summary,
    median_of,
    print_table,
    redis_costs,
    write_json,
)
from bench.peers.common import DONE_KEY, STARTS_KEY
from bench.systems import BEST_PEERS, SYSTEMS, Atomq, System, atomq_has_concurrency

#: atomq's concurrency for the ``atomq c=200`` I/O row.
IO_CONCURRENCY = 200

# -- workers and their resource use --------------------------------------------------------


class Workers:
    """The worker processes of one system, started in their own sessions and stopped by PID."""

    def __init__(self, system: System, scheduling: bool, log_dir: Path, tag: str) -> None:
        env = child_env(system.url, system.env)
        self.processes = []
        for index, command in enumerate(system.worker_commands(scheduling)):
            log = log_dir / f"{system.name.replace(' ', '_')}-{tag}-{index}.log"
            with open(log, "ab") as out:
                self.processes.append(
                    psutil.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
                )

    def tree(self) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for process in self.processes:
            try:
                found.append(process)
                found.extend(process.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU used so far by every process of the tree, including reaped children."""
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                continue
        return total

    def max_rss(self) -> int:
        best = 0
        for proc in self.tree():
            try:
                best = max(best, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
        return best

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 15)
        for process in self.processes:
            try:
                process.wait(20)
            except psutil.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
            with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
                os.killpg(process.pid, 9)


# -- measurements --------------------------------------------------------------------------


def measure_enqueue(system: System, server: Server, n: int) -> dict[str, float | None]:
    server.client.flushall()
    started = time.perf_counter()
    system.enqueue_single(n)
    single = n / (time.perf_counter() - started)
    server.client.flushall()
    started = time.perf_counter()
    bulk = n / (time.perf_counter() - started) if system.enqueue_bulk(n) else None
    server.client.flushall()
    return {"enqueue_single_per_s": single, "enqueue_bulk_per_s": bulk}


def fill(system: System, server: Server, n: int, kind: str) -> None:
    server.client.flushall()
    if not system.enqueue_bulk(n, kind):
        system.enqueue_single(n, kind)
    queued = system.queue_length(server.client)
    assert queued == n, f"{system.name}: {queued} queued, expected {n}"


def measure_drain(system: System, server: Server, n: int, log_dir: Path) -> dict[str, float | None]:
    """No-op jobs: throughput and costs while the queue goes from 90 % to 10 % of ``n``."""
    fill(system, server, n, "noop")
    workers = Workers(system, scheduling=False, log_dir=log_dir, tag="drain")
    polls = 0
    start = end = None
    peak = 0
    deadline = time.monotonic() + max(120, n / 50)
    try:
        while time.monotonic() < deadline:
            length = system.queue_length(server.client)
            polls += 1
            if polls % 5 == 0:
                peak = max(peak, workers.max_rss())
            if start is None and length <= 0.9 * n:
                start = server.snapshot() | {"length": length, "cpu": workers.cpu_seconds()}
                polls = 0
            elif start is not None and length <= 0.1 * n:
                end = server.snapshot() | {"length": length, "cpu": workers.cpu_seconds()}
                break
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{system.name}: drain did not finish in time")
        while system.queue_length(server.client) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        workers.stop()
    jobs = start["length"] - end["length"]
    return {
        "drain_jobs": jobs,
        "drain_per_s": jobs / (end["time"] - start["time"]),
        **redis_costs(start, end, jobs, own=polls),
        "cpu_ms_per_job": (end["cpu"] - start["cpu"]) * 1000 / jobs,
        "peak_rss_mb": peak / 2**20,
    }


def measure_io_drain(system: System, server: Server, n: int, log_dir: Path) -> dict[str, float | None]:
    """I/O jobs: completions per second between 10 % and 90 % of ``n`` done."""
    fill(system, server, n, "io")
    began = time.perf_counter()
    workers = Workers(system, scheduling=False, log_dir=log_dir, tag="io")
    start = end = None
    peak = 0
    polls = 0
    # The slowest system runs 2 jobs at a time: n * 0.1 s / 2, plus start-up.
    deadline = time.monotonic() + 60 + n * 0.1
    try:
        while time.monotonic() < deadline:
            done = int(server.client.get(DONE_KEY) or 0)
            polls += 1
            if polls % 20 == 0:
                peak = max(peak, workers.max_rss())
            if start is None and done >= 0.1 * n:
                start = (time.perf_counter(), done, workers.cpu_seconds())
            elif start is not None and end is None and done >= 0.9 * n:
                end = (time.perf_counter(), done, workers.cpu_seconds())
            if done >= n:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{system.name}: I/O drain did not finish in time ({done}/{n} done)")
        total = time.perf_counter() - began
    finally:
        workers.stop()
    assert start is not None and end is not None
    jobs = end[1] - start[1]
    return {
        "io_jobs": n,
        "io_per_s": jobs / (end[0] - start[0]),
        "io_wall_s": total,
        "cpu_ms_per_job": (end[2] - start[2]) * 1000 / jobs,
        "peak_rss_mb": peak / 2**20,
    }


@dataclass
class Load:
    """A producer thread enqueuing ``rate`` no-op jobs a second, one call each, until stopped.

    After a stall it catches up at most five ticks' worth, so it never floods the queue."""

    system: System
    rate: float
    sent: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        tick = 0.01
        began = last = time.perf_counter()
        owed = 0.0
        while not self.stopping.is_set():
            now = time.perf_counter()
            # What the elapsed time asks for, at most five ticks' worth after a stall.
            owed = min(owed + self.rate * (now - last), self.rate * tick * 5)
            last = now
            count = int(owed)
            if count:
                self.system.enqueue_single(count)
                self.sent += count
                owed -= count
            time.sleep(tick)
        self.seconds = time.perf_counter() - began

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(30)


def measure_lateness(
    system: System, server: Server, log_dir: Path, count: int = 200, load_rate: float = 0.0
) -> dict[str, float]:
    """``count`` jobs due 3-5 s ahead; with ``load_rate``, under that many no-op jobs a second."""
    server.client.flushall()
    prefix = "loaded_" if load_rate else ""
    workers = Workers(system, scheduling=True, log_dir=log_dir, tag="loaded" if load_rate else "sched")
    load = Load(system, load_rate)
    try:
        time.sleep(3)  # let every worker (and scheduler) start and go idle
        if load_rate:
            load.start()
            time.sleep(1)  # the load is flowing before the jobs are scheduled
        now = time.time()
        items = [(i, now + 3 + 2 * i / (count - 1)) for i in range(count)]
        system.schedule(items)
        deadline = time.monotonic() + (60 if load_rate else 20)
        while server.client.llen(STARTS_KEY) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        load.stop()
        backlog = system.queue_length(server.client)
        records = [json.loads(raw) for raw in server.client.lrange(STARTS_KEY, 0, -1)]
    finally:
        load.stop()
        workers.stop()
    late = sorted(started - due for _, due, started in records)
    out: dict[str, float] = {f"{prefix}lateness_runs": len(late)}
    if load_rate:
        out |= {"load_per_s": load.sent / load.seconds if load.seconds else 0.0, "load_backlog": backlog}
    if late:
        out |= {f"{prefix}{key}": value for key, value in latency_summary(late, "lateness").items()}
        out[f"{prefix}started_early"] = sum(1 for value in late if value < 0)
    return out


# -- reporting -----------------------------------------------------------------------------

NOOP_COLUMNS = [
    ("enqueue_single_per_s", "enq 1/s", "{:,.0f}"),
    ("enqueue_bulk_per_s", "enq bulk/s", "{:,.0f}"),
    ("drain_per_s", "drain/s", "{:,.0f}"),
    ("ratio", "vs atomq", "{:.2f}"),
    ("commands_per_job", "cmds/job", "{:.1f}"),
    ("round_trips_per_job", "RT/job", "{:.2f}"),
    ("cpu_ms_per_job", "CPU ms/job", "{:.3f}"),
    ("redis_cpu_ms_per_job", "Redis ms/job", "{:.4f}"),
    ("redis_cpu_info_ms_per_job", "(INFO cpu)", "{:.4f}"),
    ("jobs_per_redis_core", "jobs/Rcore/s", "{:,.0f}"),
    ("peak_rss_mb", "RSS MB", "{:.1f}"),
    ("lateness_p50_ms", "late p50 ms", "{:.1f}"),
    ("lateness_p99_ms", "late p99 ms", "{:.1f}"),
    ("lateness_max_ms", "late max ms", "{:.1f}"),
    ("started_early", "early", "{:.0f}"),
]

IO_COLUMNS = [
    ("io_per_s", "drain/s", "{:,.1f}"),
    ("ratio_best_peer", "vs best peer", "{:.2f}"),
    ("io_wall_s", "wall s", "{:.1f}"),
    ("cpu_ms_per_job", "CPU ms/job", "{:.3f}"),
    ("peak_rss_mb", "RSS MB", "{:.1f}"),
]

LOADED_COLUMNS = [
    ("load_per_s", "load/s", "{:,.0f}"),
    ("load_backlog", "backlog", "{:,.0f}"),
    ("loaded_lateness_runs", "started", "{:.0f}"),
    ("loaded_lateness_p50_ms", "late p50 ms", "{:.1f}"),
    ("loaded_lateness_p99_ms", "late p99 ms", "{:.1f}"),
    ("loaded_lateness_max_ms", "late max ms", "{:.1f}"),
    ("loaded_started_early", "early", "{:.0f}"),
]


def build_systems(names: list[str], url: str, workload: str) -> dict[str, System]:
    """The rows to run. For the I/O workload, ``atomq`` brings its sync-task row and, when the
    worker has ``--concurrency``, a ``atomq c=200`` row."""
    systems: dict[str, System] = {}
    for name in names:
        if name == "atomq" and workload == "io":
            systems["atomq"] = Atomq(url)
            systems["atomq sync"] = Atomq(url, name="atomq sync", io_task="bench_io_sync")
            if atomq_has_concurrency():
                label = f"atomq c={IO_CONCURRENCY}"
                systems[label] = Atomq(url, name=label, concurrency=IO_CONCURRENCY)
            else:
                print("atomq worker has no --concurrency: no 'atomq c=200' row", file=sys.stderr)
        else:
            systems[name] = SYSTEMS[name](url)
    return systems


def add_ratios(results: dict[str, dict[str, Any]], workload: str) -> dict[str, Any]:
    key = "io_per_s" if workload == "io" else "drain_per_s"
    peers = {n: results[n][key] for n in BEST_PEERS if n in results and results[n].get(key)}
    best = max(peers.items(), key=lambda item: item[1]) if peers else None
    base = results.get("atomq", {}).get(key)
    for row in results.values():
        value = row.get(key)
        row["ratio"] = value / base if value and base else None
        row["ratio_best_peer"] = value / best[1] if value and best else None
    return {"best_peer": best[0] if best else None, "best_peer_per_s": best[1] if best else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["noop", "io"], default="noop")
    parser.add_argument(
        "--systems", default=None, help="comma-separated, from: " + ", ".join(SYSTEMS) + " (default: all)"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs drained per system and run (noop 20,000; io 2,000)"
    )
    parser.add_argument(
        "--enqueue-jobs", type=int, default=5_000, help="jobs for the enqueue-rate measurement (noop)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-lateness", action="store_true", help="skip the scheduling measurement")
    parser.add_argument(
        "--lateness-under-load", action="store_true", help="also: lateness while --load-rate jobs/s flow"
    )
    parser.add_argument("--load-rate", type=float, default=1000.0, help="no-op jobs/s of the load producer")
    parser.add_argument(
        "--json", type=Path, default=None, help="where to write results (default bench/results/)"
    )
    args = parser.parse_args()
    io = args.workload == "io"
    jobs_default = 2_000 if io else 20_000
    args.jobs = args.jobs or jobs_default
    default_systems = "atomq,dramatiq,arq,saq,rq-simple,huey" if io else ",".join(SYSTEMS)
    names = [n.strip() for n in (args.systems or default_systems).split(",") if n.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    server = Server()
    log_dir = Path(tempfile.mkdtemp(prefix="atomq-bench-logs-"))
    systems: dict[str, System] = {}
    try:
        systems = build_systems(names, server.url, args.workload)
        # Every peer's library is imported: keep their objects out of the collector's way, so
        # enqueue timings measure the library called, not the size of this harness's heap.
        gc.collect()
        gc.freeze()
        per_run: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        rows = list(systems)
        for repeat in range(args.repeat):
            order = rows[repeat % len(rows) :] + rows[: repeat % len(rows)]
            for name in order:
                system = systems[name]
                jobs = max(1000, int(args.jobs * system.jobs_scale)) if not io else args.jobs
                print(f"run {repeat + 1}/{args.repeat}: {name} ({jobs} jobs)...", file=sys.stderr, flush=True)
                row: dict[str, Any] = {}
                if io:
                    row.update(measure_io_drain(system, server, jobs, log_dir))
                else:
                    row.update(measure_enqueue(system, server, min(args.enqueue_jobs, jobs)))
                    row.update(measure_drain(system, server, jobs, log_dir))
                    if not args.no_lateness:
                        row.update(measure_lateness(system, server, log_dir))
                if args.lateness_under_load:
                    row.update(measure_lateness(system, server, log_dir, load_rate=args.load_rate))
                per_run[name].append(row)
        results = {name: median_of(runs) for name, runs in per_run.items()}
        best = add_ratios(results, args.workload)
        if io:
            print(f"\nI/O workload: {args.jobs} jobs of 100 ms each, 2 worker processes per system")
            print_table(results, IO_COLUMNS)
            print(f"(vs best peer: {best['best_peer']})")
        else:
            columns = NOOP_COLUMNS if not args.no_lateness else NOOP_COLUMNS[:-4]
            print_table(results, columns)
            rcore = {
                n: r.get("redis_cpu_ms_per_job") for n, r in results.items() if r.get("redis_cpu_ms_per_job")
            }
            if "atomq" in rcore and "dramatiq" in rcore:
                print(f"(atomq Redis CPU per job / dramatiq's: {rcore['atomq'] / rcore['dramatiq']:.2f})")
        if args.lateness_under_load:
            print(
                f"\nscheduling lateness, 200 jobs due 3-5 s ahead, under ~{args.load_rate:,.0f} no-op jobs/s"
            )
            print_table(results, LOADED_COLUMNS)
        target = write_json(
            f"engine-{args.workload}",
            {
                "args": vars(args) | {"json": str(args.json)},
                "cpus": os.cpu_count(),
                "best_peer": best,
                "medians": results,
                "runs": per_run,
            },
            args.json,
        )
        print(f"\nmedians of {args.repeat} run(s); JSON: {target}; worker logs: {log_dir}")
    finally:
        for system in systems.values():
            system.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
