"""Worker memory over a long run: RSS of one atomq worker process while it drains 100,000
jobs, sampled as it goes, with RQ's SimpleWorker (also one process, no fork) as the baseline
in the same invocation.

Prints RSS at start and end, the peak, and the growth per 10,000 jobs over the second half
of the run (a leak shows as a steady positive slope); writes JSON to bench/results/.

    .venv/bin/python bench/bench_memory.py                  # 100,000 jobs each
    .venv/bin/python bench/bench_memory.py --jobs 20000 --systems atomq
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import BIN, Server  # noqa: E402 - after the path tweak
from bench.systems import SYSTEMS  # noqa: E402


def worker_process(system: str, url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start one worker; return its top process and the pid of the process that runs jobs."""
    env = dict(
        os.environ, BENCH_REDIS_URL=url, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    if system == "atomq":
        env.update(REDIS_URL=url, ATOMQ_TASK_MODULES="bench.peers.atomq_tasks", ATOMQ_QUEUES="bench")
        command = [str(BIN / "atomq"), "worker", "bench", "--count", "1", "--no-scheduler"]
    else:
        command = [str(BIN / "rq"), "worker", "bench", "--url", url, "-w", "rq.worker.SimpleWorker"]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    if system != "atomq":
        return process, process.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the supervisor forks the worker
        children = psutil.Process(process.pid).children()
        if children:
            return process, children[0].pid
        time.sleep(0.05)
    raise RuntimeError("the atomq worker did not start")


def measure(name: str, server: Server, jobs: int, log_dir: Path) -> dict[str, float]:
    server.client.flushall()
    system = SYSTEMS[name](server.url)
    process, pid = worker_process(name, server.url, log_dir / f"{name}-memory.log")
    worker = psutil.Process(pid)
    samples: list[tuple[int, float]] = []
    chunk = 5000
    try:
        time.sleep(1.5)
        samples.append((0, worker.memory_info().rss / 2**20))
        done = 0
        while done < jobs:
            system.enqueue_bulk(min(chunk, jobs - done))
            done += min(chunk, jobs - done)
            while server.client.llen(system.queue_key) > 0:
                time.sleep(0.02)
            samples.append((done, worker.memory_info().rss / 2**20))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    half = [s for s in samples if s[0] >= jobs / 2]
    slope = 0.0
    if len(half) >= 2:
        xs = [s[0] for s in half]
        ys = [s[1] for s in half]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs) or 1.0
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var * 10_000
    return {
        "jobs": jobs,
        "rss_start_mb": samples[0][1],
        "rss_end_mb": samples[-1][1],
        "rss_peak_mb": max(s[1] for s in samples),
        "growth_mb_per_10k_jobs_second_half": slope,
        "samples": samples,  # type: ignore[dict-item]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--systems", default="atomq,rq-simple")
    args = parser.parse_args()
    server = Server()
    log_dir = Path(tempfile.mkdtemp(prefix="atomq-bench-memory-"))
    results = {}
    try:
        for name in [n.strip() for n in args.systems.split(",") if n.strip()]:
            print(f"{name}: {args.jobs} jobs...", file=sys.stderr, flush=True)
            results[name] = measure(name, server, args.jobs, log_dir)
    finally:
        server.stop()
    base = results.get("rq-simple", {}).get("rss_end_mb")
    print(f"{'system':<12}{'start MB':>10}{'end MB':>10}{'peak MB':>10}{'MB/10k jobs':>13}{'end vs rq':>11}")
    for name, row in results.items():
        ratio = f"{row['rss_end_mb'] / base:.2f}" if base else "-"
        print(
            f"{name:<12}{row['rss_start_mb']:>10.1f}{row['rss_end_mb']:>10.1f}{row['rss_peak_mb']:>10.1f}"
            f"{row['growth_mb_per_10k_jobs_second_half']:>13.2f}{ratio:>11}"
        )
    target = ROOT / "bench" / "results" / f"memory-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
