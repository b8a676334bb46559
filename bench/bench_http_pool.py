"""What one publish's HTTP request costs in CPU, with many in flight on one event loop, for
the ways a publisher's client can send it, measured in the same run:

- ``httpcore-pool``: ``client.post`` with httpcore's own connection pool (atomq before
  ``connpool.OriginPool``), over atomq's guarded connections;
- ``origin-pool``: ``client.post`` with atomq's pool;
- ``post-bytes``: ``CookielessClient.post_bytes`` (what ``publishers.http.send`` uses for a
  body of bytes or JSON): straight to atomq's pool, past httpx's client layers.

The platform is a local asyncio server in a child process that answers after
``--latency`` ms; the figure is this process's CPU per request (``time.process_time``).

    .venv/bin/python bench/bench_http_pool.py --requests 5000 --in-flight 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.*

WAYS = ("httpcore-pool", "origin-pool", "post-bytes")


def serve_platform(latency: float, port: multiprocessing.SimpleQueue[int]) -> None:
    from bench.posts_support import WebhookPlatform

    platform = WebhookPlatform(latency).start()
    port.put(platform.port)
    platform.thread.join()


async def measure(way: str, url: str, requests: int, in_flight: int, clients: int) -> float:
    """CPU microseconds per request sent ``way``, after a warm-up."""
    import httpcore

    from atomq.features.posts import netguard
    from atomq.features.posts.publishers.http import CookielessClient, make_client

    policy = netguard.HostPolicy.parse(["127.0.0.1"])
    pool: list[CookielessClient] = []
    for _ in range(clients):
        client = make_client(policy, 10)
        assert isinstance(client, CookielessClient)
        if way == "httpcore-pool":
            transport = client._transport
            assert isinstance(transport, netguard.AsyncGuardedTransport)
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=transport._pool._ssl_context,
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=30.0,
                network_backend=netguard._AsyncGuardedBackend(policy),
            )
        pool.append(client)
    headers = {"Content-Type": "application/json", "X-Atomq-Signature": "sha256=0", "Idempotency-Key": "k"}
    gate = asyncio.Semaphore(in_flight)

    async def one(n: int) -> None:
        body = json.dumps({"post_id": str(n), "content": "x" * 200}).encode()
        client = pool[n % clients]
        async with gate:
            if way == "post-bytes":
                response = await client.post_bytes(url, body, headers)
            else:
                response = await client.post(url, content=body, headers=headers)
            response.json()

    await asyncio.gather(*(one(n) for n in range(min(requests, 500))))
    started = time.process_time()
    await asyncio.gather(*(one(n) for n in range(requests)))
    spent = time.process_time() - started
    for client in pool:
        await client.aclose()
    return spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=150)
    parser.add_argument("--clients", type=int, default=8, help="clients the requests are spread over")
    parser.add_argument("--latency", type=float, default=50, help="ms the platform takes to answer")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every way, alternating")
    args = parser.parse_args()
    ports: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    platform = multiprocessing.Process(target=serve_platform, args=(args.latency / 1000, ports), daemon=True)
    platform.start()
    try:
        url = f"http://127.0.0.1:{ports.get()}/hook"
        costs: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                costs[way].append(asyncio.run(measure(way, url, args.requests, args.in_flight, args.clients)))
    finally:
        platform.terminate()
        platform.join(10)
    base = min(costs["httpcore-pool"])
    print(
        f"{args.requests} requests, {args.in_flight} in flight over {args.clients} clients, platform {args.latency:g} ms"
    )
    for way in WAYS:
        best = min(costs[way])
        runs = " ".join(f"{c:.0f}" for c in costs[way])
        print(f"  {way:<14} {best:6.0f} us CPU per request (runs: {runs})  {best / base:.2f}x httpcore-pool")


if __name__ == "__main__":
    main()
