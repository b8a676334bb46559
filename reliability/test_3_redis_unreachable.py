"""Scenario 3: Redis unreachable for a while - a TCP proxy the test controls drops every
connection and refuses new ones - then reachable again.

Promises checked: worker processes and the API process survive (no crash, no restart); while
Redis is away the API answers 503 with a ``redis_unavailable`` error for what needs Redis, at
once rather than hanging, ``/ready`` says Redis is unreachable and ``/health`` still answers;
afterwards work resumes by itself: jobs enqueued before the outage (some running when it began)
and after it all run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from atomq.api.state import API_REDIS_TIMEOUT
from reliability.ledger import Ledger
from reliability.redis_faults import TcpProxy
from reliability.redis_support import ApiServer, ledger_times, process_env, sqlite_database, wait_all_recorded
from reliability.report import report
from testkit.sizes import size
from testkit.support import Processes, RedisServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(size(120, 900)))]

#: How Redis becomes unreachable, and for how many seconds: "refused" resets every connection
#: and refuses new ones (Redis down, or a firewall that rejects); "silent" lets nothing through
#: and answers nothing (a partition that drops packets), so every call waits out its timeout.
OUTAGES = [("refused", size(3.0, 30.0)), ("refused", size(8.0, 120.0)), ("silent", size(2.0, 60.0))]
BEFORE = 60  # quick jobs enqueued before the outage
SLOW = 4  # jobs still running when the outage starts
AFTER = 60  # quick jobs enqueued after it
#: Seconds an API answer may take while Redis is away: at once when connections are refused,
#: the API's Redis timeout (atomq.api.state.API_REDIS_TIMEOUT, 5 s) plus slack when they hang.
API_PATIENCE = {"refused": 3.0, "silent": API_REDIS_TIMEOUT + 3.0}


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize(("mode", "outage"), OUTAGES, ids=[f"{m}-{s:g}s" for m, s in OUTAGES])
def test_redis_unreachable(
    mode: str, outage: float, proxy: TcpProxy, tmp_path: Path, ledger: Ledger, procs: Processes
) -> None:
    sqlite_database(tmp_path / "atomq.db").dispose()
    env = process_env(proxy.url, tmp_path / "var", ledger, f"sqlite:///{tmp_path / 'atomq.db'}")
    supervisor = procs.worker("--count", "2", env=env)
    api = ApiServer(procs, env)
    try:
        assert api.enqueue("warm-up").status_code == 201
        wait_for(lambda: not ledger.missing(["warm-up"]), 30, 0.1, "the workers to start")
        slow = [api.enqueue(f"slow-{i}", seconds=2.0) for i in range(SLOW)]
        assert [r.status_code for r in slow] == [201] * SLOW
        before = [f"before-{i}" for i in range(BEFORE)]
        for key in before:
            assert api.enqueue(key).status_code == 201
        wait_for(lambda: _running(api, [r.json()["job_id"] for r in slow]), 10, 0.05, "a slow job to start")

        cut_at = time.time()
        if mode == "silent":
            proxy.go_silent()
        else:
            proxy.cut()
        answers, slowest = _probe_while_away(api, outage)
        if mode == "silent":
            proxy.heal()
        else:
            proxy.resume()
        resumed_at = time.time()

        # The API recovers on its own: the next enqueue is accepted.
        api_back = wait_for(lambda: api.enqueue("after-0").status_code == 201 and time.time(), 30, 0.2)
        after = ["after-0"] + [f"after-{i}" for i in range(1, AFTER)]
        for key in after[1:]:
            assert api.enqueue(key).status_code == 201
        expected = ["warm-up", *before, *(f"slow-{i}" for i in range(SLOW)), *after]
        missing = wait_all_recorded(ledger, expected, 90)
        worker_back = min(at for at in ledger_times(ledger).values() if at >= resumed_at)
        crashes = Processes.log(supervisor).count(" died (exit code")
        api_alive = api.process.poll() is None
    finally:
        api.close()

    report(
        f"3_redis_unreachable_{mode}_{outage:g}s",
        mode=mode,
        outage_seconds=outage,
        jobs=len(expected),
        lost=len(missing),
        duplicates=len(ledger.duplicates()),
        api_answers_during_outage=dict(answers),
        slowest_api_answer_seconds=round(slowest, 3),
        api_seconds_to_recover=round(api_back - resumed_at, 2),
        worker_seconds_to_resume=round(max(0.0, worker_back - resumed_at), 2),
        outage_measured_seconds=round(resumed_at - cut_at, 2),
        worker_processes_crashed=crashes,
    )
    assert missing == [], (missing[:10], Processes.log(supervisor)[-20000:])
    assert supervisor.poll() is None and crashes == 0, Processes.log(supervisor)
    assert api_alive, Processes.log(api.process)
    # What needs Redis got a clear 503; the probes answered; nothing was a 500 or a hang.
    assert answers["enqueue 503 redis_unavailable"] > 0
    assert answers["job 503 redis_unavailable"] > 0
    assert answers["ready 503 redis unreachable"] > 0
    assert answers["health 200"] > 0
    unexpected = {
        k: n
        for k, n in answers.items()
        if not k.startswith(("enqueue 503", "job 503", "ready 503", "health 200"))
    }
    assert unexpected == {}
    assert slowest < API_PATIENCE[mode]
    # A refused enqueue wrote nothing: none of those jobs ever ran.
    assert [key for key in ledger.counts() if key.startswith("refused-")] == []
    assert worker_back - resumed_at < 60


def _running(api: ApiServer, job_ids: list[str]) -> bool:
    """Whether one of the slow jobs runs (the outage must catch work mid-job)."""
    return any(
        api.http.get(f"/api/v1/tasks/jobs/{job_id}").json()["status"] == "started" for job_id in job_ids
    )


def _probe_while_away(api: ApiServer, outage: float) -> tuple[Counter[str], float]:
    """Call the API for ``outage`` seconds, the four calls of a round side by side; count the
    kinds of answers and time the slowest."""
    answers: Counter[str] = Counter()
    durations: list[float] = []
    deadline = time.monotonic() + outage
    index = 0

    def timed(kind: str, call: Callable[[], httpx.Response]) -> str:
        started = time.monotonic()
        try:
            return _describe(kind, call())
        except httpx.HTTPError as exc:
            return f"{kind} {type(exc).__name__}"
        finally:
            durations.append(time.monotonic() - started)

    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            key = f"refused-{index}"
            calls: list[tuple[str, Callable[[], httpx.Response]]] = [
                ("enqueue", lambda: api.enqueue(key)),
                ("job", lambda: api.http.get("/api/v1/tasks/jobs/some-job")),
                ("ready", lambda: api.http.get("/ready")),
                ("health", lambda: api.http.get("/health")),
            ]
            answers.update(pool.map(lambda item: timed(*item), calls))
            index += 1
            time.sleep(0.2)
    return answers, max(durations)


def _describe(kind: str, response: httpx.Response) -> str:
    text = f"{kind} {response.status_code}"
    if response.status_code == 503:
        body = response.json()
        if kind == "ready":
            redis_check = str(body.get("checks", {}).get("redis", ""))
            text += " redis unreachable" if redis_check.startswith("unreachable") else f" {redis_check}"
        else:
            text += f" {body.get('error', {}).get('code')}"
    return text
