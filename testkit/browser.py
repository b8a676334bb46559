"""Driving the dashboard in Debian's headless Chromium with Playwright: the browser, and a real
API server process with a SQLite database (shared by the browser tests)."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atomq.api.auth import entry_for
from testkit.fixtures import TOKENS
from testkit.support import Processes, free_port, wait_for

CHROMIUM = os.environ.get("ATOMQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Marks for a module of browser tests: slow, and skipped where Chromium is missing.
BROWSER_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (scripts/bootstrap)"
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def api_server(env: dict[str, str], procs: Processes, tmp_path: Path) -> str:
    port = free_port()
    server_env = dict(
        env,
        ATOMQ_API_TOKENS=",".join(entry_for(f"test-{s}", s, t) for s, t in TOKENS.items()),
        DATABASE_URL=f"sqlite:///{tmp_path / 'atomq.db'}",
        ATOMQ_API_PORT=str(port),
        ATOMQ_DASHBOARD_REFRESH="1",
    )
    procs.start("db", "upgrade", env=server_env, name="migrate").wait(60)
    server = procs.start("serve", env=server_env, name="api")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, procs.log(server)
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(up, 30, what="the API to answer")
    return base


def log_in(browser: Any, base: str, scope: str = "admin") -> Any:
    """A new page logged in to the dashboard with the test token of ``scope``."""
    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{base}/dashboard/login")
    page.fill("#token", TOKENS[scope])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    return page
