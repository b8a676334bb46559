"""Publishing posts from one process on one event loop, as a worker that keeps several async
jobs in flight will: how many posts a process publishes per second, and how late, when the
platform takes ``--platform-latency`` ms to answer.

The engine is left out (no Redis queue, no worker): ``--posts`` posts on ``--accounts`` webhook
accounts, all due now, go through atomq's own publishing (database steps, rate limiter, the
pooled HTTP client) with at most ``--in-flight`` at once; a post whose account is busy is run
again after its Defer, as the engine would. ``--in-flight 1`` is one post at a time, as a
worker runs them today. The platform runs in a child process.

    .venv/bin/python bench/bench_posts_loop.py --posts 400 --accounts 200 --platform-latency 200
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.*

from bench.harness import Server, latency_summary


def serve_platform(latency: float, port: multiprocessing.SimpleQueue[int]) -> None:
    from bench.posts_support import WebhookPlatform

    platform = WebhookPlatform(latency).start()
    port.put(platform.port)
    platform.thread.join()


def run(args: argparse.Namespace, in_flight: int, url: str, redis_url: str) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from atomq.core.errors import Defer, JobFailure
    from atomq.core.settings import load_settings
    from atomq.db.engine import Database
    from atomq.db.migrate import upgrade
    from atomq.engine.task_queue import TaskQueue
    from atomq.features.posts.accounts import AccountInput, create_account
    from atomq.features.posts.publishing import publish_post_async
    from atomq.features.posts.runtime import PostsRuntime
    from atomq.features.posts.service import PostInput, PostsService

    work = Path(tempfile.mkdtemp(prefix="atomq-bench-loop-"))
    settings = load_settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{work / 'atomq.db'}",
        data_dir=work,
        posts_allowed_hosts=["127.0.0.1"],
        credentials_key=Fernet.generate_key().decode(),
    )
    database = Database.from_settings(settings)
    upgrade(database)
    tq = TaskQueue(settings=settings)
    service = PostsService(database, tq, settings)
    accounts = [
        create_account(
            database, settings, AccountInput("webhook", f"a{i}", "u", f"{url}/{i}", {"secret": "s"})
        )
        for i in range(args.accounts)
    ]
    posts = [
        service.create(PostInput(accounts[i % len(accounts)].id, f"post {i}", "u", publish_now=True))
        for i in range(args.posts)
    ]
    runtime = PostsRuntime(settings, database, tq.connection)
    defers = 0
    failed: list[str] = []

    async def one(post: Any, slots: asyncio.Semaphore, start: float) -> float:
        nonlocal defers
        while True:
            async with slots:
                try:
                    await publish_post_async(runtime, post.id, post.user_id, post.revision)
                    return time.monotonic() - start
                except Defer as exc:
                    defers += 1
                    delay = exc.delay
                except JobFailure as exc:
                    failed.append(str(exc))
                    return time.monotonic() - start
            await asyncio.sleep(delay)  # the engine reschedules it; it holds no slot meanwhile

    async def all_posts() -> tuple[list[float], float]:
        slots = asyncio.Semaphore(in_flight)
        start = time.monotonic()
        done = await asyncio.gather(*(one(post, slots, start) for post in posts))
        return done, time.monotonic() - start

    cpu = time.process_time()
    done, wall = asyncio.run(all_posts())
    cpu = time.process_time() - cpu
    database.dispose()
    return {
        "in_flight": in_flight,
        "wall_s": round(wall, 2),
        "posts_per_s": round(len(posts) / wall, 1),
        "defers": defers,
        # This process's CPU (its loop and its database and Redis threads) per post published.
        "cpu_ms_per_post": round(cpu * 1000 / len(posts), 2),
        "failed": len(failed),
        "first_failure": failed[0] if failed else None,
        **latency_summary(done, "late"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--platform-latency", type=float, default=200.0, help="ms")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 10, 100], help="posts at once")
    args = parser.parse_args()
    ports: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    platform = multiprocessing.Process(target=serve_platform, args=(args.platform_latency / 1000, ports))
    platform.start()
    server = Server()
    try:
        url = f"http://127.0.0.1:{ports.get()}"
        print(
            f"{args.posts} posts on {args.accounts} webhook accounts, platform latency {args.platform_latency:g} ms"
        )
        for in_flight in args.in_flight:
            r = run(args, in_flight, url, server.url)
            print(
                f"  in flight {r['in_flight']:>4}: {r['wall_s']:>7.2f} s, {r['posts_per_s']:>6.1f} posts/s, "
                f"done after p50 {r['late_p50_ms']:.0f} p99 {r['late_p99_ms']:.0f} ms, defers {r['defers']}, "
                f"CPU {r['cpu_ms_per_post']:.2f} ms/post, "
                f"failed {r['failed']} {r['first_failure'] or ''}"
            )
    finally:
        platform.terminate()
        platform.join(5)
        server.stop()


if __name__ == "__main__":
    main()
