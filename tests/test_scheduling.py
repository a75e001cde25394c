"""Delayed and periodic jobs: rq-scheduler processes, declared schedules, time zones."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from redis import Redis

from taskctl.connection import connect
from taskctl.rqscheduler import Scheduler
from taskctl.stack import stop
from taskctl.status import fetch_job, wait_for
from tests.conftest import ROOT, taskctl
from tests.test_failures import fields

SCHEDULED = Scheduler.scheduled_jobs_key


def job_id_of(output: str) -> str:
    return output.split(" as ", 1)[1].split()[0]


def start_scheduler(interval: float = 0.2) -> subprocess.Popen[str]:
    env = dict(os.environ, TASKCTL_SCHEDULER_INTERVAL=str(interval))
    return subprocess.Popen([sys.executable, "-m", "taskctl.scheduler"], env=env, cwd=Path.cwd(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.fixture
def scheduler_process(configured: str) -> Iterator[subprocess.Popen[str]]:
    process = start_scheduler()
    yield process
    stop(process)


def write_schedules(text: str) -> None:
    Path("schedules.toml").write_text(text)  # the test runs in its own folder


def scores(redis: Redis) -> dict[bytes, float]:
    return dict(redis.zrange(SCHEDULED, 0, -1, withscores=True))


# --- delayed jobs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--in", "10 minutes"], "--in '10 minutes' is not a delay; expected a number and a unit: 30s, 10m, 2h, 1d"),
        (["--in", "-5m"], "--in '-5m' is not a delay"),
        (["--at", "next tuesday"], "--at 'next tuesday' is not an ISO 8601 time; expected e.g. 2026-12-01T09:00"),
        (["--at", "2020-01-01T09:00"], "--at 2020-01-01 09:00:00 UTC is in the past (now is "),
        (["--in", "1m", "--at", "2099-01-01T00:00"], "give --in or --at, not both"),
        (["--job-id", "has space"], "job id 'has space' may use only letters, digits, '_' and '-'"),
    ],
)
def test_bad_times_are_refused_with_exit_2_and_nothing_written(
    configured: str, redis: Redis, args: list[str], message: str
) -> None:
    result = taskctl("enqueue", "add", "1", "2", *args)

    assert result.exit_code == 2
    assert f"Error: {message}" in result.output
    assert redis.dbsize() == 0


def test_an_at_time_just_past_runs_now(configured: str, redis: Redis) -> None:
    just_now = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()

    result = taskctl("enqueue", "add", "1", "2", "--at", just_now)

    assert result.exit_code == 0
    assert result.output.startswith("Enqueued add as ")
    assert redis.llen("rq:queue:default") == 1


def test_an_at_time_without_offset_is_read_and_shown_in_the_configured_zone(
    configured: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKCTL_TIMEZONE", "Asia/Tokyo")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    tomorrow = (datetime.now(ZoneInfo("Asia/Tokyo")) + timedelta(days=1)).date()

    result = taskctl("enqueue", "add", "1", "2", "--at", f"{tomorrow}T09:00")

    assert result.exit_code == 0, result.output
    job_id = job_id_of(result.output)
    assert result.output.endswith(f"on queue default for {tomorrow} 09:00:00 JST\n")
    expected = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 9, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert redis.zscore(SCHEDULED, job_id) == expected.timestamp()
    status = fields(taskctl("status", job_id).output)
    assert (status["status"], status["scheduled for"]) == ("scheduled", f"{tomorrow} 09:00:00 JST")
    assert redis.llen("rq:queue:default") == 0


def test_a_delayed_job_runs_after_its_delay_and_not_before(scheduler_process: object, worker: object) -> None:
    asked_at = datetime.now(UTC)
    job_id = job_id_of(taskctl("enqueue", "add", "2", "2", "--in", "2s").output)

    time.sleep(1)
    assert fields(taskctl("status", job_id).output)["status"] == "scheduled"
    final = wait_for(fetch_job(job_id, connect()), timeout=30)

    assert final.status == "finished"
    assert final.started_at is not None
    assert final.started_at.replace(tzinfo=UTC) >= asked_at + timedelta(seconds=2)
    assert taskctl("result", job_id).output == "4\n"


def test_a_delayed_job_keeps_its_retry_policy(configured: str, redis: Redis) -> None:
    job_id = job_id_of(taskctl("enqueue", "flaky", "/tmp/x", "1", "--in", "1h", "--retries", "4").output)

    job = fetch_job(job_id, redis)
    assert (job.retries_left, job.failure_ttl, job.origin) == (4, 7 * 86400, "default")


def test_cancel_removes_a_delayed_job_from_the_scheduler(configured: str, redis: Redis) -> None:
    job_id = job_id_of(taskctl("enqueue", "add", "1", "2", "--in", "1h").output)

    assert taskctl("schedules", "cancel", job_id).output == f"Cancelled {job_id}.\n"

    assert redis.zscore(SCHEDULED, job_id) is None
    assert fields(taskctl("status", job_id).output)["status"] == "canceled"


def test_a_unique_delayed_job_is_refused_while_one_exists(configured: str, redis: Redis) -> None:
    taskctl("enqueue", "add", "1", "2", "--in", "1h", "--job-id", "once", "--unique")

    second = taskctl("enqueue", "add", "1", "2", "--in", "2h", "--job-id", "once", "--unique")

    assert second.exit_code == 1
    assert "a job with id 'once' exists already" in second.output
    assert redis.zcard(SCHEDULED) == 1


# --- declared periodic schedules ----------------------------------------------------

TWO_SCHEDULES = """
[daily-sales-report]
job = "generate_report"
args = ["sales"]
cron = "0 8 * * *"

[frequent-add]
job = "add"
args = [1, 2]
every = "1h"
queue = "low"
"""


def test_sync_is_idempotent_and_restarts_change_nothing(configured: str, redis: Redis) -> None:
    write_schedules(TWO_SCHEDULES)

    first = taskctl("schedules", "sync")
    assert first.output == (
        "daily-sales-report: added\nfrequent-add: added\nSynced: 2 added, 0 changed, 0 removed, 0 unchanged.\n"
    )
    before = scores(redis)
    for _ in range(4):
        assert taskctl("schedules", "sync").output == "Synced: 0 added, 0 changed, 0 removed, 2 unchanged.\n"
    for _ in range(3):
        subprocess.run([sys.executable, "-m", "taskctl.scheduler", "--burst"], env=dict(os.environ),
                       cwd=Path.cwd(), timeout=60, check=True, capture_output=True)  # fmt: skip

    assert scores(redis) == before
    assert set(before) == {b"periodic-daily-sales-report", b"periodic-frequent-add"}
    assert redis.llen("rq:queue:low") == 0  # nothing was due


def test_a_cron_schedule_runs_at_its_time_in_the_configured_zone(
    configured: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKCTL_TIMEZONE", "America/New_York")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    write_schedules(TWO_SCHEDULES)
    taskctl("schedules", "sync")

    due = datetime.fromtimestamp(
        redis.zscore(SCHEDULED, "periodic-daily-sales-report") or 0, ZoneInfo("America/New_York")
    )
    assert (due.hour, due.minute) == (8, 0)
    assert timedelta(0) < due - datetime.now(UTC) <= timedelta(days=1)
    listing = taskctl("schedules").output
    assert "times in America/New_York" in listing
    assert f"{due:%Y-%m-%d} 08:00:00 E" in listing  # EST or EDT


def test_a_changed_declaration_is_replaced_in_place_and_a_removed_one_deleted(configured: str, redis: Redis) -> None:
    write_schedules(TWO_SCHEDULES)
    taskctl("schedules", "sync")

    write_schedules('[frequent-add]\njob = "add"\nargs = [5, 6]\nevery = "1h"\nqueue = "low"\n')
    result = taskctl("schedules", "sync")

    assert result.output == (
        "frequent-add: changed\ndaily-sales-report: removed\nSynced: 0 added, 1 changed, 1 removed, 0 unchanged.\n"
    )
    assert set(scores(redis)) == {b"periodic-frequent-add"}
    assert fetch_job("periodic-frequent-add", redis).args == [5, 6]
    assert not redis.exists("rq:job:periodic-daily-sales-report")


def test_dry_run_says_what_would_change_and_changes_nothing(configured: str, redis: Redis) -> None:
    write_schedules(TWO_SCHEDULES)

    result = taskctl("schedules", "sync", "--dry-run")

    assert "daily-sales-report: would be added" in result.output
    assert result.output.endswith("Dry run: 2 added, 0 changed, 0 removed, 0 unchanged.\n")
    assert redis.zcard(SCHEDULED) == 0


@pytest.mark.parametrize(
    ("declaration", "problem"),
    [
        ('job = "add"\nargs = [1, 2]\ncron = "61 * * * *"', "cron '61 * * * *' is not a cron expression"),
        ('job = "nope"\ncron = "0 8 * * *"', "unknown job 'nope'"),
        ('job = "add"\nargs = [1]\ncron = "0 8 * * *"', "missing a required argument: 'b'"),
        ('job = "add"\nargs = ["x", 2]\nevery = "1h"', "add: parameter a: 'x' is not an integer"),
        ('job = "add"\nargs = [1, 2]', "give exactly one of cron = '...' and every = '...'"),
        ('job = "add"\nargs = [1, 2]\nevery = "soon"', "--in 'soon' is not a delay"),
        ('job = "add"\nargs = [1, 2]\nevery = "1h"\nqueue = "urgent"', "unknown queue 'urgent'"),
        ('job = "add"\nargs = [1, 2]\nevery = "1h"\nretry = 3', "unknown key(s) retry"),
    ],
)
def test_an_invalid_declaration_stops_sync_and_changes_nothing(
    configured: str, redis: Redis, declaration: str, problem: str
) -> None:
    write_schedules(TWO_SCHEDULES)
    taskctl("schedules", "sync")
    before = (scores(redis), sorted(redis.keys()))

    write_schedules(TWO_SCHEDULES + f"\n[broken]\n{declaration}\n")
    result = taskctl("schedules", "sync")

    assert result.exit_code == 1
    assert "schedules.toml has invalid schedules; nothing was changed:" in result.output
    assert "schedule 'broken': " in result.output and problem in result.output
    assert (scores(redis), sorted(redis.keys())) == before


def test_an_invalid_declaration_stops_the_scheduler_process(configured: str) -> None:
    write_schedules('[broken]\njob = "nope"\nevery = "1h"\n')

    done = subprocess.run([sys.executable, "-m", "taskctl.scheduler", "--burst"], env=dict(os.environ),
                          cwd=Path.cwd(), timeout=60, capture_output=True, text=True)  # fmt: skip

    assert done.returncode == 1
    assert "schedule 'broken': unknown job 'nope'" in done.stdout + done.stderr


def test_two_scheduler_processes_enqueue_each_due_run_once(configured: str, worker: object, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    write_schedules(f'[tick]\njob = "record"\nargs = ["{log}", "tick"]\ncron = "*/2 * * * * * *"\n')
    schedulers = [start_scheduler(0.2), start_scheduler(0.2)]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(log.read_text().splitlines() if log.exists() else []) < 4:
            time.sleep(0.2)
    finally:
        for process in schedulers:
            stop(process)

    times = [float(line.split()[1]) for line in log.read_text().splitlines()]
    assert len(times) >= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 1.0, f"two runs for one due time: {times}"


def test_a_due_run_claimed_by_one_scheduler_is_not_enqueued_by_another(configured: str, redis: Redis) -> None:
    """Even when rq-scheduler's own lock has expired and two passes overlap."""
    from taskctl.rqscheduler import make_scheduler

    first, second = make_scheduler(), make_scheduler()
    job_id = job_id_of(taskctl("enqueue", "add", "1", "2", "--in", "1h").output)
    due = time.time() - 1
    redis.zadd(SCHEDULED, {job_id: due})  # due now

    first.enqueue_job(fetch_job(job_id, redis))
    redis.zadd(SCHEDULED, {job_id: due})  # as the overlapping pass saw it before the first one's ZREM
    second.enqueue_job(fetch_job(job_id, redis))

    assert redis.lrange("rq:queue:default", 0, -1) == [job_id.encode()]


def test_schedules_lists_periodic_and_delayed_jobs(configured: str) -> None:
    write_schedules(TWO_SCHEDULES)
    job_id = job_id_of(taskctl("enqueue", "add", "1", "2", "--in", "1h").output)

    before_sync = taskctl("schedules").output
    assert "not synced: run `taskctl schedules sync`" in before_sync
    taskctl("schedules", "sync")
    listing = taskctl("schedules").output

    assert "Periodic (schedules.toml, times in UTC):" in listing
    assert "daily-sales-report  generate_report('sales')  cron 0 8 * * * (UTC)  low" in listing
    assert "frequent-add        add(1, 2)                 every 3600s" in listing
    assert "Delayed: 1" in listing
    assert job_id in listing


def test_a_periodic_schedule_cannot_be_cancelled_like_a_delayed_job(configured: str) -> None:
    result = taskctl("schedules", "cancel", "periodic-daily-sales-report")

    assert result.exit_code == 2
    assert "is a periodic schedule; remove it from the schedules file and run `taskctl schedules sync`" in result.output


def test_sync_without_a_schedules_file_says_so_and_touches_nothing(configured: str, redis: Redis) -> None:
    result = taskctl("schedules", "sync")

    assert result.exit_code == 1
    assert result.output == "Error: no schedules file at schedules.toml; schedules in Redis left as they are\n"
    assert ROOT.joinpath("schedules.toml").exists()  # the project's own file is elsewhere
