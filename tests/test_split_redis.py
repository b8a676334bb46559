"""Past one Redis (docs/scaling.md): a queue moved to a Redis of its own, with its own workers,
while the application keeps one task queue object per Redis."""

from __future__ import annotations

import pytest

from atomq.core.settings import load_settings
from atomq.engine.task_queue import TaskQueue
from testkit.support import RedisServer, cli_env, wait_for

pytestmark = pytest.mark.slow


def test_a_queue_on_a_redis_of_its_own_runs_there_and_leaves_the_main_redis_alone(
    tq, procs, connection, tmp_path
):
    second = RedisServer(tmp_path / "redis-social").start()
    try:
        social = TaskQueue(settings=load_settings(redis_url=second.url, task_modules=["tests.jobs"]))
        procs.worker("default", "--no-scheduler")  # the main Redis: every queue but social_media
        social_env = cli_env(second.url, tmp_path / "var-social")
        procs.start("worker", "social_media", env=social_env, name="social-worker")

        post = social.enqueue("add", a=2, b=3, queue="social_media")
        other = tq.enqueue("add", a=1, b=1)
        wait_for(lambda: social.get_job_status(post.id)["status"] == "finished", 30, what="the social job")
        wait_for(lambda: tq.get_job_status(other.id)["status"] == "finished", 30, what="the default job")

        assert social.get_job_status(post.id)["result"] == 5
        assert not connection.exists(f"rq:job:{post.id}"), "the social job touched the main Redis"
        assert not second.client().exists(f"rq:job:{other.id}"), "the main job touched the social Redis"
        assert connection.llen("rq:queue:social_media") == 0
    finally:
        procs.stop_all()
        second.stop()
