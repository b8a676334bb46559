"""How long `atomq backup` and `atomq restore` take with many jobs in Redis.

    .venv/bin/python bench/backup_restore.py [--jobs 100000]

Starts its own redis-servers, fills one with queued, scheduled and failed jobs, then times:
a bare `redis-cli --rdb` (the baseline: the network snapshot alone), `create_backup` (snapshot
+ verification load + counts + the SQLite copy) and `restore_backup` into an empty redis-server.
Prints seconds and the ratios to the baseline from this same run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from atomq.core.settings import load_settings  # noqa: E402
from atomq.engine.task_queue import Call, TaskQueue  # noqa: E402
from atomq.ops.backup import create_backup, restore_backup  # noqa: E402
from testkit.support import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atomq-bench-"))
    source = RedisServer(scratch / "source", extra=["--repl-diskless-sync-delay", "0"]).start()
    target = RedisServer(scratch / "target", extra=["--appendonly", "yes"]).start()
    try:
        settings = load_settings(
            redis_url=source.url, task_modules=["tests.jobs"], data_dir=scratch / "var",
            database_url=f"sqlite:///{scratch / 'atomq.db'}",
        )  # fmt: skip
        client = redis.Redis.from_url(source.url)
        tq = TaskQueue(settings=settings, connection=client)
        started = time.perf_counter()
        batch = 1000
        for first in range(0, args.jobs, batch):
            tq.enqueue_many([Call("add", kwargs={"a": i, "b": 1}, options={"queue": "social_media"})
                             for i in range(first, min(first + batch, args.jobs))])  # fmt: skip
        for _ in range(100):
            tq.enqueue_in(timedelta(hours=1), "add", a=1, b=1)
        print(f"filled {args.jobs} queued jobs in {time.perf_counter() - started:.1f} s; "
              f"{client.dbsize()} keys, {client.info('memory')['used_memory_human']}")  # fmt: skip
        import sqlite3

        with sqlite3.connect(scratch / "atomq.db") as db:
            db.execute("CREATE TABLE rows (id integer primary key, note text)")
            db.executemany("INSERT INTO rows VALUES (?, ?)", [(i, "x" * 100) for i in range(100_000)])

        def timed(label: str, func) -> float:
            t0 = time.perf_counter()
            func()
            took = time.perf_counter() - t0
            print(f"{label:<44} {took:7.2f} s")
            return took

        cli = shutil.which("redis-cli")
        baseline = timed(
            "redis-cli --rdb (baseline)",
            lambda: subprocess.run(
                [cli, "-p", str(source.port), "--rdb", str(scratch / "plain.rdb")],
                capture_output=True,
                check=True,
            ),
        )
        result = {}
        backup = timed("atomq backup (verify on)", lambda: result.update(b=create_backup(settings)))
        quick = timed("atomq backup --no-verify", lambda: create_backup(settings, verify=False))
        restore_settings = settings.model_copy(
            update={"redis_url": target.url, "database_url": f"sqlite:///{scratch / 'restored.db'}"}
        )
        restore = timed(
            "atomq restore into an empty redis-server",
            lambda: restore_backup(restore_settings, result["b"].path),
        )
        restored = redis.Redis.from_url(target.url).dbsize()
        print(f"restored keys: {restored}")
        print(
            f"ratios to the baseline: backup {backup / baseline:.1f}x, "
            f"backup --no-verify {quick / baseline:.1f}x, restore {restore / baseline:.1f}x"
        )
    finally:
        source.stop()
        target.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
