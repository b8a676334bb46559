"""``atomq backup`` / ``atomq restore``: a real Redis and database backed up, then restored into a
new redis-server process and a new database, where every job and every row is found again."""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy

from atomq.cli import exits
from atomq.core.settings import load_settings
from atomq.engine.task_queue import TaskQueue
from atomq.ops import monitor
from testkit.support import PostgresDatabase, RedisServer, cli_env, run_cli, wait_for

ROWS = [(i, f"note {i} \N{SNOWMAN}") for i in range(1, 26)]


@pytest.fixture(autouse=True)
def fast_snapshots(connection):
    """Redis waits repl-diskless-sync-delay (5 s) for more replicas before streaming a snapshot;
    production can afford that, a test suite need not."""
    connection.config_set("repl-diskless-sync-delay", 0)


def url_of(database) -> str:
    return database.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def probe_table(database):
    """A table with rows, standing in for the domain tables (posts, workflow runs)."""
    with database.engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS backup_probe"))
        connection.execute(sqlalchemy.text("CREATE TABLE backup_probe (id integer PRIMARY KEY, note text)"))
        connection.execute(
            sqlalchemy.text("INSERT INTO backup_probe (id, note) VALUES (:id, :note)"),
            [{"id": i, "note": n} for i, n in ROWS],
        )
    yield "backup_probe"
    with database.engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE IF EXISTS backup_probe"))


@pytest.fixture
def target_database(database, tmp_path):
    """An empty database of the same kind as ``database``, to restore into."""
    if database.dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored' / 'atomq.db'}"
        return
    fresh = PostgresDatabase().create()
    yield fresh.url
    fresh.drop()


@pytest.fixture
def target_redis(tmp_path):
    server = RedisServer(tmp_path / "redis-restored", extra=["--appendonly", "yes"]).start()
    yield server
    server.stop()


def jobs_of_every_kind(tq: TaskQueue, burst) -> dict[str, list[str]]:
    queued = [tq.enqueue("add", a=i, b=1, queue="social_media").id for i in range(3)]
    scheduled = [tq.enqueue_in(timedelta(hours=1), "add", a=1, b=2).id]
    failed = [tq.enqueue("fail", message="kept for the post-mortem").id]
    finished = [tq.enqueue("add", a=20, b=22).id]
    burst("default")  # runs the failing and the finishing job; social_media stays queued
    return {"queued": queued, "scheduled": scheduled, "failed": failed, "finished": finished}


def test_backup_then_restore_into_new_instances_finds_every_job_and_row(
    tq, burst, env, procs, database, probe_table, target_database, target_redis, tmp_path
):
    jobs = jobs_of_every_kind(tq, burst)
    # One job is running when the backup is taken.
    started = tmp_path / "started"
    running = tq.enqueue("sleep_for", seconds=60, started_file=str(started), queue="workflows").id
    worker = procs.worker("workflows", "--no-scheduler")
    wait_for(lambda: started.exists() and started.read_text(), 30, what="the long job to start")
    due_score = tq.connection.zscore("rq:scheduled:default", jobs["scheduled"][0])
    source_env = dict(env, DATABASE_URL=url_of(database), ATOMQ_BACKUP_DIR=str(tmp_path / "backups"))

    done = run_cli(source_env, "backup")
    assert done.returncode == 0, done.stderr
    assert "backup written to" in done.stdout
    [folder] = list((tmp_path / "backups").glob("atomq-backup-*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["redis"]["queues"]["social_media"]["queued"] == 3
    assert manifest["redis"]["queues"]["default"]["scheduled"] == 1
    assert manifest["redis"]["queues"]["default"]["failed"] == 1
    assert manifest["database"]["tables"][probe_table] == len(ROWS)
    assert manifest["database"]["dialect"] == database.dialect
    assert {p.name for p in folder.iterdir()} == {"manifest.json", "redis.rdb", manifest["database"]["file"]}

    # The source may carry on changing: the backup is what it was.
    procs.stop(worker, signal.SIGKILL)
    tq.connection.flushall()

    target_env = cli_env(target_redis.url, tmp_path / "var2", DATABASE_URL=target_database)
    restored = run_cli(target_env, "restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert "jobs queued 3, scheduled 1, failed 2" in restored.stdout
    assert "1 job(s) were running at backup time: 0 retried, 1 failed" in restored.stdout

    client = redis.Redis.from_url(target_redis.url)
    new_tq = TaskQueue(settings=load_settings(redis_url=target_redis.url), connection=client)
    for status, ids in jobs.items():
        for job_id in ids:
            assert new_tq.get_job_status(job_id)["status"] == status, job_id
    assert client.zscore("rq:scheduled:default", jobs["scheduled"][0]) == due_score
    detail = monitor.failure_detail(client, jobs["failed"][0])
    assert "ValueError: kept for the post-mortem" in detail["traceback"]
    assert new_tq.get_job_status(jobs["finished"][0])["result"] == 42
    # The job that was running belongs to a worker that is gone: failed, saying why.
    assert new_tq.get_job_status(running)["status"] == "failed"
    assert "backup taken while it ran" in monitor.failure_detail(client, running)["traceback"]
    assert monitor.list_workers(client) == []

    engine = sqlalchemy.create_engine(target_database.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT id, note FROM backup_probe ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == ROWS

    # The restored Redis works: a worker runs the jobs that were waiting.
    ran = run_cli(target_env, "worker", "--burst", "social_media")
    assert ran.returncode == 0, ran.stderr
    assert [new_tq.get_job_status(i)["result"] for i in jobs["queued"]] == [1, 2, 3]

    # Restoring over data that is there already is refused, in one line, with nothing touched.
    again = run_cli(target_env, "restore", str(folder))
    assert again.returncode == exits.CONFLICT
    assert again.stderr.count("\n") == 1 and "restore into a new one" in again.stderr
    client.close()


def test_backups_are_pruned_and_named_uniquely(env, tq, tmp_path):
    tq.enqueue("add", a=1, b=2)
    source_env = dict(env, ATOMQ_BACKUP_DIR=str(tmp_path / "b"))
    for _ in range(3):
        done = run_cli(source_env, "backup", "--skip-database", "--keep", "2")
        assert done.returncode == 0, done.stderr
    kept = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(kept) == 2 and all(name.startswith("atomq-backup-") for name in kept)
    listed = run_cli(source_env, "backups", "--json")
    assert [Path(b["path"]).name for b in json.loads(listed.stdout)] == kept


def test_a_damaged_backup_is_refused(env, tq, tmp_path, target_redis):
    tq.enqueue("add", a=1, b=2)
    source_env = dict(env, ATOMQ_BACKUP_DIR=str(tmp_path / "b"))
    assert run_cli(source_env, "backup", "--skip-database").returncode == 0
    [folder] = list((tmp_path / "b").iterdir())
    rdb = folder / "redis.rdb"
    data = bytearray(rdb.read_bytes())
    data[-20] ^= 0xFF
    rdb.write_bytes(bytes(data))
    target_env = cli_env(target_redis.url, tmp_path / "var2")
    refused = run_cli(target_env, "restore", str(folder))
    assert refused.returncode == exits.USAGE
    assert "does not match its checksum" in refused.stderr
    assert target_redis.client().dbsize() == 0
    missing = run_cli(target_env, "restore", str(tmp_path / "nope"))
    assert missing.returncode == exits.NOT_FOUND and "no backup folder" in missing.stderr


def test_backup_says_clearly_when_redis_is_unreachable(tmp_path):
    from testkit.support import free_port

    env = cli_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "var")
    done = run_cli(env, "backup", "--skip-database", "--to", str(tmp_path / "b"))
    assert done.returncode == exits.UNAVAILABLE
    assert done.stderr.startswith("error: could not take a snapshot of redis://127.0.0.1:")
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / "b").iterdir())  # no half-written backup left behind


def test_jobs_left_running_without_their_worker_are_settled(tq, procs, tmp_path):
    """A backup restored after its workers' heartbeats expired still settles the running jobs."""
    from atomq.engine.tasks import Retry
    from atomq.ops.settle import RESTORED_REASON, settle_restored

    started = tmp_path / "started"
    once = tq.enqueue("sleep_for", seconds=60, started_file=str(started)).id
    worker = procs.worker("--no-scheduler")
    wait_for(lambda: started.exists() and started.read_text(), 30, what="the job to start")
    procs.stop(worker, signal.SIGKILL)
    # What the snapshot looks like once the worker's registration has expired.
    for key in tq.connection.keys("rq:worker:*"):
        tq.connection.delete(key)
    tq.connection.delete("atomq:workers", "rq:workers")
    again = tq.enqueue("add", a=1, b=1, retry=Retry(max=2, delay=0, jitter=0))
    tq.connection.hset(f"rq:job:{again.id}", "status", "started")
    tq.connection.lrem("rq:queue:default", 0, again.id)
    tq.connection.zadd("rq:wip:default", {f"{again.id}:x": 1})

    report = settle_restored(tq.connection, tq.settings.queues)
    assert report.failed == [once] and report.retried == [again.id]
    assert tq.get_job_status(once)["status"] == "failed"
    assert monitor.failure_detail(tq.connection, once)["traceback"] == RESTORED_REASON
    assert tq.get_job_status(again.id)["status"] == "queued"
    assert tq.connection.zcard("rq:wip:default") == 0
