"""Issue 15 in a real headless Chromium: the posts, workflow-run and batch pages, clicked
through with their buttons (publish now, cancel, retry), against a real API process, a real
worker and a SQLite database."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from testkit.browser import BROWSER_MARKS, log_in
from testkit.fixtures import TOKENS
from testkit.support import run_cli

pytestmark = BROWSER_MARKS


def call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKENS['admin']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def burst(env: dict[str, str], tmp_path: Path, *queues: str) -> None:
    worker_env = dict(env, DATABASE_URL=f"sqlite:///{tmp_path / 'atomq.db'}")
    done = run_cli(worker_env, "worker", "--burst", *queues, timeout=90)
    assert done.returncode == 0, done.stderr


def test_posts_pages_filter_page_and_act(browser, api_server, env, tmp_path):
    account = call(api_server, "POST", "/api/v1/accounts", {"platform": "outbox", "handle": "local"})
    later = [
        call(
            api_server,
            "POST",
            "/api/v1/tasks/scheduled-posts",
            {
                "account_id": account["id"],
                "content": f"post {i}",
                "scheduled_for": f"2030-01-{i + 1:02d}T09:00:00Z",
            },
        )
        for i in range(3)
    ]
    page = log_in(browser, api_server)
    page.on("dialog", lambda d: d.accept())
    page.click("nav >> text=Posts")
    page.wait_for_url(f"{api_server}/dashboard/posts")
    assert page.locator("#posts tr[data-post]").count() == 3

    # Filter by state and due range; the newest-due post is first.
    page.select_option("select[name=status]", "scheduled")
    page.fill("input[name=due_after]", "2030-01-02T00:00:00Z")
    page.click("#post-filters button[type=submit]")
    page.wait_for_url("**/dashboard/posts?status=scheduled*")
    rows = page.locator("#posts tr[data-post]")
    assert rows.count() == 2
    assert rows.first.get_attribute("data-post") == later[2]["id"]

    # Publish one now from its page; a worker publishes it; the page shows its history.
    page.click("#post-filters >> text=Clear")
    page.wait_for_url(f"{api_server}/dashboard/posts")
    page.click(f'a[href$="/dashboard/posts/{later[0]["id"]}"]')
    page.click('button[data-action="publish-now"]')
    page.wait_for_url(f"**/dashboard/posts/{later[0]['id']}")
    assert "will be published now" in page.inner_text("main")
    burst(env, tmp_path, "social_media")
    page.reload()
    assert page.locator("h1 .badge.status-published").count() == 1
    history = page.inner_text("#post-events")
    assert "created" in history and "edited" in history and "published" in history
    assert page.inner_text("#platform-id") != "-"
    assert page.locator('button[data-action="cancel"]').count() == 0  # nothing to cancel now

    # Cancel another one.
    page.goto(f"{api_server}/dashboard/posts/{later[1]['id']}")
    page.click('button[data-action="cancel"]')
    page.wait_for_url(f"**/dashboard/posts/{later[1]['id']}")
    assert page.locator("h1 .badge.status-canceled").count() == 1

    # Keyset pages: with 50 a page, 51 posts make a second page.
    for i in range(48):
        call(
            api_server,
            "POST",
            "/api/v1/tasks/scheduled-posts",
            {"account_id": account["id"], "content": f"more {i}", "scheduled_for": "2031-06-01T09:00:00Z"},
        )
    page.goto(f"{api_server}/dashboard/posts")
    assert page.locator("#posts tr[data-post]").count() == 50
    page.click("#next-page")
    assert page.locator("#posts tr[data-post]").count() == 1
    page.fill("input[name=due_after]", "tomorrow")
    page.click("#post-filters button[type=submit]")
    assert page.inner_text("#filter-error").startswith("due_after: ")  # the field, the form kept
    assert page.input_value("input[name=due_after]") == "tomorrow"
    page.screenshot(path=str(tmp_path / "posts.png"), full_page=True)


def test_workflow_run_and_batch_pages(browser, api_server, env, tq, tmp_path):
    run = call(api_server, "POST", "/api/v1/tasks/workflows/diamond/runs", {"input": {"n": 2}})
    batch = tq.enqueue_batch("add", [{"a": i, "b": 1} for i in range(5)])
    burst(env, tmp_path, "workflows", "default")
    page = log_in(browser, api_server)
    page.click("nav >> text=Workflows")
    page.wait_for_url(f"{api_server}/dashboard/workflows")
    page.click(f'a[href$="/dashboard/workflows/{run["id"]}"]')
    page.wait_for_url(f"**/dashboard/workflows/{run['id']}")
    assert page.locator("h1 .badge.status-succeeded").count() == 1
    assert page.locator("#step-graph .step").count() == 4
    assert page.locator("#step-graph .step-column").count() == 3  # A, then B and C, then D
    assert '"sum": 16' in page.inner_text("#steps")
    assert page.locator('button[data-action="retry"]').count() == 0  # only failed runs retry
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    page.click("nav >> text=Batches")
    page.wait_for_url(f"{api_server}/dashboard/batches")
    page.click(f'a[href$="/dashboard/batches/{batch.id}"]')
    page.wait_for_url(f"**/dashboard/batches/{batch.id}")
    assert page.locator("h1 .badge.status-finished").count() == 1
    assert "5/5" in page.inner_text("#batch-facts")
