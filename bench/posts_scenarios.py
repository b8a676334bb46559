"""Posts under a burst, through webhook accounts and a fake platform with a set latency.

Drives atomq only through the ``atomq`` command (token, database, ``serve``, ``worker``), the
HTTP API (accounts, posts) and the public Python API (the ``ping`` floor); see
bench_posts.py for the command line.

* ``burst``: ``--posts`` (400) posts on ``--accounts`` (200) webhook accounts, all due at the
  same instant. Reports lateness of the post's arrival at the platform (and of the API's
  ``published_at``) p50/p99/max, early arrivals, duplicates; and, for the ratio, the same
  number of ``ping`` jobs due at one instant (the engine's own floor) in the same run.
* ``fairness``: ``--accounts`` (200) single posts due at one instant, alone (the in-run
  baseline); then the same accounts' next single posts due together with ``--posts`` (2,000)
  posts of one busy account. Reports the singles' lateness p50/p99/max in both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import BIN, Processes, Server, child_env, latency_summary, tree_cpu_seconds
from bench.posts_support import Api, WebhookPlatform, create_posts
from testkit.support import free_port

#: How long to wait for the last post after the due time, at most (seconds).
PUBLISH_TIMEOUT = 1800


@dataclass
class Stack:
    api: Api
    platform: WebhookPlatform
    server: Server
    work: Path
    #: PID of ``atomq worker`` (its supervisor and scheduler; the worker processes are its children).
    worker_pid: int = 0


def atomq_command(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "atomq"), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"atomq {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[:500]}")
    return done.stdout


@contextmanager
def stack(args: argparse.Namespace) -> Iterator[Stack]:
    """Redis (AOF on, as ``atomq up`` runs it), SQLite, ``atomq serve``, the fake platform and
    ``atomq worker --count N`` at default settings; everything stopped by PID at the end."""
    from cryptography.fernet import Fernet

    work = Path(tempfile.mkdtemp(prefix="atomq-bench-posts-"))
    server = Server(aof=True)
    platform = WebhookPlatform(args.platform_latency / 1000).start()
    processes = Processes()
    try:
        env = child_env(
            server.url,
            {
                "REDIS_URL": server.url,
                "DATABASE_URL": args.database_url or f"sqlite:///{work / 'atomq.db'}",
                "ATOMQ_DATA_DIR": str(work / "var"),
                "ATOMQ_POSTS_ALLOWED_HOSTS": "127.0.0.1",
                "ATOMQ_CREDENTIALS_KEY": Fernet.generate_key().decode(),
            },
        )
        made = json.loads(
            atomq_command("token", "create", "--scope", "write", "--name", "bench", "--json", env=env)
        )
        env["ATOMQ_API_TOKENS"] = made["entry"]
        atomq_command("db", "upgrade", env=env)
        port = free_port()
        processes.start(
            [str(BIN / "atomq"), "serve", "--port", str(port)],
            env | {"ATOMQ_LOG_LEVEL": "WARNING"},
            work / "api.log",
        )
        api = Api(f"http://127.0.0.1:{port}", made["token"])
        api.wait_healthy()
        worker = [str(BIN / "atomq"), "worker", "--count", str(args.worker_count)]
        if args.worker_concurrency:
            worker += ["--concurrency", str(args.worker_concurrency)]
        worker_process = processes.start(worker, env, work / "worker.log")
        # The bench process's own public-API client (the ping floor) reads these.
        os.environ.update({k: v for k, v in env.items() if k in ("REDIS_URL", "DATABASE_URL")})
        yield Stack(api, platform, server, work, worker_process.pid)
    finally:
        processes.stop()
        platform.stop()
        server.stop()
        print(f"logs: {work}", file=sys.stderr)


def make_accounts(api: Api, platform: WebhookPlatform, count: int, label: str) -> list[str]:
    def one(i: int) -> str:
        _, response = api.timed(
            "POST",
            "/api/v1/accounts",
            json={
                "platform": "webhook",
                "handle": f"{label}-{i}",
                "url": f"{platform.url}/{label}/{i}",
                "credentials": {"secret": secrets.token_hex(16)},
            },
        )
        return str(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def post_rows(api: Api, ids: list[str]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: api.timed("GET", f"/api/v1/tasks/scheduled-posts/{i}")[1].json(), ids))


def wait_arrived(platform: WebhookPlatform, ids: set[str], timeout: float) -> float:
    """Seconds until every post in ``ids`` reached the platform (or ``timeout`` passed)."""
    started = time.monotonic()
    while platform.arrived(ids) < len(ids) and time.monotonic() - started < timeout:
        time.sleep(0.1)
    return time.monotonic() - started


def lateness(stack: Stack, ids: list[str], due: datetime, prefix: str) -> dict[str, Any]:
    """Arrival lateness at the platform, ``published_at`` lateness, early, duplicates, statuses."""
    wanted = set(ids)
    first = stack.platform.first_arrivals(wanted)
    late = [at - due.timestamp() for at in first.values()]
    rows = post_rows(stack.api, ids)
    published = [
        (datetime.fromisoformat(row["published_at"]) - due).total_seconds()
        for row in rows
        if row.get("published_at")
    ]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return {
        f"{prefix}posts": len(ids),
        f"{prefix}arrived": len(first),
        **latency_summary(late, f"{prefix}late"),
        **latency_summary(published, f"{prefix}published_late"),
        f"{prefix}early": sum(1 for value in late if value < 0),
        f"{prefix}duplicates": stack.platform.duplicates(wanted),
        f"{prefix}statuses": statuses,
    }


def due_ahead(args: argparse.Namespace, posts: int) -> datetime:
    """A due time far enough ahead that creating ``posts`` posts finishes before it."""
    lead = args.lead if args.lead is not None else 6 + posts / 80
    return datetime.now(UTC) + timedelta(seconds=lead)


def create_due(
    stack: Stack, args: argparse.Namespace, accounts: list[str], due: datetime, offset: int = 0
) -> list[str]:
    _, wall, ids = create_posts(
        stack.api,
        lambda i: accounts[(i - offset) % len(accounts)],
        len(accounts),
        args.clients,
        lambda _: due,
        start=offset,
    )
    if datetime.now(UTC) > due:
        print(f"warning: creating took {wall:.1f} s, past the due time (raise --lead)", file=sys.stderr)
    return ids


def ping_floor(count: int) -> dict[str, Any]:
    """The engine alone: ``count`` no-op ``ping`` jobs due at one instant on ``social_media``,
    through the public API; lateness of their start."""
    from atomq import TaskQueue

    tq = TaskQueue()
    due = datetime.now(UTC) + timedelta(seconds=5)
    jobs = [tq.enqueue_at(due, "ping", queue="social_media") for _ in range(count)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        statuses = [tq.get_job_status(job.id) for job in jobs]
        if all(s["status"] == "finished" for s in statuses):
            late = [(datetime.fromisoformat(s["started_at"]) - due).total_seconds() for s in statuses]
            return {"ping_jobs": count, **latency_summary(late, "ping_late")}
        time.sleep(0.5)
    return {"ping_jobs": count, "ping_late": "timed out"}


def burst(args: argparse.Namespace) -> dict[str, Any]:
    posts = args.posts or 400
    count = args.accounts or 200
    with stack(args) as s:
        accounts = make_accounts(s.api, s.platform, count, "acct")
        time.sleep(2)  # workers up
        due = due_ahead(args, posts)
        every = [accounts[i % count] for i in range(posts)]
        ids = create_due(s, args, every, due)
        cpu_before = tree_cpu_seconds(s.worker_pid)
        waited = wait_arrived(
            s.platform, set(ids), (due - datetime.now(UTC)).total_seconds() + PUBLISH_TIMEOUT
        )
        time.sleep(1)  # let the last publishes record published_at
        worker_cpu_ms = (tree_cpu_seconds(s.worker_pid) - cpu_before) * 1000 / posts
        out = {"accounts": count, "wait_s": waited, "worker_cpu_ms_per_post": worker_cpu_ms}
        out |= lateness(s, ids, due, "")
        out |= ping_floor(posts)
    floor = out.get("ping_late_p99_ms")
    if isinstance(floor, float) and out.get("late_p99_ms"):
        out["ratio_p99_vs_ping"] = out["late_p99_ms"] / floor
    return out


def fairness(args: argparse.Namespace) -> dict[str, Any]:
    big = args.posts or 2000
    count = args.accounts or 200
    with stack(args) as s:
        singles = make_accounts(s.api, s.platform, count, "single")
        heavy = make_accounts(s.api, s.platform, 1, "heavy")[0]
        time.sleep(2)
        # Baseline: the single posts alone.
        due = due_ahead(args, count)
        alone = create_due(s, args, singles, due)
        wait_arrived(s.platform, set(alone), (due - datetime.now(UTC)).total_seconds() + PUBLISH_TIMEOUT)
        time.sleep(1)
        out = lateness(s, alone, due, "alone_")
        # The same accounts again, due together with one account's many posts.
        due = due_ahead(args, big + count)
        heavy_ids = create_due(s, args, [heavy] * big, due, offset=count)
        mixed = create_due(s, args, singles, due, offset=count + big)
        waited = wait_arrived(
            s.platform, set(mixed), (due - datetime.now(UTC)).total_seconds() + PUBLISH_TIMEOUT
        )
        heavy_done = s.platform.arrived(set(heavy_ids))
        time.sleep(1)
        out |= {"heavy_posts": big, "singles_wait_s": waited, "heavy_arrived_when_singles_done": heavy_done}
        out |= lateness(s, mixed, due, "mixed_")
    if out.get("alone_late_p99_ms") and out.get("mixed_late_p99_ms"):
        out["ratio_p99_mixed_vs_alone"] = out["mixed_late_p99_ms"] / out["alone_late_p99_ms"]
    return out


def report(name: str, results: dict[str, Any], args: argparse.Namespace) -> None:
    def row(label: str, prefix: str) -> None:
        r = results
        print(
            f"  {label:<34} {r.get(prefix + 'arrived', 0):>5}/{r.get(prefix + 'posts', 0):<5} "
            f"p50 {r.get(prefix + 'late_p50_ms', 0):>9.1f}  p99 {r.get(prefix + 'late_p99_ms', 0):>9.1f}  "
            f"max {r.get(prefix + 'late_max_ms', 0):>9.1f} ms   early {r.get(prefix + 'early', 0)}  "
            f"dup {r.get(prefix + 'duplicates', 0)}  published_at p99 "
            f"{r.get(prefix + 'published_late_p99_ms', 0):.1f} ms  {r.get(prefix + 'statuses')}"
        )

    print(
        f"\nposts {name}, platform latency {args.platform_latency} ms, atomq worker --count {args.worker_count}"
        + (f" --concurrency {args.worker_concurrency}" if args.worker_concurrency else "")
    )
    print("  lateness = arrival at the platform - due time")
    if name == "burst":
        row(f"{results['posts']} posts on {results['accounts']} accounts", "")
        print(
            f"  {'atomq worker CPU per post':<34} {results.get('worker_cpu_ms_per_post', 0):.2f} ms "
            "(supervisor, scheduler and workers, from /proc: steal does not count)"
        )
        print(
            f"  {'ping floor (' + str(results['ping_jobs']) + ' jobs)':<34} "
            f"p50 {results.get('ping_late_p50_ms', 0):.1f}  p99 {results.get('ping_late_p99_ms', 0):.1f} ms"
        )
        if "ratio_p99_vs_ping" in results:
            print(f"  p99 ratio posts / ping floor: {results['ratio_p99_vs_ping']:.1f}")
    else:
        row("single posts alone", "alone_")
        row(f"single posts + {results['heavy_posts']} of one account", "mixed_")
        print(f"  busy account's posts delivered by then: {results['heavy_arrived_when_singles_done']}")
        if "ratio_p99_mixed_vs_alone" in results:
            print(f"  singles p99 ratio mixed / alone: {results['ratio_p99_mixed_vs_alone']:.1f}")
