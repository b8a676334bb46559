"""The ledger itself: writes from several processes all land, also from a child forked in the
middle of its parent's write, and duplicates are reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter

import pytest

from reliability.ledger import Ledger, record

#: Children forked while their parent records, and how long they all get to record and exit.
CHILDREN = 20
CHILDREN_SECONDS = 10.0


def test_ledger_counts_writes_from_concurrent_processes(ledger: Ledger) -> None:
    script = "import sys; from reliability.ledger import record\nfor i in range(200): record(f'k{i}')"
    children = [subprocess.Popen([sys.executable, "-c", script], env={**ledger.env()}) for _ in range(3)]
    for child in children:
        assert child.wait(timeout=60) == 0
    expected = [f"k{i}" for i in range(200)]
    assert ledger.missing(expected) == []
    assert ledger.duplicates() == dict.fromkeys(expected, 3)
    assert ledger.missing(["never"]) == ["never"]


# Python 3.12+ warns of a fork() while other threads run: that is the case under test.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_child_forked_while_its_parent_records_can_record(ledger: Ledger) -> None:
    """A worker runs quick jobs (which record) on one thread while another forks a job that asks
    for isolation (which records first thing), so a child may be forked in the middle of its
    parent's record; its own record must still land, at once. With the SQLite ledger, most such
    children inherited the library's per-process lock state and mutexes as the parent's thread
    held them: they waited 30 s and failed with "database is locked" (the flake of scenario 6),
    hung for good on a mutex, or recorded a row the parent then deleted with the WAL."""
    path = str(ledger.path)
    stop = threading.Event()

    def parent_records() -> None:
        n = 0
        while not stop.is_set():
            record(f"parent-{n}", path)
            n += 1

    thread = threading.Thread(target=parent_records, daemon=True)
    thread.start()
    children = []
    try:
        for n in range(CHILDREN):
            time.sleep(0.005)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit status
                code = 1
                try:
                    record(f"child-{n}", path)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
            children.append(pid)
    finally:
        stop.set()
        thread.join(timeout=30)

    exits = _exit_codes(children, CHILDREN_SECONDS)
    # None: still running when given up on (killed); 1: raised (its traceback is on stderr)
    assert Counter(exits.values()) == {0: CHILDREN}
    assert ledger.missing([f"child-{n}" for n in range(CHILDREN)]) == []


def _exit_codes(pids: list[int], seconds: float) -> dict[int, int | None]:
    """Each child's exit code; None for one still running after ``seconds`` (it is killed)."""
    deadline = time.monotonic() + seconds
    codes: dict[int, int | None] = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes and (ended := os.waitpid(pid, os.WNOHANG))[0]:
                codes[pid] = os.waitstatus_to_exitcode(ended[1])
        time.sleep(0.01)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[pid] = None
    return {pid: codes[pid] for pid in pids}
