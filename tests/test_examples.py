"""The example apps, for real: each app in its own server process (uvicorn for the FastAPI
app, wsgiref for the WSGI one) and real `atomq worker` processes, driven over HTTP."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from testkit.support import free_port, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def serve(procs, env, argv, name):
    """Start ``argv`` (a server on a free port) and a worker for the examples' tasks; the URL."""
    port = free_port()
    app_env = env | {"ATOMQ_TASK_MODULES": "examples.tasks"}
    procs.worker("--no-scheduler", env=app_env)
    process = procs.program(*[part.replace("{port}", str(port)) for part in argv], env=app_env, name=name)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert process.poll() is None, procs.log(process)
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 40, interval=0.2, what=f"{name} to answer")
    return url


APPS = {
    "fastapi": [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", "{port}"],
    "wsgi": [sys.executable, "-m", "examples.wsgi_app", "--port", "{port}"],
}


@pytest.mark.parametrize("app", sorted(APPS))
def test_the_example_app_enqueues_and_returns_results(app, procs, env):
    url = serve(procs, env, APPS[app], app)
    with httpx.Client(base_url=url, timeout=30) as client:
        # Enqueue and answer at once; then wait for the job over HTTP.
        queued = client.post("/signup", json={"user_id": "u-1"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["job_id"]
        status = client.get(f"/jobs/{job_id}", params={"wait": 20}).json()
        assert status["status"] == "finished" and status["result"] == {"sent_to": "u-1"}

        # Enqueue and await the result inside the request.
        made = client.post("/thumbnails", json={"image_url": "https://example.org/cat.png", "width": 64})
        assert made.status_code == 200, made.text
        assert made.json()["result"]["thumbnail"] == "https://example.org/cat.png?w=64"

        # A job that fails: its error comes back to the client.
        refused = client.post("/thumbnails", json={"image_url": "ftp://nope"})
        assert refused.status_code == 422
        assert "not an image URL" in refused.text

        assert client.get("/jobs/no-such-job").status_code == 404

    # Many requests at once, each awaiting its job: all served, none stuck behind another.
    def one(i):
        with httpx.Client(base_url=url, timeout=60) as c:
            started = time.monotonic()
            response = c.post("/thumbnails", json={"image_url": f"https://example.org/{i}.png"})
            return response.status_code, response.json()["result"], time.monotonic() - started

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(12)))
    assert all(code == 200 and result["width"] == 128 for code, result, _ in results), results
