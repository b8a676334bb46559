"""What the posts benchmarks share: an HTTP client for the API, bulk post creation, and a fake
webhook platform that answers after a set delay and remembers every delivery."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from bench.harness import pct


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(pct(values, 0.95) * 1000, 2),
        "p99_ms": round(pct(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


class Api:
    """HTTP clients for the API under test, one per thread."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.local = threading.local()

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
            )
        client: httpx.Client = self.local.client
        return client

    def timed(self, method: str, path: str, **kwargs: Any) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = self.client().request(method, path, **kwargs)
        elapsed = time.perf_counter() - started
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return elapsed, response

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API at {self.url} did not start")
            time.sleep(0.2)


def create_posts(
    api: Api,
    account: str | Callable[[int], str],
    count: int,
    clients: int,
    due: Callable[[int], datetime],
    start: int = 0,
) -> tuple[list[float], float, list[str]]:
    """Create ``count`` posts with ``clients`` threads; return latencies, wall time and ids.

    ``account`` is one account id, or a function of the post's index."""
    ids: list[str] = [""] * count

    def one(i: int) -> float:
        elapsed, response = api.timed(
            "POST",
            "/api/v1/tasks/scheduled-posts",
            json={
                "account_id": account(start + i) if callable(account) else account,
                "content": f"bench post {start + i}",
                "scheduled_for": due(start + i).isoformat(),
                "user_id": f"user_{(start + i) % 50}",
            },
        )
        ids[i] = response.json()["id"]
        return elapsed

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(count), chunksize=64))
    return latencies, time.perf_counter() - began, ids


class WebhookPlatform:
    """A local webhook receiver: notes when each post arrived (first and repeated deliveries),
    then answers 200 after ``latency`` seconds, as a slow platform would.

    It serves HTTP/1.1 with keep-alive from an asyncio protocol on a loop of its own thread.
    Its CPU is taken from the workers being measured on this 2-core machine, where a real
    platform's CPU is its own, so it does as little as it can: a thread per connection
    (``http.server``) cost a second of CPU per 400 posts, asyncio streams a fifth of a core in
    a burst of 5,000; a protocol that parses the bytes itself and answers with ``call_later``
    costs a fraction of either.
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.deliveries: dict[str, list[float]] = {}
        self.loop = asyncio.new_event_loop()
        sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _WebhookProtocol(self), sock=sock)
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def received(self, body: bytes) -> bytes:
        """Note one delivery (its arrival now); the answer to send back."""
        arrived = time.time()
        try:
            post_id = str(json.loads(body)["post_id"])
        except (ValueError, KeyError):
            post_id = "?"
        with self.lock:
            self.deliveries.setdefault(post_id, []).append(arrived)
        answer = json.dumps({"id": f"wh-{post_id}"}).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )

    def start(self) -> WebhookPlatform:
        self.thread.start()
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def arrived(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for post_id in ids if post_id in self.deliveries)

    def first_arrivals(self, ids: set[str]) -> dict[str, float]:
        with self.lock:
            return {post_id: times[0] for post_id, times in self.deliveries.items() if post_id in ids}

    def duplicates(self, ids: set[str]) -> int:
        """Posts among ``ids`` delivered more than once."""
        with self.lock:
            return sum(1 for post_id in ids if len(self.deliveries.get(post_id, ())) > 1)


class _WebhookProtocol(asyncio.Protocol):
    """One connection to :class:`WebhookPlatform`: each complete request (head and
    ``Content-Length`` body) is noted at once and answered ``latency`` seconds later, in order."""

    def __init__(self, platform: WebhookPlatform) -> None:
        self.platform = platform
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # a worker stopped mid-request (end of a scenario): nobody to answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            answer = self.platform.received(body)
            loop = self.platform.loop
            if self.platform.latency:
                loop.call_later(self.platform.latency, self._answer, answer)
            else:
                self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
