"""Scenario 4: a Sentinel failover under load. A primary and a replica on loopback ports,
Sentinel watching them, atomq configured with ATOMQ_REDIS_SENTINELS only (no Redis address).

Promises checked: workers and the API follow the new primary by themselves (no crash, no
restart), jobs flow afterwards, and every job acknowledged once the old primary was demoted
runs. What replication lost is counted and reported, not required to be zero: Redis
replicates asynchronously, and a client still connected to the old primary can have writes
acknowledged there until Sentinel demotes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atomq.core.connection import connect
from atomq.core.settings import Settings, load_settings
from atomq.engine.task_queue import TaskQueue
from reliability.ledger import Ledger
from reliability.redis_faults import MASTER_NAME, SentinelCluster
from reliability.redis_support import (
    TASK_MODULES,
    ApiServer,
    enqueuer,
    ledger_times,
    process_env,
    sqlite_database,
    wait_all_recorded,
)
from reliability.report import report
from reliability.tasks_redis import RECORD
from testkit.sizes import size
from testkit.support import Processes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(size(120, 900)))]

RATE = size(200, 500)  # enqueues a second through Sentinel
BEFORE = size(1.5, 20.0)  # seconds of load before the failover
AFTER = size(2.0, 20.0)  # seconds of load after it
SENTINELS = size(1, 3)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "cluster", sentinels=int(SENTINELS))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.parametrize("trigger", ["sentinel-failover", "kill-primary"])
def test_sentinel_failover(
    trigger: str, cluster: SentinelCluster, tmp_path: Path, ledger: Ledger, procs: Processes
) -> None:
    sqlite_database(tmp_path / "atomq.db").dispose()
    sentinel_env = {"ATOMQ_REDIS_SENTINELS": cluster.addresses, "ATOMQ_REDIS_SENTINEL_MASTER": MASTER_NAME}
    env = process_env(None, tmp_path / "var", ledger, f"sqlite:///{tmp_path / 'atomq.db'}", **sentinel_env)
    settings = load_settings(
        redis_sentinels=cluster.addresses.split(","),
        redis_sentinel_master=MASTER_NAME,
        task_modules=[TASK_MODULES],
        data_dir=tmp_path / "var",
    )
    client = connect(settings, socket_timeout=2)
    tq = TaskQueue(settings=settings, connection=client)
    supervisor = procs.worker("--count", "2", env=env)
    api = ApiServer(procs, env)
    try:
        assert api.enqueue("warm-up").status_code == 201
        wait_for(lambda: not ledger.missing(["warm-up"]), 30, 0.1, "the workers to start")
        old_port = cluster.master_port()

        jobs = enqueuer(tq, RATE, "job").start()
        try:
            time.sleep(BEFORE)
            started_at = time.time()
            if trigger == "kill-primary":
                # The dead primary stays dead: restarted without its data it could be elected
                # back by a sentinel that misjudges the loaded new primary, and wipe it.
                _, failover_seconds = cluster.kill_primary()
            else:
                failover_seconds = cluster.failover()
            promoted = time.time()
            new_port = cluster.master_port()
            try:
                api_follows, workers_follow = _followers(api, ledger, settings, new_port, promoted)
            except AssertionError as exc:  # say why: the workers' own account of the failover
                tail = "\n".join(Processes.log(supervisor).splitlines()[-40:])
                raise AssertionError(f"{exc}\n--- workers' log (last 40 lines) ---\n{tail}") from None
            # Writes are safe once the old primary no longer accepts them (demoted, or dead).
            demoted = (
                promoted
                if trigger == "kill-primary"
                else wait_for(
                    lambda: _is_replica(old_port) and time.time(), 60, 0.1, "the old primary's demotion"
                )
            )
            time.sleep(AFTER)
        finally:
            jobs.stop()

        # Stop commands travel by pub/sub: after a failover the listeners must have moved too.
        stop_status = _stop_running_job(api) if trigger == "sentinel-failover" else "not tried"
        acked = list(jobs.acked)
        settled = [key for key in acked if jobs.acked[key] >= demoted]
        missing = wait_all_recorded(ledger, settled, size(90, 300))
        # Let stragglers of the failover window run before counting losses.
        unsettled = [key for key in acked if jobs.acked[key] < demoted]
        lost = wait_all_recorded(ledger, unsettled, 3)
        crashes = Processes.log(supervisor).count(" died (exit code")
        api_alive = api.process.poll() is None
        on_new = redis.Redis(port=new_port).info("replication")["role"]
    finally:
        api.close()
        client.close()

    report(
        f"4_sentinel_failover_{trigger}",
        sentinels=int(SENTINELS),
        rate_target=RATE,
        acked=len(acked),
        refused_during_failover=len(jobs.refused),
        acked_before_demotion=len(unsettled),
        lost_acked_writes=len(lost),
        lost_window_seconds=_window(jobs.acked, lost),
        acked_after_demotion=len(settled),
        lost_after_demotion=len(missing),
        duplicates=len(ledger.duplicates()),
        seconds_to_promote=round(failover_seconds, 2),
        seconds_to_demote_old_primary=round(demoted - started_at, 2),
        api_seconds_to_follow=round(api_follows, 2),
        workers_seconds_to_follow=round(workers_follow, 2),
        worker_processes_crashed=crashes,
        stop_command_after_failover=stop_status,
    )
    assert new_port != old_port and on_new == "master"
    assert len(settled) > 0, "no enqueue was acknowledged after the failover"
    assert missing == [], missing[:10]
    assert supervisor.poll() is None and crashes == 0, Processes.log(supervisor)
    assert api_alive, Processes.log(api.process)
    # Stop commands (pub/sub) reach workers through the new primary too.
    assert stop_status == ("stopped" if trigger == "sentinel-failover" else "not tried")


def _followers(
    api: ApiServer, ledger: Ledger, settings: Settings, new_port: int, promoted: float
) -> tuple[float, float]:
    """Seconds after the promotion until the API's writes land on the new primary, and until
    workers run a job queued there."""
    primary = redis.Redis(port=new_port, socket_timeout=2)
    direct = TaskQueue(settings=settings, connection=primary)
    try:
        direct.enqueue(RECORD, "worker-probe", at_front=True)  # ahead of the backlog
        probes = iter(range(10_000))

        def api_lands() -> float | None:
            response = api.enqueue(f"api-probe-{next(probes)}")
            if response.status_code == 201 and primary.exists(f"rq:job:{response.json()['job_id']}"):
                return time.time()
            return None

        api_at: float = wait_for(api_lands, 60, 0.1, "the API to write to the new primary")
        wait_for(lambda: not ledger.missing(["worker-probe"]), 60, 0.1, "workers to follow the new primary")
        return api_at - promoted, ledger_times(ledger)["worker-probe"] - promoted
    finally:
        primary.close()


def _stop_running_job(api: ApiServer) -> str:
    """Start a long job, stop it through the API; the status it ends with."""
    job_id = api.enqueue("long-job", seconds=60, at_front=True).json()["job_id"]
    wait_for(
        lambda: api.http.get(f"/api/v1/tasks/jobs/{job_id}").json()["status"] == "started",
        30,
        0.1,
        "long job",
    )
    api.http.delete(f"/api/v1/tasks/jobs/{job_id}", params={"wait": 10})
    return str(api.http.get(f"/api/v1/tasks/jobs/{job_id}").json()["status"])


def _is_replica(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5)
    try:
        return client.info("replication")["role"] == "slave"
    except redis.RedisError:
        return False
    finally:
        client.close()


def _window(acked: dict[str, float], lost: list[str]) -> float:
    """Seconds between the first and the last lost acknowledgement (0 when none was lost)."""
    times = [acked[key] for key in lost]
    return round(max(times) - min(times), 3) if times else 0.0
