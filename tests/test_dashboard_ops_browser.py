"""Issue 15 in a real headless Chromium: the charts draw under the dashboard's CSP with no
internet, and an admin pauses and resumes a queue from its page while a worker runs."""

from __future__ import annotations

import time

from atomq.core import keys
from atomq.engine import stats
from testkit.browser import BROWSER_MARKS, log_in

pytestmark = BROWSER_MARKS


def test_charts_draw_and_a_queue_is_paused_and_resumed_from_its_page(
    browser, api_server, tq, procs, connection, tmp_path
):
    for _ in range(3):
        stats.record_job_end(
            connection, queue="social_media", task="publish", outcome="finished", duration=0.3
        )
    stats.record_job_end(connection, queue="social_media", task="publish", outcome="failed", duration=1.2)
    procs.worker("social_media", "default")
    page = log_in(browser, api_server)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    # Anything fetched from outside the server would be a CDN the dashboard must not need.
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(api_server) else None)

    page.reload()
    for chart in ("chart-rates", "chart-depth", "chart-times"):
        page.locator(f"#{chart} canvas").wait_for()
    assert page.locator("#charts canvas").count() == 3
    legend = page.inner_text("#chart-rates")
    assert "finished" in legend and "failed" in legend
    page.screenshot(path=str(tmp_path / "overview-charts.png"), full_page=True)

    page.click('a[href$="/dashboard/queues/social_media"]')
    page.wait_for_url(f"{api_server}/dashboard/queues/social_media")
    page.locator("#chart-rates canvas").wait_for()
    page.click('button[data-action="pause"]')
    page.wait_for_url(f"{api_server}/dashboard/queues/social_media")
    assert "paused queue social_media" in page.inner_text("main")
    assert page.locator("#paused-note").count() == 1
    assert connection.hexists(keys.PAUSED_QUEUES, "social_media")

    time.sleep(1.0)  # past the workers' refresh of the paused set
    held = tq.enqueue("add", a=2, b=3, queue="social_media")
    flowing = tq.enqueue("add", a=1, b=1, queue="default")
    deadline = time.monotonic() + 10
    while tq.get_job_status(flowing.id)["status"] != "finished" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tq.get_job_status(flowing.id)["status"] == "finished"
    time.sleep(1.0)
    assert tq.get_job_status(held.id)["status"] == "queued"
    page.screenshot(path=str(tmp_path / "queue-paused.png"), full_page=True)

    page.click('button[data-action="resume"]')
    page.wait_for_url(f"{api_server}/dashboard/queues/social_media")
    assert "resumed queue social_media" in page.inner_text("main")
    deadline = time.monotonic() + 10
    while tq.get_job_status(held.id)["status"] != "finished" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tq.get_job_status(held.id)["status"] == "finished"
    assert not problems, problems
    assert not outside, outside
