"""``atomq info --watch`` and ``atomq batch status --watch`` (issue 15): live views that end
cleanly on Ctrl-C. Piped output gets a fresh table per refresh; a terminal gets rich's live view."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from atomq.ops import admin
from testkit.support import wait_for


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(60)
def test_info_watch_refreshes_until_ctrl_c_and_exits_0(env, connection, tq):
    tq.enqueue("add", a=1, b=2)
    admin.pause_queue(connection, "social_media")
    process = subprocess.Popen(
        [sys.executable, "-m", "atomq", "info", "--watch", "--interval", "0.3"],
        env=env | {"PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps every thread's stack
        # A shell running the suite in the background (`... &`) starts it with Ctrl-C ignored,
        # and Python keeps an ignored SIGINT ignored: give the command a terminal's default.
        preexec_fn=_interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: lines.count("Queues\n") >= 2, 30, what="two refreshes"
        )  # started (slowly, if loaded)
        tq.enqueue("add", a=3, b=4)  # a later refresh shows it
        seen = lines.count("Queues\n")
        wait_for(lambda: lines.count("Queues\n") >= seen + 2, 30, what="two more refreshes")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # where it hangs, on stderr
            process.wait(10)
        reader.join(5)
    err = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert process.returncode == 0, err
    out = "".join(lines)
    tables = out.split("Queues\n")
    assert len(tables) >= 4, out  # several refreshes
    first_default = next(line for line in tables[1].splitlines() if line.startswith("default"))
    # The last table may have been cut by the Ctrl-C; the one before it is whole, and was drawn
    # after the second enqueue (two refreshes started after it).
    last_whole = tables[-2]
    last_default = next(line for line in last_whole.splitlines() if line.startswith("default"))
    assert first_default.split()[2] == "1" and last_default.split()[2] == "2"
    assert "yes, " in last_whole  # social_media is paused


@pytest.mark.timeout(60)
def test_batch_status_watch_follows_a_batch_to_its_end(env, tq, procs):
    batch = tq.enqueue_batch("sleep_for", [{"seconds": 0.2} for _ in range(6)])
    procs.worker("--no-scheduler")
    done = subprocess.run(
        [sys.executable, "-m", "atomq", "batch", "status", batch.id, "-w", "--interval", "0.2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert f"batch {batch.id}: finished" in done.stdout and "6/6 done" in done.stdout
