"""Load on the API's monitoring endpoints with a realistic amount of work in Redis.

    .venv/bin/python bench/bench_api.py [--jobs 100000] [--queues 10] [--duration 10] [--connections 16]

Starts its own redis-server and one `atomq serve` process, fills Redis with ``--jobs`` jobs
spread over ``--queues`` queues (60 % queued, 20 % finished, 10 % failed, 10 % scheduled),
job statistics for 50 queue/task pairs and 8 workers, then measures requests/s and latency
percentiles of ``GET /api/v1/tasks/queues`` and ``GET /metrics`` against ``GET /health`` (no
Redis, no auth) run the same way in the same invocation. It also fills 24 h of per-minute
history for every queue and measures the dashboard's overview page with its charts
(``GET /dashboard``, logged in): p50/p95/p99 with one client, i.e. the server's time
(issue 15's bound: p95 <= 100 ms). Load comes from wrk (installed from
Debian when missing and this runs as root) or, failing that, a small asyncio client.
Figures are printed and written to bench/results/api-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from atomq.api.auth import entry_for  # noqa: E402
from atomq.core.settings import load_settings  # noqa: E402
from atomq.engine import history, stats  # noqa: E402
from atomq.engine.task_queue import Call, TaskQueue  # noqa: E402
from testkit.support import RedisServer, free_port  # noqa: E402

TOKEN = "atq_bench_read_token"
TASKS = ["ping", "bench_a", "bench_b", "bench_c", "bench_d"]


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (testkit's, as the tests use), stopped by the caller by PID."""
    server = RedisServer(directory).start()
    assert server.process is not None
    return server.process, server.url


def fill(url: str, n_jobs: int, n_queues: int) -> dict[str, int]:
    """Put ``n_jobs`` jobs in Redis the way atomq itself would, then age some of them."""
    queues = [f"q{i}" for i in range(n_queues)]
    settings = load_settings(redis_url=url, queues=queues)
    connection = redis.Redis.from_url(url)
    tq = TaskQueue(settings=settings, connection=connection)
    per_queue = n_jobs // n_queues
    started = time.perf_counter()
    for queue in queues:
        for offset in range(0, per_queue, 5000):
            calls = [
                Call("ping", kwargs={"payload": {"n": offset + i}}, options={"queue": queue})
                for i in range(min(5000, per_queue - offset))
            ]
            tq.enqueue_many(calls)
    now = time.time()
    counts = {"queued": 0, "finished": 0, "failed": 0, "scheduled": 0}
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            moved = [connection.rpop(f"rq:queue:{queue}") for _ in range(per_queue * 4 // 10)]
            for index, raw in enumerate(moved):
                job_id = raw.decode()
                key = f"rq:job:{job_id}"
                if index < len(moved) // 2:
                    pipe.zadd(f"rq:finished:{queue}", {job_id: now + 86_400})
                    pipe.hset(key, mapping={"status": "finished"})
                    counts["finished"] += 1
                elif index < len(moved) * 3 // 4:
                    pipe.zadd(f"rq:failed:{queue}", {job_id: now + 86_400})
                    pipe.hset(key, mapping={"status": "failed"})
                    counts["failed"] += 1
                else:
                    pipe.zadd(f"rq:scheduled:{queue}", {job_id: now + random.uniform(-5, 3600)})
                    pipe.hset(key, mapping={"status": "scheduled"})
                    counts["scheduled"] += 1
            pipe.execute()
        counts["queued"] = sum(connection.llen(f"rq:queue:{q}") for q in queues)
        rng = random.Random(1)
        for queue in queues:
            for task in TASKS:
                for outcome in stats.OUTCOMES:
                    for _ in range(rng.randint(1, 5)):
                        stats.record_job_end(
                            pipe, queue=queue, task=task, outcome=outcome, duration=rng.expovariate(5)
                        )
                stats.record_job_start(
                    pipe, job_key="rq:job:none", queue=queue, task=task, due_at=now - rng.random(), now=now
                )
        for i in range(8):
            key = f"rq:worker:bench-{i}"
            pipe.hset(key, mapping={
                "state": "busy" if i % 2 else "idle", "queues": ",".join(queues[i % n_queues:][:3]),
                "pid": 1000 + i, "hostname": "bench", "birth": "2026-01-01T00:00:00.000000Z",
                "last_heartbeat": "2026-01-01T00:00:00.000000Z",
            })  # fmt: skip
            pipe.sadd("rq:workers", key)
        pipe.execute()
    counts["seconds_to_fill"] = round(time.perf_counter() - started, 1)
    counts["redis_keys"] = connection.dbsize()
    connection.close()
    return counts


def fill_history(url: str, n_queues: int, hours: int = 24) -> None:
    """Every minute of ``hours`` for every queue, through the workers' own writer and the
    scheduler's depth sampler, as a busy system leaves it."""
    connection = redis.Redis.from_url(url)
    queues = [f"q{i}" for i in range(n_queues)]
    now = time.time()
    rng = random.Random(2)
    with connection.pipeline(transaction=False) as pipe:
        for back in range(hours * 60):
            tally = history.HistoryTally()
            for queue in queues:
                for outcome in ("finished",) * 20 + ("failed", "retried"):
                    tally.add(
                        queue=queue, outcome=outcome, duration=rng.expovariate(5), late=rng.random() / 10
                    )
            tally.write(pipe, now=now - back * 60)
            if back % 100 == 0:
                pipe.execute()
        pipe.execute()
    for back in range(hours * 60):
        history.sample_depth(connection, queues, retention=hours * 3600, now=now - back * 60)
    connection.close()


def dashboard_client(base: str) -> httpx.Client:
    """A client logged in to the dashboard with the bench token (nonce cookie, form, session)."""
    client = httpx.Client(base_url=base, headers={"Origin": base})
    form = client.get("/dashboard/login").text
    nonce = re.search(r'name="nonce" value="([^"]+)"', form)
    assert nonce, "no nonce in the login form"
    done = client.post(
        "/dashboard/login", data={"token": TOKEN, "nonce": nonce.group(1), "next": "/dashboard"}
    )
    assert done.status_code in (302, 303), done.text
    return client


def dashboard_latency(base: str, n: int = 200) -> dict[str, float]:
    """``GET /dashboard`` (the overview with its charts), one request at a time."""
    timings = []
    client = dashboard_client(base)
    try:
        for _ in range(20):  # warm-up: templates compiled, connections open
            client.get("/dashboard").raise_for_status()
        for _ in range(n):
            began = time.perf_counter()
            response = client.get("/dashboard")
            timings.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
    finally:
        client.close()
    assert 'id="history-data"' in response.text, "the overview has no charts"
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(0.95 * len(timings)) - 1], 2),
        "p99_ms": round(timings[int(0.99 * len(timings)) - 1], 2),
        "bytes": len(response.content),
    }


def start_api(url: str, queues: int, directory: Path, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMQ_", "REDIS_"))}
    env.update(
        REDIS_URL=url,
        ATOMQ_QUEUES=",".join(f"q{i}" for i in range(queues)),
        ATOMQ_API_TOKENS=entry_for("bench", "read", TOKEN),
        DATABASE_URL=f"sqlite:///{directory / 'bench.db'}",
        ATOMQ_LOG_LEVEL="WARNING",  # no access log: measure the endpoints, not the log writer
        **extra,
    )
    # The posts collector of /metrics reads the database: give it its tables.
    subprocess.run([sys.executable, "-m", "atomq", "db", "upgrade"], env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "atomq", "serve", "--port", str(port), "--log-level", "WARNING"],
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return process, base


def wrk_binary() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("bench: installing wrk (Debian package) for the load...", flush=True)
    for command in (["apt-get", "install", "-y", "-qq", "wrk"], ["apt-get", "update", "-qq"]):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if shutil.which("wrk"):
            break
    else:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, duration: int, connections: int) -> dict[str, float]:
    header = f"Authorization: Bearer {TOKEN}"
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-H",
        header,
    ]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    percentiles = {
        f"p{p}_ms": _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M)
    }
    if "p99_ms" not in percentiles:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, **percentiles, "non_2xx": int(errors.group(1)) if errors else 0}


async def _python_load(url: str, duration: int, connections: int) -> dict[str, float]:
    """Keep-alive HTTP/1.1 GETs from ``connections`` coroutines (when wrk is unavailable)."""
    parsed = httpx.URL(url)
    request = (
        f"GET {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + duration

    async def one() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - began) * 1000)
            bad += not head.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {
        "requests_per_s": len(latencies) / duration,
        "p50_ms": pick(0.50), "p75_ms": pick(0.75), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
        "non_2xx": bad,
    }  # fmt: skip


def single_client(url: str, n: int = 200) -> dict[str, float]:
    """Latency with nothing else running: one client, one request at a time."""
    timings = []
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(n):
            began = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p99_ms": round(timings[int(0.99 * len(timings)) - 1], 2),
        "bytes": len(response.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--python-load", action="store_true", help="use the asyncio client even if wrk exists"
    )
    parser.add_argument(
        "--dashboard-only", action="store_true", help="measure only the dashboard's overview page"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="atomq-bench-"))
    redis_process, url = start_redis(workdir)
    api_process: subprocess.Popen[bytes] | None = None
    try:
        print(f"bench: filling Redis with {args.jobs:,} jobs in {args.queues} queues...", flush=True)
        data = fill(url, args.jobs, args.queues)
        print(f"bench: {data}", flush=True)
        fill_history(url, args.queues)
        print(f"bench: 24 h of per-minute history for {args.queues} queues written", flush=True)
        wrk = None if args.python_load else wrk_binary()
        tool = "wrk 1 thread" if wrk else "python asyncio client"
        results: dict[str, dict[str, Any]] = {}
        # The last run reads Redis on every scrape: what one rendering really costs.
        runs = (
            []
            if args.dashboard_only
            else [
                ("health", "/health", {}),
                ("queues", "/api/v1/tasks/queues", {}),
                ("metrics", "/metrics", {}),
                ("metrics_uncached", "/metrics", {"ATOMQ_METRICS_CACHE_SECONDS": "0"}),
            ]
        )
        current_env: dict[str, str] | None = None
        for name, path, extra in runs:
            if extra != current_env:
                stop(api_process)
                api_process, base = start_api(url, args.queues, workdir, **extra)
                current_env = extra
            single = single_client(base + path)
            if wrk:
                run_wrk(wrk, base + path, 2, args.connections)  # warm-up
                loaded = run_wrk(wrk, base + path, args.duration, args.connections)
            else:
                loaded = asyncio.run(_python_load(base + path, args.duration, args.connections))
            results[name] = {**{k: round(v, 2) for k, v in loaded.items()}, "single_client": single}
            print(
                f"{name:<17} {path:<21} {loaded['requests_per_s']:>7.0f} req/s  "
                f"p50 {loaded['p50_ms']:.1f} ms  "
                f"p99 {loaded['p99_ms']:.1f} ms  (one client: p50 {single['p50_ms']} ms, "
                f"p99 {single['p99_ms']} ms, {single['bytes']:,} bytes)",
                flush=True,
            )
        stop(api_process)
        api_process, base = start_api(url, args.queues, workdir)
        results["dashboard_overview"] = dashboard_latency(base)
        overview = results["dashboard_overview"]
        print(
            f"dashboard overview with charts, one client: p50 {overview['p50_ms']} ms, "
            f"p95 {overview['p95_ms']} ms, p99 {overview['p99_ms']} ms ({overview['bytes']:,} bytes)",
            flush=True,
        )
        base_rps = results["health"]["requests_per_s"] if "health" in results else 0
        for name in ("queues", "metrics", "metrics_uncached") if base_rps else ():
            results[name]["ratio_to_health_rps"] = round(results[name]["requests_per_s"] / base_rps, 3)
            print(
                f"{name}: {results[name]['ratio_to_health_rps']:.2f}x the requests/s of /health", flush=True
            )
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "load": {"tool": tool, "connections": args.connections, "duration_s": args.duration},
            "data": {"jobs": args.jobs, "queues": args.queues, **data},
            "results": results,
        }
        out = ROOT / "bench" / "results" / f"api-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"bench: written {out.relative_to(ROOT)}")
    finally:
        stop(api_process)
        stop(redis_process)
        shutil.rmtree(workdir, ignore_errors=True)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
