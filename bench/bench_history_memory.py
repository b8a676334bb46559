"""Redis memory of the per-minute history (issue 15): 24 h of 10 busy queues.

Fills every minute of the retention for every queue through the real writers (the workers'
:class:`~atomq.engine.history.HistoryTally` and the scheduler's depth sampler), in a private
redis-server, then reads ``INFO memory``. ``--fill typical`` uses the fields a busy queue
touches in a minute (every outcome, four duration buckets, three lateness buckets, the
sums, the depth samples); ``--fill worst`` touches every bucket of both histograms.
Also times reading a chart (every queue summed) for each range. The issue's bound: 5 MB.

    .venv/bin/python bench/bench_history_memory.py                 # typical and worst
    .venv/bin/python bench/bench_history_memory.py --queues 10 --hours 24 --fill typical
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atomq.engine import history  # noqa: E402 - after the path tweak
from bench.harness import Server  # noqa: E402

#: Durations and lateness values (seconds) a minute's jobs spread over, per fill.
FILLS: dict[str, tuple[list[float], list[float]]] = {
    "typical": ([0.004, 0.03, 0.2, 1.5], [0.005, 0.04, 0.3]),
    "worst": (
        [b * 0.9 for b in history.BOUNDS] + [7200.0],
        [b * 0.9 for b in history.BOUNDS] + [7200.0],
    ),
}


def fill(server: Server, queues: list[str], hours: int, kind: str) -> int:
    """Write ``hours`` of minutes for ``queues``; returns the hashes written."""
    client = server.client
    durations, lateness = FILLS[kind]
    now = time.time()
    minutes = hours * 60
    for queue in queues:
        client.sadd("rq:queues", f"rq:queue:{queue}")
    with client.pipeline(transaction=False) as pipe:
        for back in range(minutes):
            stamp = now - back * 60
            tally = history.HistoryTally()
            for queue in queues:
                for outcome in history.OUTCOME_FIELDS:
                    for index, duration in enumerate(durations):
                        late = lateness[index % len(lateness)] if outcome == "finished" else None
                        tally.add(
                            queue=queue,
                            outcome=outcome,
                            duration=duration,
                            late=late,
                        )
                for late in lateness:  # every lateness bucket of the fill is used
                    tally.add(
                        queue=queue,
                        outcome="finished",
                        duration=None,
                        late=late,
                    )
            tally.write(pipe, now=stamp)
            if back % 100 == 0:
                pipe.execute()
        pipe.execute()
    for back in range(minutes):
        history.sample_depth(client, queues, retention=hours * 3600, now=now - back * 60)
    return minutes * len(queues)


def measure(queues: int, hours: int, kind: str) -> dict[str, float | int | str]:
    server = Server()
    try:
        client = server.client
        client.flushall()
        before = int(client.info("memory")["used_memory"])
        names = [f"queue_{i}" for i in range(queues)]
        hashes = fill(server, names, hours, kind)
        after = int(client.info("memory")["used_memory"])
        sample = client.hgetall(history.minute_key(names[0], int(time.time() // 60)))
        encoding = client.object("encoding", history.minute_key(names[0], int(time.time() // 60)))
        reads = {}
        for name in history.RANGES:
            started = time.perf_counter()
            history.read(
                client,
                names,
                range_name=name,
            )
            reads[f"read_{name}_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return {
            "fill": kind,
            "queues": queues,
            "hours": hours,
            "hashes": hashes,
            "fields_per_hash": len(sample),
            "encoding": encoding.decode() if isinstance(encoding, bytes) else str(encoding),
            "bytes": after - before,
            "mb": round((after - before) / 1e6, 2),
            "bytes_per_queue_minute": round((after - before) / hashes),
            **reads,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=10)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--fill", choices=[*FILLS, "both"], default="both")
    args = parser.parse_args()
    kinds = list(FILLS) if args.fill == "both" else [args.fill]
    results = [measure(args.queues, args.hours, kind) for kind in kinds]
    for row in results:
        print(
            f"{row['fill']:>8}: {row['hashes']} hashes of {row['fields_per_hash']} fields ({row['encoding']}): "
            f"{row['mb']} MB, {row['bytes_per_queue_minute']} B per queue-minute; chart reads "
            + ", ".join(f"{k[5:-3]} {v} ms" for k, v in row.items() if k.startswith("read_"))
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (out / f"history-memory-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
