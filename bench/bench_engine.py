"""Engine benchmark: atomq's worker against RQ (forking and SimpleWorker), dramatiq, huey and
Celery, side by side on one Redis this script starts, in one invocation.

For each system, with 2 worker processes on this machine:

* enqueue rate, one call per job and (where the library has one) in bulk;
* drain throughput of no-op jobs, measured on the steady part of the drain (queue length
  from 90 % down to 10 %), so worker start-up and the last stragglers don't count;
* Redis commands per job (``INFO commandstats``) and round trips per job (Redis's
  ``total_reads_processed``: one read event per request batch a client sends), both net of
  this script's own polling;
* worker CPU milliseconds per job (every process of the worker tree, forked children too)
  and the peak RSS of any single worker process;
* scheduling lateness of 200 jobs due 3-5 s ahead: p50, p99, max, and how many started early.

Every run repeats ``--repeat`` times; the table shows medians and each system's drain
throughput as a ratio to atomq's in the same run. JSON goes to bench/results/.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_engine.py            # all systems, 20,000 jobs, 3 repeats
    .venv/bin/python bench/bench_engine.py --systems atomq,rq-simple --repeat 1 --jobs 5000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))  # the peers' task modules live in bench.peers
STARTS_KEY = "bench:starts"


# -- Redis ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A private redis-server without persistence, like a benchmark wants."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="atomq-bench-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                "redis.log",
            ],
            start_new_session=True,
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=30)
        for _ in range(200):
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def counters(self) -> tuple[int, int]:
        """(commands executed, read events processed) so far, server-wide."""
        stats = self.client.info("commandstats")
        calls = sum(int(v["calls"]) for v in stats.values())
        reads = int(self.client.info("stats")["total_reads_processed"])
        return calls, reads

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the systems ---------------------------------------------------------------------------


@dataclass
class System:
    """How to enqueue, run and observe one task system."""

    name: str
    url: str
    queue_key: str
    jobs_scale: float = 1.0  # fraction of --jobs to use (RQ's forking worker is slow)
    env: dict[str, str] = field(default_factory=dict)

    def enqueue_single(self, n: int) -> None:
        raise NotImplementedError

    def enqueue_bulk(self, n: int) -> bool:
        """Enqueue in bulk; False when the library has no bulk API."""
        return False

    def schedule(self, items: list[tuple[int, float]]) -> None:
        raise NotImplementedError

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        raise NotImplementedError


class Atomq(System):
    def __init__(self, url: str) -> None:
        super().__init__(
            "atomq",
            url,
            "rq:queue:bench",
            env={"REDIS_URL": url, "ATOMQ_TASK_MODULES": "bench.peers.atomq_tasks", "ATOMQ_QUEUES": "bench"},
        )
        from atomq.core.settings import load_settings
        from atomq.engine.task_queue import TaskQueue

        self.tq = TaskQueue(
            settings=load_settings(redis_url=url, task_modules=["bench.peers.atomq_tasks"], queues=["bench"])
        )

    def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            self.tq.enqueue("bench_noop")

    def enqueue_bulk(self, n: int) -> bool:
        for start in range(0, n, 5000):
            self.tq.enqueue_many([("bench_noop", {})] * min(5000, n - start))
        return True

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.tq.enqueue_at(datetime.fromtimestamp(due, UTC), "bench_record", index=index, due=due)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        command = [str(BIN / "atomq"), "worker", "bench", "--count", "2"]
        return [command if scheduling else [*command, "--no-scheduler"]]


class RQ(System):
    def __init__(self, url: str, simple: bool) -> None:
        super().__init__(
            "rq-simple" if simple else "rq", url, "rq:queue:bench", jobs_scale=1.0 if simple else 0.1
        )
        from rq import Queue

        self.simple = simple
        self.queue = Queue("bench", connection=redis.Redis.from_url(url))

    def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            self.queue.enqueue("bench.peers.rq_tasks.noop")

    def enqueue_bulk(self, n: int) -> bool:
        from rq import Queue

        for start in range(0, n, 5000):
            count = min(5000, n - start)
            self.queue.enqueue_many([Queue.prepare_data("bench.peers.rq_tasks.noop") for _ in range(count)])
        return True

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.queue.enqueue_at(datetime.fromtimestamp(due, UTC), "bench.peers.rq_tasks.record", index, due)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        command = [str(BIN / "rq"), "worker", "bench", "--url", self.url]
        if self.simple:
            command += ["-w", "rq.worker.SimpleWorker"]
        first = [*command, "--with-scheduler"] if scheduling else command
        return [first, command]


class Dramatiq(System):
    def __init__(self, url: str) -> None:
        super().__init__("dramatiq", url, "dramatiq:bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import dramatiq_tasks

        self.tasks = dramatiq_tasks

    def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            self.tasks.noop.send()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        now = time.time()
        for index, due in items:
            self.tasks.record.send_with_options(args=(index, due), delay=int((due - now) * 1000))

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [[str(BIN / "dramatiq"), "bench.peers.dramatiq_tasks", "--processes", "2"]]


class Huey(System):
    def __init__(self, url: str) -> None:
        super().__init__("huey", url, "huey.redis.bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import huey_tasks

        self.tasks = huey_tasks

    def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            self.tasks.noop()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        now = time.time()
        for index, due in items:
            self.tasks.record.schedule(args=(index, due), delay=due - now)

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [[str(BIN / "huey_consumer"), "bench.peers.huey_tasks.huey", "-w", "2", "-k", "process"]]


class Celery(System):
    def __init__(self, url: str) -> None:
        super().__init__("celery", url, "bench")
        os.environ["BENCH_REDIS_URL"] = url
        from bench.peers import celery_tasks

        self.tasks = celery_tasks

    def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            self.tasks.noop.delay()

    def schedule(self, items: list[tuple[int, float]]) -> None:
        for index, due in items:
            self.tasks.record.apply_async(args=(index, due), eta=datetime.fromtimestamp(due, UTC))

    def worker_commands(self, scheduling: bool) -> list[list[str]]:
        return [
            [
                str(BIN / "celery"),
                "-A",
                "bench.peers.celery_tasks",
                "worker",
                "-c",
                "2",
                "-P",
                "prefork",
                "-Q",
                "bench",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ]
        ]


SYSTEMS: dict[str, Callable[[str], System]] = {
    "atomq": Atomq,
    "rq": lambda url: RQ(url, simple=False),
    "rq-simple": lambda url: RQ(url, simple=True),
    "dramatiq": Dramatiq,
    "huey": Huey,
    "celery": Celery,
}


# -- workers and their resource use --------------------------------------------------------


class Workers:
    """The worker processes of one system, started in their own sessions and stopped by PID."""

    def __init__(self, system: System, scheduling: bool, log_dir: Path) -> None:
        env = dict(os.environ)
        env.update(system.env)
        env["BENCH_REDIS_URL"] = system.url
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        self.processes = []
        for index, command in enumerate(system.worker_commands(scheduling)):
            with open(
                log_dir / f"{system.name}-{'sched' if scheduling else 'drain'}-{index}.log", "ab"
            ) as log:
                self.processes.append(
                    subprocess.Popen(
                        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )

    def tree(self) -> list[psutil.Process]:
        found = []
        for process in self.processes:
            try:
                top = psutil.Process(process.pid)
                found.append(top)
                found.extend(top.children(recursive=True))
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
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


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


def measure_drain(system: System, server: Server, n: int, log_dir: Path) -> dict[str, float]:
    server.client.flushall()
    if not system.enqueue_bulk(n):
        system.enqueue_single(n)
    queued = server.client.llen(system.queue_key)
    assert queued == n, f"{system.name}: {queued} queued, expected {n}"
    workers = Workers(system, scheduling=False, log_dir=log_dir)
    polls = 0
    start: tuple[float, int, int, int, float, float] | None = None
    end: tuple[float, int, int, int, float, float] | None = None
    peak = 0
    deadline = time.monotonic() + max(120, n / 50)
    try:
        while time.monotonic() < deadline:
            length = server.client.llen(system.queue_key)
            polls += 1
            now = time.perf_counter()
            if polls % 5 == 0:
                peak = max(peak, workers.max_rss())
            if start is None and length <= 0.9 * n:
                calls, reads = server.counters()
                start = (now, length, calls, reads, workers.cpu_seconds(), server.cpu_seconds())
                polls = 0
            elif start is not None and end is None and length <= 0.1 * n:
                calls, reads = server.counters()
                end = (now, length, calls, reads, workers.cpu_seconds(), server.cpu_seconds())
                own = polls + 2  # our LLENs and the two INFO calls
                break
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{system.name}: drain did not finish in time")
        while server.client.llen(system.queue_key) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        workers.stop()
    assert start is not None and end is not None
    jobs = start[1] - end[1]
    seconds = end[0] - start[0]
    return {
        "drain_jobs": jobs,
        "drain_per_s": jobs / seconds,
        "commands_per_job": (end[2] - start[2] - own) / jobs,
        "round_trips_per_job": (end[3] - start[3] - own) / jobs,
        "cpu_ms_per_job": (end[4] - start[4]) * 1000 / jobs,
        "redis_cpu_ms_per_job": (end[5] - start[5]) * 1000 / jobs,
        "peak_rss_mb": peak / 2**20,
    }


def measure_lateness(system: System, server: Server, log_dir: Path, count: int = 200) -> dict[str, float]:
    server.client.flushall()
    workers = Workers(system, scheduling=True, log_dir=log_dir)
    try:
        time.sleep(3)  # let every worker (and scheduler) start and go idle
        now = time.time()
        items = [(i, now + 3 + 2 * i / (count - 1)) for i in range(count)]
        system.schedule(items)
        deadline = time.monotonic() + 20
        while server.client.llen(STARTS_KEY) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        records = [json.loads(raw) for raw in server.client.lrange(STARTS_KEY, 0, -1)]
    finally:
        workers.stop()
    late = sorted((started - due) * 1000 for _, due, started in records)
    if not late:
        return {"lateness_runs": 0}
    return {
        "lateness_runs": len(late),
        "lateness_p50_ms": statistics.median(late),
        "lateness_p99_ms": late[min(len(late) - 1, int(0.99 * len(late)))],
        "lateness_max_ms": late[-1],
        "started_early": sum(1 for value in late if value < 0),
    }


# -- reporting -----------------------------------------------------------------------------

COLUMNS = [
    ("enqueue_single_per_s", "enq 1/s", "{:,.0f}"),
    ("enqueue_bulk_per_s", "enq bulk/s", "{:,.0f}"),
    ("drain_per_s", "drain/s", "{:,.0f}"),
    ("ratio", "vs atomq", "{:.2f}"),
    ("commands_per_job", "cmds/job", "{:.1f}"),
    ("round_trips_per_job", "RT/job", "{:.2f}"),
    ("cpu_ms_per_job", "CPU ms/job", "{:.3f}"),
    ("redis_cpu_ms_per_job", "Redis ms/job", "{:.3f}"),
    ("peak_rss_mb", "RSS MB", "{:.1f}"),
    ("lateness_p50_ms", "late p50 ms", "{:.1f}"),
    ("lateness_p99_ms", "late p99 ms", "{:.1f}"),
    ("lateness_max_ms", "late max ms", "{:.1f}"),
    ("started_early", "early", "{:.0f}"),
]


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {k for run in runs for k in run}
    out: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    name_width = max(len(n) for n in results) + 2
    header = "system".ljust(name_width) + "".join(title.rjust(13) for _, title, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            cells.append(("-" if value is None else fmt.format(value)).rjust(13))
        print(name.ljust(name_width) + "".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS)
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs drained per system and run")
    parser.add_argument(
        "--enqueue-jobs", type=int, default=5_000, help="jobs for the enqueue-rate measurement"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-lateness", action="store_true", help="skip the scheduling measurement")
    parser.add_argument(
        "--json", type=Path, default=None, help="where to write results (default bench/results/)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    server = Server()
    log_dir = Path(tempfile.mkdtemp(prefix="atomq-bench-logs-"))
    per_run: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        systems = {name: SYSTEMS[name](server.url) for name in names}
        for repeat in range(args.repeat):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                system = systems[name]
                jobs = max(1000, int(args.jobs * system.jobs_scale))
                print(f"run {repeat + 1}/{args.repeat}: {name} ({jobs} jobs)...", file=sys.stderr, flush=True)
                row: dict[str, Any] = {}
                row.update(measure_enqueue(system, server, min(args.enqueue_jobs, jobs)))
                row.update(measure_drain(system, server, jobs, log_dir))
                if not args.no_lateness:
                    row.update(measure_lateness(system, server, log_dir))
                per_run[name].append(row)
        results = {name: median_of(runs) for name, runs in per_run.items()}
        base = results.get("atomq", {}).get("drain_per_s")
        for row in results.values():
            row["ratio"] = row["drain_per_s"] / base if base else None
        print_table(results)
        target = args.json or ROOT / "bench" / "results" / f"engine-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "cpus": os.cpu_count(),
                    "medians": results,
                    "runs": per_run,
                },
                indent=2,
                default=str,
            )
        )
        print(f"\nmedians of {args.repeat} run(s); JSON: {target}; worker logs: {log_dir}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
