"""A scriptable HTTP server: answers from a queue of planned responses, records every request."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testkit.support import free_port


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: The client's address and port: the same for requests on one keep-alive connection.
    peer: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Plan:
    """How to answer one request.

    ``act`` says whether the request takes effect (e.g. creates a status) before the
    answer; ``delay`` holds the answer back (longer than the client waits = a timeout).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0
    act: bool = True


class _Listener(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a publisher opening more connections at once
    # (async posts in flight) would see some dropped and time out connecting.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone mid-answer (a publish cancelled at its time limit, a test's timeout) is
        # what several tests do on purpose; anything else is printed, as socketserver does.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeServer:
    """Base of the fakes: subclasses implement :meth:`handle`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.requests: list[Recorded] = []
        self.plans: list[Plan] = []
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def plan(self, *plans: Plan) -> None:
        """Answer the next requests with ``plans``, in order; after that, normally."""
        with self.lock:
            self.plans.extend(plans)

    def next_plan(self) -> Plan:
        with self.lock:
            return self.plans.pop(0) if self.plans else Plan()

    def wait(self, seconds: float) -> None:
        """Sleep in a handler, cut short when the server stops."""
        self._stopping.wait(seconds)

    def handle(self, request: Recorded) -> tuple[int, dict[str, str], Any]:
        raise NotImplementedError

    def start(self) -> FakeServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.do_POST("GET")

            def do_POST(self, method: str = "POST") -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Recorded(
                    method,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.time(),
                    "{}:{}".format(*self.client_address[:2]),
                )
                with fake.lock:
                    fake.requests.append(request)
                try:
                    status, headers, payload = fake.handle(request)
                except ConnectionError:
                    return
                if fake._stopping.is_set():
                    return
                raw = isinstance(payload, bytes)  # served as it is (media files)
                data = payload if raw else json.dumps(payload).encode() if payload is not None else b""
                try:
                    self.send_response(status)
                    if not raw:
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = _Listener((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def wait_for_requests(
        self, count: int, timeout: float = 20.0, predicate: Callable[[], bool] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} request(s), got {len(self.requests)}")
            time.sleep(0.02)
