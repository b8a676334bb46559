"""A plain WSGI app that enqueues jobs with the sync API, as a Django or Flask view does:
``task_queue.enqueue`` is one round trip to Redis, cheap enough for a request handler.

Run it (Redis at ``REDIS_URL``)::

    ATOMQ_TASK_MODULES=examples.tasks atomq worker &
    python -m examples.wsgi_app --port 8002        # or: gunicorn examples.wsgi_app:application

    curl -X POST localhost:8002/signup -d '{"user_id": "u1"}'
    curl 'localhost:8002/jobs/<job_id>?wait=5'

In a Django view it reads the same::

    def signup(request):
        job = task_queue.enqueue("send_welcome_email", user_id=request.POST["user_id"])
        return JsonResponse({"job_id": job.id}, status=202)
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIServer, make_server

from atomq import AtomqError, JobFailedError, JobNotFoundError, WaitTimeoutError, task_queue
from examples import tasks  # noqa: F401 - registers the tasks this app enqueues

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def signup(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    job = task_queue.enqueue("send_welcome_email", user_id=str(body["user_id"]))
    return 202, {"job_id": job.id, "status": "queued"}


def thumbnail(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    job = task_queue.enqueue(
        "make_thumbnail", image_url=str(body["image_url"]), width=int(body.get("width", 128))
    )
    try:
        return 200, {"job_id": job.id, "result": task_queue.wait(job.id, timeout=10)}
    except WaitTimeoutError:
        return 202, {"job_id": job.id, "result": None}
    except JobFailedError as exc:
        return 422, {"job_id": job.id, "error": exc.error}


def job_status(job_id: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
    wait = float(query.get("wait", ["0"])[0])
    if wait > 0:
        # Ended or not, failed or not: the status says how it stands.
        with contextlib.suppress(WaitTimeoutError, JobFailedError):
            task_queue.wait(job_id, timeout=min(wait, 30))
    return 200, task_queue.get_job_status(job_id)


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point: a few JSON routes."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
        if method == "POST" and path == "/signup":
            status, payload = signup(body)
        elif method == "POST" and path == "/thumbnails":
            status, payload = thumbnail(body)
        elif method == "GET" and path.startswith("/jobs/"):
            status, payload = job_status(path.removeprefix("/jobs/"), query)
        elif method == "GET" and path == "/health":
            status, payload = 200, {"status": "ok"}
        else:
            status, payload = 404, {"error": f"no route {method} {path}"}
    except JobNotFoundError as exc:
        status, payload = 404, {"error": str(exc)}
    except (AtomqError, KeyError, ValueError) as exc:
        status, payload = 422, {"error": str(exc)}
    data = json.dumps(payload).encode()
    reasons = {200: "OK", 202: "Accepted", 404: "Not Found", 422: "Unprocessable Content"}
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per request (a waiting request must not hold up others)."""

    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser(description="atomq WSGI example")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    with make_server(args.host, args.port, application, server_class=ThreadingServer) as server:
        print(f"serving on http://{args.host}:{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
