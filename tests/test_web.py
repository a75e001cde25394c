"""The web process over HTTP: auth, CSRF, read-only, /metrics, /healthz, and `taskctl stats`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from taskctl.stack import redis_server, stop
from tests.conftest import ROOT, fetch, free_port, run_burst_worker, start_web, taskctl
from tests.test_enqueue_cli import job_id_from
from tests.test_failures import fields
from tests.test_hostile_data import plant_pickle


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def failed_job_on_default() -> str:
    job_id = job_id_from(taskctl("enqueue", "fail", "boom").output)
    run_burst_worker()
    return job_id


def test_pages_are_served_on_loopback_without_credentials(web: Callable[..., str]) -> None:
    base = web()

    status, body, _ = fetch(base, "/")
    assert status == 200 and "RQ dashboard" in body and '<a href="/schedules" class="nav-link">Schedules</a>' in body
    assert fetch(base, "/0/view/workers")[0] == 200


def test_a_get_that_would_change_state_is_refused(web: Callable[..., str]) -> None:
    base = web()
    job_id = failed_job_on_default()

    status, body, _ = fetch(base, "/requeue/default")

    assert (status, body) == (403, "GET cannot change state; use POST from the dashboard\n")
    assert fields(taskctl("status", job_id).output)["status"] == "failed"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {"Origin": "null"}],
    ids=["no origin", "foreign origin", "foreign referer", "null origin"],
)
def test_a_cross_site_post_is_refused(web: Callable[..., str], headers: dict[str, str]) -> None:
    base = web()
    job_id = failed_job_on_default()

    status, body, _ = fetch(base, f"/job/{job_id}/requeue", "POST", headers)

    assert status == 403
    assert body == "cross-site request refused: it did not come from the dashboard's own pages\n"
    assert fields(taskctl("status", job_id).output)["status"] == "failed"


def test_a_post_from_the_dashboard_itself_requeues(web: Callable[..., str]) -> None:
    base = web()
    first, second = failed_job_on_default(), failed_job_on_default()

    by_origin = fetch(base, f"/job/{first}/requeue", "POST", {"Origin": base})
    by_referer = fetch(base, f"/job/{second}/requeue", "POST", {"Referer": base + "/0/view/jobs"})

    assert (by_origin[0], by_referer[0]) == (200, 200)
    for job_id in (first, second):
        assert fields(taskctl("status", job_id).output)["status"] == "queued"


def test_with_credentials_every_page_needs_them_but_healthz(web: Callable[..., str]) -> None:
    base = web(TASKCTL_DASHBOARD_USERNAME="ops", TASKCTL_DASHBOARD_PASSWORD="s3cret-pw")
    job_id = failed_job_on_default()

    for path in ("/", "/0/data/queues.json", f"/0/view/job/{job_id}", "/schedules", "/limits", "/failures",
                 "/metrics"):  # fmt: skip
        status, _, headers = fetch(base, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith('Basic realm="taskctl dashboard"')
        assert fetch(base, path, headers=basic("ops", "wrong"))[0] == 401
        assert fetch(base, path, headers=basic("ops", "s3cret-pw"))[0] == 200
    assert fetch(base, "/healthz")[0] == 200
    # Credentials do not make a cross-site request acceptable: the browser would send them anyway.
    cross = fetch(
        base, f"/job/{job_id}/requeue", "POST", {**basic("ops", "s3cret-pw"), "Origin": "http://evil.example"}
    )
    assert cross[0] == 403


def test_read_only_mode_refuses_every_action(web: Callable[..., str]) -> None:
    base = web(TASKCTL_DASHBOARD_READ_ONLY="true")
    job_id = failed_job_on_default()

    for path in (f"/job/{job_id}/requeue", f"/job/{job_id}/delete", "/requeue/default", "/queue/default/failed/empty",
                 "/queue/default/compact", "/failures/requeue", "/failures/delete"):  # fmt: skip
        status, body, _ = fetch(base, path, "POST", {"Origin": base})
        assert (status, body) == (403, "the dashboard is read-only (TASKCTL_DASHBOARD_READ_ONLY)\n"), path
    assert fetch(base, "/")[0] == 200
    assert fields(taskctl("status", job_id).output)["status"] == "failed"


def test_the_failures_page_summarizes_by_cause_and_requeues_what_it_showed(web: Callable[..., str]) -> None:
    base = web()
    refused = [job_id_from(taskctl("enqueue", "fail", f"order {n} refused").output) for n in (1, 2)]
    full = job_id_from(taskctl("enqueue", "fail", "disk full").output)
    run_burst_worker()

    status, body, _ = fetch(base, "/failures?cause=refused")
    assert status == 200
    assert '<p id="failures-count">2 failed job(s) of 3.</p>' in body
    assert ">RuntimeError: order &lt;n&gt; refused</a></td><td>2</td>" in body
    pinned = re.search(r'name="pinned" value="([^"]+)"', body)
    assert pinned
    form = {"cause": "refused", "pinned": pinned.group(1)}

    assert fetch(base, "/failures/requeue", "POST", {"Origin": "http://evil.example"}, form)[0] == 403
    assert fetch(base, "/failures/delete", "POST", {}, form)[0] == 403
    status, body, _ = fetch(base, "/failures/requeue", "POST", {"Origin": base}, form)

    assert status == 200 and '<div id="failures-notice" class="alert alert-success">Requeued 2 job(s).</div>' in body
    assert [fields(taskctl("status", job_id).output)["status"] for job_id in refused] == ["queued", "queued"]
    assert fields(taskctl("status", full).output)["status"] == "failed"


def test_the_failures_page_names_a_bad_filter(web: Callable[..., str]) -> None:
    base = web()
    failed_job_on_default()

    status, body, _ = fetch(base, "/failures?since=yesterday")

    assert status == 400
    assert "--since &#39;yesterday&#39; is neither a time ago (30m, 2h, 1d) nor an ISO 8601 time" in body


def test_binding_beyond_loopback_without_credentials_refuses_to_start(configured: str) -> None:
    env = dict(os.environ, TASKCTL_DASHBOARD_HOST="0.0.0.0", TASKCTL_DASHBOARD_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "taskctl.web"], cwd=ROOT, env=env, timeout=60, capture_output=True, text=True
    )

    assert done.returncode == 1
    assert "refusing to serve the dashboard on 0.0.0.0: beyond loopback it needs credentials" in done.stderr


def test_binding_beyond_loopback_with_credentials_starts_and_asks_for_them(web: Callable[..., str]) -> None:
    base = web(TASKCTL_DASHBOARD_HOST="0.0.0.0", TASKCTL_DASHBOARD_USERNAME="ops", TASKCTL_DASHBOARD_PASSWORD="pw")

    assert fetch(base, "/")[0] == 401


def metrics(base: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, response_headers = fetch(base, "/metrics", headers=headers)
    assert status == 200
    assert response_headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_metrics_report_jobs_per_queue_and_state_workers_and_waits(web: Callable[..., str], worker: object) -> None:
    base = web()
    taskctl("enqueue", "add", "1", "2", "--wait", "--wait-timeout", "30")
    taskctl("enqueue", "fail", "x", "--wait", "--wait-timeout", "30")
    taskctl("enqueue", "add", "1", "2", "--in", "1h")

    found = metrics(base)

    def jobs(queue: str, state: str) -> float:
        return found[("taskctl_queue_jobs", (("queue", queue), ("state", state)))]

    assert (jobs("default", "finished"), jobs("default", "failed"), jobs("high", "queued")) == (1, 1, 0)
    assert found[("taskctl_workers_alive", ())] == 1
    assert found[("taskctl_scheduler_jobs", ())] == 1
    assert found[("taskctl_scheduler_overdue_jobs", ())] == 0
    assert found[("taskctl_queue_oldest_job_age_seconds", (("queue", "low"),))] == 0


def test_oldest_queued_age_grows_while_no_worker_runs(web: Callable[..., str]) -> None:
    base = web()
    taskctl("enqueue", "add", "1", "2", "--queue", "low")
    time.sleep(1.2)

    age = metrics(base)[("taskctl_queue_oldest_job_age_seconds", (("queue", "low"),))]

    assert age >= 1.0
    assert metrics(base)[("taskctl_queue_jobs", (("queue", "low"), ("state", "queued")))] == 1


def test_metrics_and_stats_show_each_concurrency_limit_in_use_and_waiting_and_for_how_long(
    web: Callable[..., str], tmp_path: Path
) -> None:
    base = web()
    for i in range(3):
        taskctl("enqueue", "update_stock", str(tmp_path / "runs.log"), "sku-1", f"t{i}", "0")
    time.sleep(1.2)  # RQ scores a waiting job in whole seconds

    found = metrics(base)
    stats = taskctl("stats").output

    label = (("limit", "update_stock:sku-1"),)
    assert (found[("taskctl_limit_running", label)], found[("taskctl_limit_waiting", label)]) == (1, 2)
    assert found[("taskctl_limit_oldest_wait_seconds", label)] >= 1.0
    assert "LIMIT               AT ONCE  IN USE  WAITING  LONGEST WAIT\nupdate_stock:sku-1  1        1       2" in stats


def test_healthz_follows_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    port = free_port()
    with redis_server(port, tmp_path / "redis"):
        process, base = start_web(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        assert fetch(base, "/healthz")[:2] == (200, "ok\n")
    try:
        status, body, _ = fetch(base, "/healthz")
        assert status == 503
        assert body.startswith(f"redis unavailable at redis://127.0.0.1:{port}/0: ")
        assert fetch(base, "/metrics")[0] == 503
    finally:
        stop(process)


def test_stats_prints_the_metrics_as_a_table(configured: str, redis: Redis) -> None:
    taskctl("enqueue", "add", "1", "2", "--queue", "low")
    taskctl("enqueue", "add", "1", "2", "--in", "1h")

    result = taskctl("stats")

    lines = result.output.splitlines()
    assert lines[0].split() == ["QUEUE", "QUEUED", "STARTED", "FINISHED", "FAILED", "DEFERRED", "SCHEDULED", "OLDEST",
                                "QUEUED"]  # fmt: skip
    assert lines[3].split()[:2] == ["low", "1"]
    assert "Workers alive: 0 (0 busy)" in result.output
    assert "Scheduler: 1 waiting, 0 overdue" in result.output


def test_stats_watch_refreshes_the_given_number_of_times(configured: str) -> None:
    result = taskctl("stats", "--watch", "--interval", "0.1", "--count", "3")

    assert result.exit_code == 0
    assert result.output.count("Workers alive:") == 3


def test_no_dashboard_page_inserts_a_value_as_markup(web: Callable[..., str]) -> None:
    base = web()
    job_id = failed_job_on_default()

    for path in ("/", "/0/view/jobs/default/failed/8/asc/1", f"/0/view/job/{job_id}", "/0/view/workers"):
        status, body, _ = fetch(base, path)
        assert status == 200, path
        # underscore.js templates: `<%=` inserts markup, `<%-` text (see taskctl.web.stock_templates).
        assert "<%=" not in body and "<%-" in body, path


def test_the_workers_page_never_unpickles_a_busy_workers_job(
    web: Callable[..., str], worker: object, redis: Redis, tmp_path: Path
) -> None:
    base = web()
    marker = tmp_path / "pwned"
    job_id = job_id_from(taskctl("enqueue", "slow", "5").output)
    deadline = time.monotonic() + 30
    while fields(taskctl("status", job_id).output)["status"] != "started":
        assert time.monotonic() < deadline, "the worker did not start the job"
        time.sleep(0.1)
    plant_pickle(redis, job_id, "data", marker)

    fetch(base, "/0/data/workers.json")  # its data is no longer JSON: the page may fail, but must not unpickle it

    assert not marker.exists()
