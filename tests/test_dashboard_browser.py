"""The dashboard as a person sees it, in headless Chromium (Debian's `chromium`).

Screenshots of each page go to test-artifacts/. Without Chromium these tests are
skipped with the reason, except where TASKCTL_BROWSER_TESTS=required (CI): there a
missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis import Redis

from taskctl.enqueue import enqueue_call
from taskctl.handle import JobHandle
from taskctl.rqclasses import Queue
from taskctl.workflows import Call, chain
from tests.conftest import ROOT, fetch, run_burst_worker, taskctl
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

    row.locator("td.failed a").first.click()  # its links survive the escaping of every insertion
    page.wait_for_url(base + "/0/view/jobs/default/failed/8/asc/1")


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


def test_the_outbox_page_shows_waiting_and_stuck_rows_from_the_navigation(
    web: Callable[..., str], page: Any, tmp_path: Path
) -> None:
    import sqlite3

    from taskctl import outbox
    from taskctl.relay import Relay

    (tmp_path / "var").mkdir(exist_ok=True)
    with sqlite3.connect(tmp_path / "var" / "shop.sqlite3") as conn:  # the default outbox: the shop's database
        outbox.enqueue(conn, "add", 1, 2)
        conn.execute(
            "INSERT INTO taskctl_outbox (job_id, job, call, created_at) VALUES (?, ?, ?, strftime('%s', 'now'))",
            ("gone-1", "retired_job", json.dumps({"args": [], "kwargs": {}, "queue": "default", "job_timeout": None,
                                                  "retries": None, "backoff": None, "unique": False, "due": None})),
        )  # fmt: skip
    assert Relay().relay_once().stuck == 1  # and the waiting row became a job
    with sqlite3.connect(tmp_path / "var" / "shop.sqlite3") as conn:
        outbox.enqueue(conn, "add", 3, 4)
    base = web()

    page.goto(base + "/")
    page.get_by_role("link", name="Outbox").click()
    page.wait_for_url(base + "/outbox")

    assert page.locator("#outbox-waiting").inner_text() == "1"
    assert page.locator("#outbox-stuck").inner_text() == "1"
    cells = page.locator("#stuck tbody tr", has_text="gone-1").locator("td").all_inner_texts()
    assert cells[:3] == ["gone-1", "retired_job()", "default"]
    assert cells[5].startswith("UnknownJobError: unknown job 'retired_job'")
    screenshot(page, "outbox")


def test_the_limits_page_shows_each_limit_in_use_and_waiting_from_the_navigation(
    web: Callable[..., str], page: Any, redis: Redis, tmp_path: Path
) -> None:
    for i in range(3):
        taskctl("enqueue", "update_stock", str(tmp_path / "runs.log"), "sku-1", f"t{i}", "0")
    for i in range(2):
        taskctl("enqueue", "paced_tally", str(tmp_path / "runs.log"), f"p{i}", "0", "--rate", "1/m")
    queue = Queue("default", connection=redis)
    while Queue.dequeue_any([queue], None, connection=redis):  # a worker's claims: one starts, one is set aside
        pass
    base = web()

    page.goto(base + "/")
    page.get_by_role("link", name="Limits").click()
    page.wait_for_url(base + "/limits")

    cells = page.locator("#limits tbody tr", has_text="update_stock:sku-1").locator("td").all_inner_texts()
    assert cells[:4] == ["update_stock:sku-1", "1", "1", "2"]
    assert re.fullmatch(r"\d+s", cells[4])
    cells = page.locator("#rates tbody tr", has_text="paced_tally").locator("td").all_inner_texts()
    assert cells[:4] == ["paced_tally", "1/60s", "1", "1"]
    assert re.fullmatch(r"(59|60)\.\ds", cells[4])
    screenshot(page, "limits")


def test_the_failures_page_filters_by_cause_and_requeues_those_from_the_navigation(
    web: Callable[..., str], page: Any
) -> None:
    refused = [job_id_from(taskctl("enqueue", "fail", f"order {n} refused").output) for n in (7, 42)]
    full = job_id_from(taskctl("enqueue", "fail", "disk full", "--queue", "low").output)
    run_burst_worker()
    base = web()

    page.goto(base + "/")
    page.get_by_role("link", name="Failures").click()
    page.wait_for_url(base + "/failures")
    assert page.locator("#failures-count").inner_text() == "3 failed job(s)."
    cells = page.locator("#causes tbody tr", has_text="refused").locator("td").all_inner_texts()
    assert [cells[0], cells[1], cells[2], cells[5]] == ["fail", "RuntimeError: order <n> refused", "2", "default"]
    page.get_by_role("link", name="RuntimeError: order <n> refused").click()
    page.wait_for_url(re.compile(r".*/failures\?.*cause=RuntimeError.*"))
    assert page.locator("#failures-count").inner_text() == "2 failed job(s) of 3."
    assert "--cause 'RuntimeError: order <n> refused'" in page.locator("#failures-command").inner_text()
    screenshot(page, "failures")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Requeue 2").click()

    assert page.locator("#failures-notice").inner_text() == "Requeued 2 job(s)."
    assert [fields(taskctl("status", job_id).output)["status"] for job_id in refused] == ["queued", "queued"]
    assert fields(taskctl("status", full).output)["status"] == "failed"


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


#: Quotes of both kinds, `&` and a literal entity, markup and non-ASCII: a page that escapes
#: twice shows `&amp;` or `&#x27;`, one that escapes nothing renders <b> or decodes `&amp;`.
TEXT = "Crème brûlée — 5 € <b>bold</b> & &amp; \"quoted\" 'single'"


def description(job_id: str) -> str:
    """The job's own text, as RQ stored it: what every page must show."""
    return str(JobHandle.fetch(job_id).job.description)


def error(job_id: str) -> str:
    result = JobHandle.fetch(job_id).job.latest_result()
    assert result is not None and result.exc_string is not None
    return str(result.exc_string)


def data(base: str, path: str) -> Any:
    status, body, _ = fetch(base, path)
    assert status == 200, path
    return json.loads(body)


def jobs_with_text_in_each_registry(log: str) -> dict[str, tuple[str, str]]:
    """Registry name: (queue, id) of a job whose arguments hold TEXT."""
    failed = enqueue_call("fail", [TEXT]).id
    scheduled = enqueue_call("fail", [TEXT], retries=1, backoff=3600).id  # its retry waits an hour
    finished = enqueue_call("record", [log, TEXT]).id
    run_burst_worker("default", "high")
    canceled = enqueue_call("record", [log, TEXT], queue="low").id
    taskctl("cancel", canceled)
    chained = chain(Call("record", [log, TEXT], queue="low"), Call("record", [log, TEXT], queue="low"))
    return {
        "queued": ("low", chained.steps[0].id),
        "deferred": ("low", chained.steps[1].id),
        "canceled": ("low", canceled),
        "failed": ("default", failed),
        "scheduled": ("default", scheduled),
        "finished": ("high", finished),
    }


def test_every_registrys_job_list_and_the_job_page_show_the_jobs_text_exactly_as_written(
    web: Callable[..., str], page: Any, tmp_path: Path
) -> None:
    jobs = jobs_with_text_in_each_registry(str(tmp_path / "log"))
    base = web()

    for registry, (queue, job_id) in jobs.items():
        page.goto(f"{base}/0/view/jobs/{queue}/{registry}/8/asc/1")
        row = page.locator(f"#jobs tr[data-job-id='{job_id}']")
        assert row.locator(".description").inner_text() == description(job_id), registry
        listed = data(base, f"/0/data/jobs/{queue}/{registry}/8/asc/1.json")["jobs"]
        assert [job["description"] for job in listed if job["id"] == job_id] == [description(job_id)], registry
        if registry == "failed":
            assert row.locator("pre.exc_info").inner_text() == error(job_id)
            screenshot(page, "job-text-failed-list")

    for registry, (_, job_id) in jobs.items():
        if registry == "deferred":
            continue  # its page fails: see test_the_job_page_of_a_job_with_dependencies_shows_its_text
        page.goto(f"{base}/0/view/job/{job_id}")
        assert page.locator("#job-data .description-scroll").inner_text() == description(job_id), registry
        shown = data(base, f"/0/data/job/{job_id}.json")
        assert shown["description"] == description(job_id), registry
        if registry == "failed":
            assert page.locator("#job-data pre.exc_info").inner_text() == error(job_id)
            assert shown["exc_info"] == error(job_id)
            screenshot(page, "job-text-failed-job")
        if registry == "finished":
            assert page.locator("#job-data pre:not(.exc_info)").inner_text() == json.dumps(TEXT, ensure_ascii=False)
            assert shown["result"] == TEXT


def test_the_job_page_of_a_job_with_dependencies_shows_its_text(
    web: Callable[..., str], page: Any, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    deferred = chain(Call("record", [log, TEXT], queue="low"), Call("record", [log, TEXT], queue="low")).steps[1].id
    base = web()

    assert fetch(base, f"/0/data/job/{deferred}.json")[0] == 200
    page.goto(f"{base}/0/view/job/{deferred}")
    assert page.locator("#job-data .description-scroll").inner_text(timeout=5_000) == description(deferred)


def test_the_queues_page_shows_a_queue_name_exactly_as_written(web: Callable[..., str], page: Any, redis: Any) -> None:
    redis.sadd("rq:queues", f"rq:queue:{TEXT}")  # how RQ records that a queue exists
    base = web()

    page.goto(base + "/")
    names = page.locator("#queues tr[data-role=queue] td:first-child")
    names.first.wait_for()
    assert TEXT in names.all_inner_texts()
    assert TEXT in [queue["name"] for queue in data(base, "/0/data/queues.json")["queues"]]
    screenshot(page, "queue-name-text")


def test_the_workers_page_and_the_started_list_show_the_running_jobs_text_exactly_as_written(
    web: Callable[..., str], page: Any, worker: Any, tmp_path: Path
) -> None:
    base = web()
    job_id = enqueue_call("tally", [str(tmp_path / "log"), TEXT, 12]).id  # long enough to be seen running
    job = JobHandle.fetch(job_id).job

    page.goto(base + "/0/view/workers")
    current = page.locator("#workers tr[data-role=worker] td", has=page.locator("a"))
    assert current.locator("a").inner_text() == job.get_call_string()
    # Its tooltip has the description, between the spaces that rq-dashboard's template puts around it.
    assert f"\nDescription:  {description(job_id)} \n" in current.get_attribute("title").replace("\r", "")
    (busy,) = [w for w in data(base, "/0/data/workers.json")["workers"] if w["current_job"] != "idle"]
    assert busy["current_job"]["description"] == description(job_id)
    screenshot(page, "workers-current-job-text")

    page.goto(f"{base}/0/view/jobs/default/started/8/asc/1")
    row = page.locator(f"#jobs tr[data-job-id='{job_id}']")
    assert row.locator(".description").inner_text() == description(job_id)


def test_the_schedules_page_shows_a_scheduled_jobs_text_exactly_as_written(
    web: Callable[..., str], page: Any, tmp_path: Path
) -> None:
    log = str(tmp_path / "log")
    args = json.dumps([log, TEXT], ensure_ascii=False)  # a JSON array of strings is TOML too
    write_schedules(f'[hostile-text]\njob = "record"\nargs = {args}\nevery = "1h"\n')
    assert taskctl("schedules", "sync").exit_code == 0
    delayed = enqueue_call("record", [log, TEXT], delay=timedelta(hours=1)).id
    base = web()

    page.goto(base + "/schedules")
    periodic = page.locator("#periodic tbody tr", has_text="hostile-text").locator("td").all_inner_texts()
    once = page.locator("#delayed tbody tr", has_text=delayed).locator("td").all_inner_texts()
    assert periodic[1] == description("periodic-hostile-text")
    assert once[1] == description(delayed)
    screenshot(page, "schedules-text")


def test_a_link_to_a_queue_named_like_a_script_shows_the_name_and_runs_nothing(
    web: Callable[..., str], page: Any
) -> None:
    # Closes the string and the handler that rq-dashboard's jobs script writes the queue name into.
    name = "x'); } }); window.__xss = 3; $('#x').on('y', function() { if (1) { ('"
    base = web()

    page.goto(f"{base}/0/view/jobs/{quote(name, safe='')}/queued/8/asc/1")
    page.get_by_text("No jobs.").wait_for()  # the page's own script ran
    assert page.evaluate("window.__xss") is None
    assert page.locator("p.intro strong").inner_text() == name
