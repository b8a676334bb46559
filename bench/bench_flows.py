"""Batches and workflows: enqueue rate of a large batch against RQ's ``Queue.enqueue_many``,
and the overhead between workflow steps.

    .venv/bin/python bench/bench_flows.py [--items 100000] [--repeat 3] [--runs 3] [--postgres URL]

Starts its own redis-server (and uses a throw-away SQLite file, or the PostgreSQL given)
and a real atomq worker process; prints the figures and writes them as JSON under
bench/results/. Both enqueue paths run in the same invocation against the same Redis, so
their ratio is meaningful on a noisy machine even when the absolute numbers are not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.support import RedisServer  # noqa: E402


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (testkit's, as the tests use), stopped by the caller by PID."""
    server = RedisServer(directory).start()
    assert server.process is not None
    return server.process, server.url


def throwaway_postgres(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    import sqlalchemy

    name = f"atomq_bench_{os.getpid()}_{int(time.time())}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- 1. batch enqueue ----------------------------------------------------------------------


def bench_enqueue(url: str, items: int, repeat: int) -> dict[str, object]:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from atomq.core.settings import load_settings
    from atomq.engine.task_queue import TaskQueue

    connection = redis.Redis.from_url(url)
    settings = load_settings(redis_url=url, task_modules=["bench.bench_tasks"])
    tq = TaskQueue(settings=settings, connection=connection)
    payloads = [{"i": i} for i in range(items)]
    rq_times, atomq_times = [], []
    for _ in range(repeat):
        connection.flushall()
        queue = Queue("bench", connection=connection, serializer=JSONSerializer)
        started = time.perf_counter()
        datas = [Queue.prepare_data("bench.bench_tasks.bench_noop", kwargs=p) for p in payloads]
        queue.enqueue_many(datas)
        rq_times.append(time.perf_counter() - started)
        assert connection.llen("rq:queue:bench") == items
        connection.flushall()
        started = time.perf_counter()
        batch = tq.enqueue_batch("bench_noop", payloads, queue="bench")
        atomq_times.append(time.perf_counter() - started)
        assert connection.llen("rq:queue:bench") == items
        assert batch.total == items
    connection.flushall()
    rq_best, atomq_best = min(rq_times), min(atomq_times)
    return {
        "items": items,
        "repeat": repeat,
        "rq_enqueue_many_seconds": [round(t, 3) for t in rq_times],
        "atomq_enqueue_batch_seconds": [round(t, 3) for t in atomq_times],
        "rq_jobs_per_second": round(items / rq_best),
        "atomq_jobs_per_second": round(items / atomq_best),
        "ratio_atomq_over_rq": round(rq_best / atomq_best, 2),
        "atomq_round_trips": 1 + -(-items // settings.batch_chunk_size),
        "rq_round_trips": 1,
    }


# -- 2. workflow step overhead -------------------------------------------------------------


def bench_steps(url: str, database_url: str, runs: int, tmp: Path, worker_class: str) -> dict[str, object]:
    from atomq.core.settings import load_settings
    from atomq.db.engine import Database
    from atomq.db.migrate import upgrade
    from atomq.engine.task_queue import TaskQueue
    from atomq.engine.tasks import load_task_modules
    from atomq.features.workflows.service import get_run, start_run

    settings = load_settings(redis_url=url, database_url=database_url, task_modules=["bench.bench_tasks"])
    load_task_modules(settings.task_modules)
    database = Database.from_settings(settings)
    upgrade(database)
    connection = redis.Redis.from_url(url)
    connection.flushall()
    tq = TaskQueue(settings=settings, connection=connection)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMQ_", "REDIS_"))}
    env.update(
        REDIS_URL=url,
        DATABASE_URL=database_url,
        ATOMQ_TASK_MODULES="bench.bench_tasks",
        ATOMQ_DATA_DIR=str(tmp / "var"),
        PYTHONPATH=str(ROOT),
    )
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomq",
            "worker",
            "workflows",
            "--no-scheduler",
            "--worker-class",
            worker_class,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gaps: list[float] = []
    totals: list[float] = []
    try:
        time.sleep(2)
        for _ in range(runs):
            run = start_run(database, tq, "bench_chain", None)
            deadline = time.monotonic() + 300
            while True:
                run = get_run(database, run["id"])
                if run["status"] != "running" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert run["status"] == "succeeded", run["error"]
            steps = run["steps"]
            for before, after in itertools.pairwise(steps):
                finished = datetime.fromisoformat(before["finished_at"])
                started = datetime.fromisoformat(after["started_at"])
                gaps.append((started - finished).total_seconds() * 1000)
            totals.append(run["duration_seconds"])
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        database.dispose()
    return {
        "database": database_url.split(":", 1)[0],
        "worker_class": worker_class,
        "steps_per_run": len(steps),
        "runs": runs,
        "step_gap_ms_p50": round(percentile(gaps, 50), 1),
        "step_gap_ms_p99": round(percentile(gaps, 99), 1),
        "step_gap_ms_mean": round(statistics.mean(gaps), 1),
        "run_seconds": [round(t, 2) for t in totals],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="workflow runs for the step overhead")
    parser.add_argument(
        "--postgres",
        help="also measure step overhead on PostgreSQL: an admin URL "
        "(a throw-away database is created and dropped)",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the redis-server and worker started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="atomq-flows-bench-") as raw:
        tmp = Path(raw)
        redis_process, url = start_redis(tmp)
        try:
            enqueue = bench_enqueue(url, args.items, args.repeat)
            print(f"batch enqueue of {args.items:,} items (best of {args.repeat}):")
            rq_rate, rq_runs = enqueue["rq_jobs_per_second"], enqueue["rq_enqueue_many_seconds"]
            atomq_rate, atomq_runs = enqueue["atomq_jobs_per_second"], enqueue["atomq_enqueue_batch_seconds"]
            print(f"  RQ Queue.enqueue_many   {rq_rate:>9,} jobs/s  seconds: {rq_runs}")
            print(f"  atomq enqueue_batch     {atomq_rate:>9,} jobs/s  seconds: {atomq_runs}")
            print(f"  ratio atomq/RQ          {enqueue['ratio_atomq_over_rq']:>9}x")
            steps = []
            for worker_class in ("fast", "rq"):
                steps.append(bench_steps(url, f"sqlite:///{tmp / 'bench.db'}", args.runs, tmp, worker_class))
                if args.postgres:
                    with throwaway_postgres(args.postgres) as pg_url:
                        steps.append(bench_steps(url, pg_url, args.runs, tmp, worker_class))
            for result in steps:
                print(
                    f"workflow step overhead ({result['database']}, {result['worker_class']} worker, "
                    f"{result['runs']} runs x {result['steps_per_run']} chained steps):"
                )
                print(
                    f"  step finished -> dependent started: p50 {result['step_gap_ms_p50']} ms, "
                    f"p99 {result['step_gap_ms_p99']} ms, mean {result['step_gap_ms_mean']} ms"
                )
        finally:
            redis_process.terminate()
            redis_process.wait(10)
    out = ROOT / "bench" / "results" / f"bench_flows-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "enqueue": enqueue, "steps": steps},
            indent=2,
        )
        + "\n"
    )
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
