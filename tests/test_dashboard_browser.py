"""The dashboard as a person sees it, in headless Chromium (Debian's `chromium`).

Screenshots of each page go to test-artifacts/. Without Chromium these tests are
skipped with the reason, except where TASKCTL_BROWSER_TESTS=required (CI): there a
missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskctl.handle import JobHandle
from tests.conftest import ROOT, run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from
from tests.test_failures import fields
from tests.test_scheduling import TWO_SCHEDULES, write_schedules

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"

if CHROMIUM is None:
    if os.environ.get("TASKCTL_BROWSER_TESTS") == "required":
        raise RuntimeError("TASKCTL_BROWSER_TESTS=required but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH: install Debian's chromium to run the browser tests", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_queues_page_shows_the_counts_after_jobs_ran(web: Callable[..., str], page: Any) -> None:
    base = web()
    for _ in range(2):
        taskctl("enqueue", "add", "1", "2")
    taskctl("enqueue", "fail", "boom")
    taskctl("enqueue", "add", "1", "2", "--queue", "low")
    run_burst_worker("default")

    page.goto(base + "/")
    row = page.locator("#queues tr[data-role=queue]", has_text="default")
    row.wait_for()

    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    # queue, queued, deferred, scheduled, started, finished, failed, canceled
    assert cells == ["default", "0", "0", "0", "0", "2", "1", "0"]
    low = [
        c.strip() for c in page.locator("#queues tr[data-role=queue]", has_text="low").locator("td").all_inner_texts()
    ]
    assert low[:2] == ["low", "1"]
    screenshot(page, "queues")


def test_a_failed_jobs_traceback_appears_and_requeue_from_the_browser_makes_it_run(
    web: Callable[..., str], page: Any, tmp_path: Path
) -> None:
    base = web()
    job_id = job_id_from(taskctl("enqueue", "flaky", str(tmp_path / "n"), "1", "--retries", "0").output)
    run_burst_worker()

    page.goto(base + "/0/view/jobs/default/failed/8/asc/1")
    page.get_by_text(job_id).first.wait_for()
    screenshot(page, "failed-jobs")
    page.get_by_text(job_id).first.click()
    traceback = page.locator("pre.exc_info")
    traceback.wait_for()
    page.wait_for_function("document.querySelector('pre.exc_info').innerText.includes('TransientError')")
    assert "Traceback (most recent call last)" in traceback.inner_text()
    assert "taskctl.exceptions.TransientError: attempt 1 failed" in traceback.inner_text()
    screenshot(page, "failed-job")

    with page.expect_response(re.compile(rf"/job/{job_id}/requeue$")) as response:
        page.locator("#requeue-job-btn").click()
    assert response.value.status == 200
    assert fields(taskctl("status", job_id).output)["status"] == "queued"
    run_burst_worker()
    assert fields(taskctl("status", job_id).output)["status"] == "finished"


def test_the_schedules_page_shows_declared_schedules_from_the_navigation(
    web: Callable[..., str], page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_schedules(TWO_SCHEDULES)
    assert taskctl("schedules", "sync").exit_code == 0
    delayed = job_id_from(taskctl("enqueue", "add", "1", "2", "--in", "1h").output)
    base = web()

    page.goto(base + "/")
    page.get_by_role("link", name="Schedules").click()
    page.wait_for_url(base + "/schedules")

    periodic = page.locator("#periodic tbody tr", has_text="daily-sales-report")
    cells = periodic.locator("td").all_inner_texts()
    assert cells[:4] == ["daily-sales-report", "generate_report('sales')", "cron 0 8 * * *", "low"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 08:00:00 UTC", cells[4])
    assert page.locator("#delayed tbody tr", has_text=delayed).count() == 1
    screenshot(page, "schedules")


PAYLOADS = ['<img src=x onerror="window.__xss=1">', "</script><script>window.__xss=2</script>"]


def test_hostile_job_data_shows_as_text_and_never_runs(web: Callable[..., str], page: Any, redis: Any) -> None:
    queued = [
        job_id_from(taskctl("enqueue", "record", payload, payload, "--queue", "low").output) for payload in PAYLOADS
    ]
    for job_id, payload in zip(queued, PAYLOADS, strict=True):
        job = JobHandle.fetch(job_id).job
        job.meta["note"] = payload
        job.save_meta()
    for payload in PAYLOADS:  # as keyword arguments too
        queued.append(
            job_id_from(taskctl("enqueue", "record", f"path={payload}", f"label={payload}", "-q", "low").output)
        )
    failed = [job_id_from(taskctl("enqueue", "fail", payload).output) for payload in PAYLOADS]
    run_burst_worker("default")
    base = web()

    pages = ["/0/view/jobs/low/queued/8/asc/1", "/0/view/jobs/default/failed/8/asc/1"]
    pages += [f"/0/view/job/{job_id}" for job_id in queued + failed]
    for path in pages:
        page.goto(base + path)
        page.wait_for_function("document.body.innerText.includes('window.__xss')")
        assert page.evaluate("window.__xss") is None, path
    screenshot(page, "hostile-data")


def test_the_workers_page_marks_a_worker_that_is_not_taskctls(
    web: Callable[..., str], page: Any, worker: Any, running_stock_worker: Any
) -> None:
    base = web()

    page.goto(base + "/0/view/workers")
    rows = page.locator("#workers tr[data-role=worker]")
    page.wait_for_function("document.querySelectorAll('#workers tr[data-role=worker]').length == 2")
    screenshot(page, "workers-with-a-stock-worker")

    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    marked = [text for text in texts if "NOT A TASKCTL WORKER" in text]
    assert len(marked) == 1, texts
    assert "it fails taskctl's jobs; see taskctl doctor" in marked[0]
