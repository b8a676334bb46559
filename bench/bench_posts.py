"""Scheduled-posts benchmark: the API at 100,000 posts, and how late posts are published.

One command, against a private redis-server (AOF on, as ``atomq up`` runs it), a fresh
database (SQLite in a temporary directory, or ``--database-url``), ``atomq serve`` and
``atomq worker --count 2``, all started and stopped here:

1. creates ``--posts`` scheduled posts through ``POST /api/v1/tasks/scheduled-posts``
   (``--clients`` concurrent HTTP clients; due times spread over 30 days, so most live only in
   the database) and reports the rate and request latency;
2. measures ``GET /api/v1/tasks/scheduled-posts`` latency (p50/p95) with and without
   filters and deep in the cursor chain, at 1,000 posts and again at the full size - the ratio
   shows how the list scales;
3. with the workers running, publishes ``--lateness-posts`` posts through the outbox
   publisher due spread over one minute, then as many due at the same instant, and reports
   lateness (published_at - scheduled_for) p50/p99/max; as many no-op ``ping`` jobs due at
   one instant are the engine's own floor, measured in the same run, for the ratio.

Scenarios instead of the above (bench/posts_scenarios.py; webhook accounts on a local fake
platform that answers after ``--platform-latency`` ms; ``atomq worker --count 2``):

* ``--burst``: ``--posts`` (400) posts on ``--accounts`` (200) accounts, all due at one
  instant: lateness at the platform p50/p99/max, early, duplicates, vs a ``ping`` floor;
* ``--fairness``: ``--accounts`` (200) single posts alone, then again due together with
  ``--posts`` (2,000) posts of one account: the singles' p99 lateness, and the ratio.

Figures are printed and written as JSON under bench/results/.

    .venv/bin/python bench/bench_posts.py                     # 100,000 posts, SQLite
    .venv/bin/python bench/bench_posts.py --posts 20000 --database-url postgresql://...
    .venv/bin/python bench/bench_posts.py --burst --platform-latency 200
    .venv/bin/python bench/bench_posts.py --fairness --posts 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.*

from bench.posts_support import Api, create_posts, summary_ms  # noqa: E402

TOKEN = "atq_bench_posts_token"


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def list_latency(api: Api, account: str, repeat: int) -> dict[str, dict[str, float]]:
    """p50/p95 of the list endpoint for several queries."""
    now = datetime.now(UTC)
    queries: dict[str, dict[str, Any]] = {
        "first page": {},
        "status=scheduled": {"status": "scheduled"},
        "account": {"account_id": account},
        "user": {"user_id": "user_7"},
        "due range (1 day)": {
            "due_after": (now + timedelta(days=10)).isoformat(),
            "due_before": (now + timedelta(days=11)).isoformat(),
        },
    }
    out: dict[str, dict[str, float]] = {}
    for name, params in queries.items():
        times = [api.timed("GET", "/api/v1/tasks/scheduled-posts", params=params)[0] for _ in range(repeat)]
        out[name] = summary_ms(times)
    # Deep pagination: follow the cursor 20 pages in, then time the next pages.
    cursor = None
    for _ in range(20):
        cursor = api.timed(
            "GET", "/api/v1/tasks/scheduled-posts", params={"cursor": cursor} if cursor else {}
        )[1].json()["next_cursor"]
    deep = []
    for _ in range(repeat):
        elapsed, response = api.timed("GET", "/api/v1/tasks/scheduled-posts", params={"cursor": cursor})
        deep.append(elapsed)
        cursor = response.json()["next_cursor"] or cursor
    out["page 21+ by cursor"] = summary_ms(deep)
    return out


def wait_published(database: Any, ids: list[str], timeout: float) -> list[tuple[datetime, datetime]]:
    from sqlalchemy import select

    from atomq.features.posts.models import ScheduledPost

    deadline = time.monotonic() + timeout
    wanted = set(ids)
    while True:
        with database.session() as session:
            rows = session.execute(
                select(ScheduledPost.id, ScheduledPost.scheduled_for, ScheduledPost.published_at).where(
                    ScheduledPost.id.in_(wanted), ScheduledPost.status == "published"
                )
            ).all()
        if len(rows) == len(wanted) or time.monotonic() > deadline:
            return [(row.scheduled_for, row.published_at) for row in rows]
        time.sleep(0.5)


def lateness(pairs: list[tuple[datetime, datetime]]) -> dict[str, float]:
    late = [(published - due).total_seconds() for due, published in pairs]
    return {
        "published": len(late),
        **summary_ms(late),
        "early": sum(1 for value in late if value < 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--posts",
        type=int,
        default=None,
        help="posts to create through the API (100,000; --burst: 400; --fairness: the busy account's, 2,000)",
    )
    parser.add_argument(
        "--lateness-posts", type=int, default=1_000, help="posts due in the same minute, then at one instant"
    )
    parser.add_argument("--burst", action="store_true", help="scenario: posts on many accounts due at once")
    parser.add_argument(
        "--fairness", action="store_true", help="scenario: one busy account and many single posts"
    )
    parser.add_argument("--accounts", type=int, default=None, help="webhook accounts in a scenario (200)")
    parser.add_argument(
        "--platform-latency", type=float, default=0.0, help="ms the fake platform takes to answer"
    )
    parser.add_argument(
        "--lead", type=float, default=None, help="seconds ahead posts are due (default: by size)"
    )
    parser.add_argument("--worker-count", type=int, default=2, help="atomq worker --count in a scenario")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="atomq worker --concurrency in a scenario (default: its own)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (atomq serve --workers)")
    parser.add_argument("--repeat", type=int, default=100, help="requests per list query")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    parser.add_argument("--json", type=Path, default=None, help="results file (default bench/results/)")
    args = parser.parse_args()
    if args.burst or args.fairness:
        run_scenarios(args)
        return
    args.posts = args.posts or 100_000

    from atomq.api.auth import entry_for
    from atomq.cli.devserver import PrivateRedis, free_port
    from atomq.core.settings import load_settings
    from atomq.db.engine import Database
    from atomq.db.migrate import upgrade
    from atomq.features.posts.accounts import ensure_outbox_account

    work = Path(tempfile.mkdtemp(prefix="atomq-bench-posts-"))
    redis_server = PrivateRedis(work / "redis").start()
    database_url = args.database_url or f"sqlite:///{work / 'atomq.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMQ_", "REDIS_"))}
    env.update(
        REDIS_URL=redis_server.url,
        DATABASE_URL=database_url,
        ATOMQ_DATA_DIR=str(work / "var"),
        ATOMQ_API_TOKENS=entry_for("bench", "write", TOKEN),
        ATOMQ_LOG_LEVEL="WARNING",
    )
    settings = load_settings(redis_url=redis_server.url, database_url=database_url, data_dir=work / "var")
    database = Database.from_settings(settings)
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "database": database.dialect,
    }
    try:
        upgrade(database)
        account = ensure_outbox_account(database, settings).id
        port = free_port()
        python = [sys.executable, "-m", "atomq"]
        serve = [*python, "serve", "--port", str(port), "--workers", str(args.api_workers)]
        with process(serve, env, work / "api.log"):
            api = Api(f"http://127.0.0.1:{port}", TOKEN)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{api.url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the API did not start; see {work / 'api.log'}")
                time.sleep(0.2)
            now = datetime.now(UTC)

            def spread(i: int) -> datetime:  # over 30 days, a different minute each
                return now + timedelta(minutes=10) + timedelta(seconds=(i * 7919) % (30 * 86400))

            first = min(1_000, args.posts)
            lat_a, wall_a, _ = create_posts(api, account, first, args.clients, spread)
            print(f"created {first} posts; measuring the list at that size...", flush=True)
            results["list_at_1k"] = list_latency(api, account, args.repeat)
            rest = args.posts - first
            lat_b, wall_b, _ = create_posts(api, account, rest, args.clients, spread, start=first)
            latencies = lat_a + lat_b
            results["create"] = {
                "posts": args.posts,
                "per_s": round(args.posts / (wall_a + wall_b), 1),
                **summary_ms(latencies),
            }
            print(
                f"created {args.posts} posts at {results['create']['per_s']}/s; measuring the list...",
                flush=True,
            )
            results["list_at_full"] = list_latency(api, account, args.repeat)
            info = redis_server_info(redis_server.url)
            results["redis"] = info
            with process([*python, "worker", "--count", "2"], env, work / "worker.log"):
                time.sleep(3)  # workers and scheduler up
                results["lateness_spread_minute"] = burst_lateness(
                    api,
                    database,
                    account,
                    args,
                    lambda i, t0: t0 + timedelta(seconds=60 * i / args.lateness_posts),
                    80,
                )
                print("published a minute's worth; now all due at one instant...", flush=True)
                results["lateness_same_instant"] = burst_lateness(
                    api, database, account, args, lambda i, t0: t0, 20
                )
                results["engine_floor_ping_same_instant"] = ping_lateness(
                    settings, redis_server.url, args.lateness_posts
                )
    finally:
        database.dispose()
        redis_server.stop()
    floor = results["engine_floor_ping_same_instant"]["p50_ms"] or 1.0
    results["ratio_same_instant_p50_vs_ping"] = round(results["lateness_same_instant"]["p50_ms"] / floor, 2)
    full, base = (
        results["list_at_full"]["first page"]["p50_ms"],
        results["list_at_1k"]["first page"]["p50_ms"],
    )
    results["ratio_list_p50_full_vs_1k"] = round(full / base, 2)
    report(results)
    target = args.json or ROOT / "bench" / "results" / f"posts-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {target}")


def run_scenarios(args: argparse.Namespace) -> None:
    from bench.harness import write_json
    from bench.posts_scenarios import burst, fairness, report

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name, run in (("burst", burst), ("fairness", fairness)):
        if getattr(args, name):
            print(f"running the {name} scenario...", file=sys.stderr, flush=True)
            results[name] = run(args)
            report(name, results[name], args)
    kinds = "-".join(k for k in ("burst", "fairness") if getattr(args, k))
    print(f"\nJSON: {write_json(f'posts-{kinds}', results, args.json)}")


def redis_server_info(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    memory = client.info("memory")
    jobs = client.zcard("rq:scheduled:social_media")
    client.close()
    return {"used_memory_mb": round(memory["used_memory"] / 1e6, 1), "scheduled_jobs": jobs}


def burst_lateness(
    api: Api,
    database: Any,
    account: str,
    args: argparse.Namespace,
    at: Callable[[int, datetime], datetime],
    lead: float,
) -> dict[str, float]:
    """Create ``args.lateness_posts`` posts due at ``at(i, t0)`` (t0 = ``lead`` s ahead) and wait for them."""
    t0 = datetime.now(UTC) + timedelta(seconds=lead)
    _, wall, ids = create_posts(api, account, args.lateness_posts, args.clients, lambda i: at(i, t0))
    if datetime.now(UTC) > t0:
        print(f"warning: creating took {wall:.1f} s, past the first due time", flush=True)
    pairs = wait_published(database, ids, timeout=lead + 600)
    return lateness(pairs)


def ping_lateness(settings: Any, url: str, count: int) -> dict[str, float]:
    """The engine alone: ``count`` no-op jobs due at one instant; lateness of their start."""
    import redis

    from atomq.engine.task_queue import TaskQueue

    client = redis.Redis.from_url(url)
    tq = TaskQueue(settings=settings, connection=client)
    due = datetime.now(UTC) + timedelta(seconds=5)
    jobs = [tq.enqueue_at(due, "ping", queue="social_media") for _ in range(count)]
    deadline = time.monotonic() + 300
    late: list[float] = []
    while time.monotonic() < deadline:
        statuses = [tq.get_job_status(job.id) for job in jobs]
        if all(s["status"] == "finished" for s in statuses):
            late = [(datetime.fromisoformat(s["started_at"]) - due).total_seconds() for s in statuses]
            break
        time.sleep(0.5)
    client.close()
    return {"jobs": len(late), **summary_ms(late)} if late else {"jobs": 0, "p50_ms": 0.0}


def report(results: dict[str, Any]) -> None:
    create = results["create"]
    print(f"\nscheduled posts benchmark ({results['database']})")
    print(
        f"  create via API: {create['posts']:,} posts at {create['per_s']:,.0f}/s, "
        f"p50 {create['p50_ms']} ms, p95 {create['p95_ms']} ms"
    )
    print(
        f"  Redis after: {results['redis']['scheduled_jobs']:,} scheduled jobs (the 24 h horizon), "
        f"{results['redis']['used_memory_mb']} MB"
    )
    print(f"  {'list query':<22} {'p50 @1k':>9} {'p95 @1k':>9} {'p50 @full':>10} {'p95 @full':>10}")
    for name, full in results["list_at_full"].items():
        small = results["list_at_1k"][name]
        print(
            f"  {name:<22} {small['p50_ms']:>9} {small['p95_ms']:>9} {full['p50_ms']:>10} {full['p95_ms']:>10}"
        )
    print(f"  list p50 ratio full/1k: {results['ratio_list_p50_full_vs_1k']}")
    for key, label in (
        ("lateness_spread_minute", "posts due over one minute"),
        ("lateness_same_instant", "posts due at one instant"),
        ("engine_floor_ping_same_instant", "ping jobs due at one instant"),
    ):
        row = results[key]
        print(
            f"  lateness, {label:<30} p50 {row.get('p50_ms')} ms, p99 {row.get('p99_ms')} ms, "
            f"max {row.get('max_ms')} ms, early {row.get('early', 0)}"
        )
    print(f"  same-instant p50 ratio posts/ping: {results['ratio_same_instant_p50_vs_ping']}")


if __name__ == "__main__":
    main()
