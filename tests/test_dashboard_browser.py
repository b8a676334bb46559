"""The dashboard in a real headless Chromium: log in, find a failed job, requeue it, watch it finish.

Uses Debian's chromium (scripts/bootstrap installs it when run as root) driven by Playwright;
the API and the worker are real processes.
"""

from __future__ import annotations

from testkit.browser import BROWSER_MARKS
from testkit.fixtures import TOKENS

pytestmark = BROWSER_MARKS


def test_requeue_a_failed_job_from_the_page_and_see_it_finish(
    browser, api_server, tq, burst, procs, tmp_path
):
    ledger = tmp_path / "attempts"
    job = tq.enqueue("count_attempts", path=str(ledger), fail_times=1)
    burst()
    assert tq.get_job_status(job.id)["status"] == "failed"
    procs.worker()  # idle until the job comes back

    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{api_server}/dashboard")
    assert page.url.startswith(f"{api_server}/dashboard/login")
    page.fill("#token", TOKENS["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{api_server}/dashboard")

    row = page.locator(f'#failed tr[data-job="{job.id}"]')
    row.wait_for()
    assert "RuntimeError: attempt 1 failed" in row.inner_text()
    assert page.inner_text("#total-failed") == "1"

    row.get_by_role("link", name=job.id).click()
    page.wait_for_url(f"{api_server}/dashboard/jobs/{job.id}")
    assert page.locator(".badge.status-failed").count() == 1
    assert "Traceback (most recent call last)" in page.inner_text("details.traceback")

    page.click(f'button[data-action="requeue"][data-job="{job.id}"]')
    page.wait_for_url(f"{api_server}/dashboard/jobs/{job.id}")
    assert f"requeued job {job.id}" in page.inner_text("main")

    # The page refreshes itself: the worker runs the job and the status turns to finished.
    page.locator(".badge.status-finished").wait_for(timeout=30_000)
    assert "2" in page.inner_text("pre.result")
    assert len(ledger.read_text().splitlines()) == 2
    page.screenshot(path=str(tmp_path / "job-finished.png"), full_page=True)

    page.click("nav >> text=Overview")
    page.wait_for_url(f"{api_server}/dashboard")
    assert page.inner_text("#total-failed") == "0"
    assert page.locator(f'tr[data-job="{job.id}"]').count() == 0
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    assert tq.get_job_status(job.id)["status"] == "finished"
