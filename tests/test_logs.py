"""Logs of real processes: the guide's `grep ERROR` and `grep post_123` recipes on a log file."""

from __future__ import annotations

import json
import subprocess

import httpx

from testkit.support import free_port, wait_for


def grep(pattern, path):
    result = subprocess.run(["grep", pattern, str(path)], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()


def test_grep_error_and_grep_post_id_on_a_worker_log_file(tq, burst, tmp_path):
    ok = tq.enqueue("publish_post", post_id="post_123", user_id="user_456")
    bad = tq.enqueue("publish_post", post_id="post_999", user_id="user_456", fail=True)
    other = tq.enqueue("add", a=1, b=2)
    log = tmp_path / "logs" / "rq-worker.log"
    burst("--log-file", str(log))

    errors = grep("ERROR", log)
    assert len(errors) >= 2, log.read_text()  # the task's own error line and the worker's
    for line in errors:
        for field in (f"job_id={bad.id}", "task=publish_post", "queue=social_media", "post_id=post_999"):
            assert field in line, (field, line)
        assert "platform=mastodon" in line, line  # bound by the task itself
    assert any("Failed to publish post: platform said no" in line for line in errors)
    assert any("RuntimeError: platform said no" in line or "exception raised" in line for line in errors)

    post_lines = grep("post_123", log)
    assert any("publishing post" in line for line in post_lines)
    assert any("Job OK" in line or "Successfully completed" in line for line in post_lines)
    for line in post_lines:
        assert ok.id in line, line
    structured = [line for line in post_lines if "post_id=post_123" in line]
    assert len(structured) >= 2
    for line in structured:
        assert f"job_id={ok.id}" in line and "task=publish_post" in line and "queue=social_media" in line

    other_lines = grep(other.id, log)
    assert other_lines and all("task=add" in line and "queue=default" in line for line in other_lines)
    assert "kwargs=" not in log.read_text()


def test_json_logs_carry_the_ids_as_fields(tq, burst, env, tmp_path):
    job = tq.enqueue("publish_post", post_id="post_123", user_id="user_456", fail=True)
    log = tmp_path / "worker.json.log"
    burst("--log-file", str(log), "--log-format", "json")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    about_job = [r for r in records if r.get("job_id") == job.id]
    assert len(about_job) >= 3
    for record in about_job:
        assert record["task"] == "publish_post" and record["queue"] == "social_media"
        assert record["post_id"] == "post_123" and record["user_id"] == "user_456"
    assert any(r["level"] == "ERROR" and "platform said no" in r["message"] for r in about_job)


def test_every_long_running_command_takes_log_file(cli, procs, tmp_path):
    for command in (["worker"], ["serve"], ["scheduler", "run"], ["up"]):
        help_text = cli(*command, "--help").stdout
        assert "--log-file" in help_text and "--log-format" in help_text, command

    log = tmp_path / "api.log"
    port = free_port()
    procs.start("serve", "--port", str(port), "--log-file", str(log), name="api")

    def healthy():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, what="the API")
    wait_for(lambda: log.exists() and "GET /health" in log.read_text(), 10, what="the access log line")


def test_text_lines_carry_the_context_quote_what_needs_it_and_drop_rqs_argument_dumps():
    import logging

    from atomq.core.logging import ContextFilter, TextFormatter, log_context

    fmt, keep = TextFormatter(), ContextFilter()

    def line(message: str, **extra: object) -> str:
        record = logging.getLogger("atomq.test").makeRecord(
            "atomq.test", logging.INFO, __file__, 1, message, (), None, extra=extra
        )
        assert keep.filter(record)
        return fmt.format(record)

    with log_context(job_id="j-1", post_id="post_1", note='says "hi"', where="two words", empty=""):
        text = line("published", kwargs={"secret": "x"}, arguments=[1], func="f", post_id="post_2")
    assert text.endswith(
        ' published post_id=post_2 job_id=j-1 note="says \\"hi\\"" where="two words" empty=""'
    ), text
    assert "secret" not in text and "arguments" not in text and "func=" not in text
    assert line("outside").endswith(" outside")  # nothing of the block is left behind
