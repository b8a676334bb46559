"""Enqueue benchmark: what it costs a web process to hand jobs over, for atomq and its peers,
from one producer process, each system at its defaults, on one Redis this script starts.

For each system (no workers run; the queue is flushed between measurements):

* single enqueue rate: ``--calls`` (5,000) calls, one at a time;
* bulk enqueue rate through the library's bulk API (atomq ``task_queue.enqueue_many``, RQ
  ``Queue.enqueue_many``); 'n/a' where there is none (dramatiq's ``group``, huey's ``map``
  and Celery's ``group`` send one message per job; arq and saq have no bulk enqueue);
* isolated enqueue latency: ``--isolated`` (500) calls, one every 20 ms, p50/p99;
* Redis commands and round trips per enqueue (``INFO commandstats`` and
  ``total_reads_processed`` deltas), single and bulk.

atomq extras, each printed as 'not available' when the API is absent (being built):

* ``atomq.aio``: ``--coroutines`` (100) coroutines enqueueing concurrently, jobs/s and the
  ratio to atomq's sync single rate;
* ``task_queue.wait`` (``atomq.aio``'s, else the sync one): with 2 idle ``atomq worker``
  processes, the p99 of enqueue-to-start and of wait() returning after the job's end.
  Enqueue-to-start with idle workers is measured in any case (sync enqueue when there is no
  ``atomq.aio``).

    .venv/bin/python bench/bench_enqueue.py
    .venv/bin/python bench/bench_enqueue.py --systems atomq,rq --calls 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* and the peers' tasks

from bench.harness import (
    AsyncRunner,
    Processes,
    Server,
    child_env,
    latency_summary,
    median_of,
    print_table,
    write_json,
)
from bench.peers.common import STARTS_KEY
from bench.systems import SYSTEMS, Atomq, System

DEFAULT_SYSTEMS = "atomq,rq,dramatiq,huey,celery,arq,saq"

#: Seconds between isolated calls.
ISOLATED_INTERVAL = 0.02

#: Jobs for the enqueue-to-start and wait() measurements, one every ISOLATED_INTERVAL.
START_JOBS = 200


def per_call(server: Server, n: int, call: Any) -> tuple[float, dict[str, float]]:
    """Run ``call()`` (which makes ``n`` enqueues); return (enqueues/s, Redis costs per enqueue)."""
    server.client.flushall()
    before = server.snapshot()
    started = time.perf_counter()
    call()
    rate = n / (time.perf_counter() - started)
    after = server.snapshot()
    return rate, {
        "commands": (after["calls"] - before["calls"] - 2) / n,
        "round_trips": (after["reads"] - before["reads"] - 1) / n,
    }


def measure_system(system: System, server: Server, calls: int, isolated: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    rate, cost = per_call(server, calls, lambda: system.enqueue_single(calls))
    row |= {"single_per_s": rate, "cmds_per_enqueue": cost["commands"], "rt_per_enqueue": cost["round_trips"]}
    if system.bulk_api:
        rate, cost = per_call(server, calls, lambda: system.enqueue_bulk(calls))
        row |= {"bulk_per_s": rate, "cmds_per_bulk_enqueue": cost["commands"], "bulk_api": system.bulk_api}
    else:
        row |= {"bulk_per_s": "n/a", "cmds_per_bulk_enqueue": "n/a", "bulk_api": "n/a"}
    server.client.flushall()
    row |= latency_summary(system.timed_calls(isolated, ISOLATED_INTERVAL), "isolated")
    server.client.flushall()
    return row


# -- atomq's asyncio API and wait() ---------------------------------------------------------


def aio_task_queue() -> Any | None:
    """``atomq.aio.task_queue`` when it exists (being built in parallel)."""
    if importlib.util.find_spec("atomq.aio") is None:
        return None
    from atomq import aio

    return getattr(aio, "task_queue", None)


def measure_aio_concurrent(aio_tq: Any, server: Server, calls: int, coroutines: int) -> dict[str, Any]:
    """``coroutines`` coroutines, each enqueueing its share one call at a time."""
    runner = AsyncRunner()
    try:
        share = max(1, calls // coroutines)

        async def one() -> None:
            for _ in range(share):
                await aio_tq.enqueue("bench_noop")

        async def all_of_them() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(coroutines)))
            return time.perf_counter() - started

        server.client.flushall()
        runner.run(one())  # connect and warm up outside the timing
        server.client.flushall()
        seconds = runner.run(all_of_them())
        queued = server.client.llen("rq:queue:bench")
        return {"aio_concurrent_per_s": share * coroutines / seconds, "aio_queued": queued}
    finally:
        runner.close()


async def call_wait(wait: Any, job: Any, timeout: float) -> Any:
    """Call ``wait`` with the job's id, or with the job when it wants that; await a coroutine."""
    try:
        result = wait(job.id, timeout=timeout)
    except TypeError:
        result = wait(job, timeout=timeout)
    if inspect.isawaitable(result):
        result = await result
    return result


def measure_start_and_wait(
    atomq_system: Atomq, aio_tq: Any | None, server: Server, log_dir: Path
) -> dict[str, Any]:
    """With 2 idle atomq workers: enqueue-to-start, and wait()-return-after-end when wait exists."""
    server.client.flushall()
    sync_tq = atomq_system.tq
    processes = Processes()
    runner = AsyncRunner()
    out: dict[str, Any] = {}
    wait = getattr(aio_tq, "wait", None) if aio_tq is not None else None
    wait_from = "atomq.aio" if wait is not None else None
    if wait is None and getattr(sync_tq, "wait", None) is not None:
        wait, wait_from = sync_tq.wait, "atomq (sync)"
    enqueuer = aio_tq if aio_tq is not None else sync_tq

    async def enqueue(index: int, sent: float) -> Any:
        result = enqueuer.enqueue("bench_record", index=index, due=sent)
        return await result if inspect.isawaitable(result) else result

    try:
        for command in atomq_system.worker_commands(scheduling=False):
            processes.start(command, child_env(server.url, atomq_system.env), log_dir / "atomq-start.log")
        time.sleep(4)  # workers up and idle

        async def starts() -> None:
            for index in range(START_JOBS):
                await enqueue(index, time.time())
                await asyncio.sleep(ISOLATED_INTERVAL)

        runner.run(starts())
        deadline = time.monotonic() + 30
        while server.client.llen(STARTS_KEY) < START_JOBS and time.monotonic() < deadline:
            time.sleep(0.05)
        records = [json.loads(raw) for raw in server.client.lrange(STARTS_KEY, 0, -1)]
        out |= latency_summary([started - sent for _, sent, started in records], "enqueue_to_start")
        out["enqueue_to_start_via"] = "atomq.aio" if aio_tq is not None else "atomq (sync)"
        if wait is None:
            out["wait"] = "not available"
            return out
        server.client.delete(STARTS_KEY)

        async def waits() -> list[float]:
            gaps = []
            for index in range(START_JOBS):
                job = await enqueue(index, time.time())
                await call_wait(wait, job, 30)
                returned = time.time()
                raw = server.client.lindex(STARTS_KEY, -1)
                ended = json.loads(raw)[2] if raw else returned
                gaps.append(returned - ended)
                await asyncio.sleep(ISOLATED_INTERVAL)
            return gaps

        try:
            out |= latency_summary(runner.run(waits(), timeout=START_JOBS * 35), "wait_after_end")
            out["wait"] = wait_from
        except Exception as exc:  # the API is new: report how it failed rather than stop
            out["wait"] = f"failed: {type(exc).__name__}: {exc}"[:200]
        return out
    finally:
        runner.close()
        processes.stop()


# -- reporting -----------------------------------------------------------------------------

COLUMNS = [
    ("single_per_s", "enq 1/s", "{:,.0f}"),
    ("ratio", "vs atomq", "{:.2f}"),
    ("bulk_per_s", "enq bulk/s", "{:,.0f}"),
    ("bulk_ratio", "bulk vs atomq", "{:.2f}"),
    ("cmds_per_enqueue", "cmds/enq", "{:.1f}"),
    ("rt_per_enqueue", "RT/enq", "{:.2f}"),
    ("cmds_per_bulk_enqueue", "cmds/bulk enq", "{:.2f}"),
    ("isolated_p50_ms", "isol p50 ms", "{:.3f}"),
    ("isolated_p99_ms", "isol p99 ms", "{:.3f}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems", default=DEFAULT_SYSTEMS, help="comma-separated, from: " + ", ".join(SYSTEMS)
    )
    parser.add_argument("--calls", type=int, default=5_000, help="enqueues for the single and bulk rates")
    parser.add_argument("--isolated", type=int, default=500, help="isolated calls, one every 20 ms")
    parser.add_argument("--coroutines", type=int, default=100, help="concurrent atomq.aio enqueuers")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="results file (default bench/results/)")
    args = parser.parse_args()
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    server = Server()
    log_dir = Path(tempfile.mkdtemp(prefix="atomq-bench-enqueue-"))
    systems: dict[str, System] = {}
    extras: dict[str, Any] = {}
    try:
        systems = {name: SYSTEMS[name](server.url) for name in names}
        # Every peer's library is imported: keep their objects out of the collector's way, so
        # enqueue timings measure the library called, not the size of this harness's heap.
        gc.collect()
        gc.freeze()
        per_run: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        extra_runs: list[dict[str, Any]] = []
        for repeat in range(args.repeat):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                print(f"run {repeat + 1}/{args.repeat}: {name}...", file=sys.stderr, flush=True)
                per_run[name].append(measure_system(systems[name], server, args.calls, args.isolated))
            if "atomq" in systems:
                extra = measure_atomq_extras(systems["atomq"], server, args, log_dir)
                extra_runs.append(extra)
        results = {name: median_of(runs) for name, runs in per_run.items()}
        extras = median_of(extra_runs) if extra_runs else {}
        base = results.get("atomq", {})
        for row in results.values():
            for key, ratio in (("single_per_s", "ratio"), ("bulk_per_s", "bulk_ratio")):
                value, ref = row.get(key), base.get(key)
                row[ratio] = value / ref if isinstance(value, float) and isinstance(ref, float) else None
        if isinstance(extras.get("aio_concurrent_per_s"), float) and base.get("single_per_s"):
            extras["aio_ratio_to_sync_single"] = extras["aio_concurrent_per_s"] / base["single_per_s"]
        print(
            f"\nenqueue from one process: {args.calls:,} calls; isolated: {args.isolated} calls, one per 20 ms"
        )
        print_table(results, COLUMNS)
        apis = ", ".join(f"{name}: {row.get('bulk_api')}" for name, row in results.items())
        print(f"bulk APIs: {apis}")
        if extras:
            print_extras(extras, args)
        goals = issue_targets(results, extras)
        print_targets(goals)
        target = write_json(
            "enqueue",
            {
                "args": vars(args) | {"json": str(args.json)},
                "medians": results,
                "atomq": extras,
                "targets": goals,
                "runs": per_run,
            },
            args.json,
        )
        print(f"\nmedians of {args.repeat} run(s); JSON: {target}")
    finally:
        for system in systems.values():
            system.close()
        server.stop()
    return 0


def measure_atomq_extras(
    atomq: System, server: Server, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    assert isinstance(atomq, Atomq)
    aio_tq = aio_task_queue()
    extra: dict[str, Any] = {}
    if aio_tq is None:
        extra["aio"] = "not available"
    else:
        extra["aio"] = "atomq.aio"
        extra |= measure_aio_concurrent(aio_tq, server, args.calls, args.coroutines)
    extra |= measure_start_and_wait(atomq, aio_tq, server, log_dir)
    return extra


def print_extras(extras: dict[str, Any], args: argparse.Namespace) -> None:
    print("\natomq extras")
    if extras.get("aio") == "atomq.aio":
        print(
            f"  atomq.aio, {args.coroutines} concurrent coroutines: {extras['aio_concurrent_per_s']:,.0f} jobs/s "
            f"({extras.get('aio_ratio_to_sync_single', 0):.2f}x atomq's sync single rate)"
        )
    else:
        print("  atomq.aio: not available")
    if "enqueue_to_start_p99_ms" in extras:
        print(
            f"  enqueue-to-start, idle workers ({extras['enqueue_to_start_via']}): "
            f"p50 {extras['enqueue_to_start_p50_ms']:.1f} ms, p99 {extras['enqueue_to_start_p99_ms']:.1f} ms, "
            f"max {extras['enqueue_to_start_max_ms']:.1f} ms"
        )
    if "wait_after_end_p99_ms" in extras:
        print(
            f"  wait() return after job end ({extras['wait']}): p50 {extras['wait_after_end_p50_ms']:.1f} ms, "
            f"p99 {extras['wait_after_end_p99_ms']:.1f} ms"
        )
    else:
        print(f"  task_queue.wait: {extras.get('wait', 'not available')}")


#: Peers whose single enqueue atomq's must match (issue 13).
SINGLE_PEERS = ("huey", "dramatiq", "rq")


def issue_targets(results: dict[str, dict[str, Any]], extras: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's figures, each as measured in this run against its target."""
    goals: list[dict[str, Any]] = []
    atomq = results.get("atomq", {})
    peers = {name: results[name]["single_per_s"] for name in SINGLE_PEERS if name in results}
    if peers and isinstance(atomq.get("single_per_s"), float):
        fastest = max(peers, key=lambda name: peers[name])
        goals.append(
            {
                "figure": f"single enqueue vs the fastest of {', '.join(peers)} ({fastest})",
                "value": atomq["single_per_s"] / peers[fastest],
                "target": ">= 1.0",
                "met": atomq["single_per_s"] >= peers[fastest],
            }
        )
    rq_bulk = results.get("rq", {}).get("bulk_per_s")
    if isinstance(rq_bulk, float) and isinstance(atomq.get("bulk_per_s"), float):
        ratio = atomq["bulk_per_s"] / rq_bulk
        goals.append(
            {
                "figure": "enqueue_many vs RQ Queue.enqueue_many",
                "value": ratio,
                "target": ">= 2.0",
                "met": ratio >= 2,
            }
        )
    if isinstance(extras.get("aio_ratio_to_sync_single"), float):
        ratio = extras["aio_ratio_to_sync_single"]
        goals.append(
            {
                "figure": "atomq.aio, 100 coroutines, vs sync single",
                "value": ratio,
                "target": ">= 3.0",
                "met": ratio >= 3,
            }
        )
    for key, label in (
        ("enqueue_to_start_p99_ms", "enqueue-to-start p99 (ms)"),
        ("wait_after_end_p99_ms", "wait() after the end p99 (ms)"),
    ):
        if isinstance(extras.get(key), float):
            goals.append({"figure": label, "value": extras[key], "target": "<= 5", "met": extras[key] <= 5})
    return goals


def print_targets(goals: list[dict[str, Any]]) -> None:
    if not goals:
        return
    print("\nissue 13 targets, this run")
    for goal in goals:
        mark = "met" if goal["met"] else "NOT met"
        print(f"  {goal['figure']}: {goal['value']:.2f} (target {goal['target']}): {mark}")


if __name__ == "__main__":
    raise SystemExit(main())
