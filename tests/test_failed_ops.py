"""Operating on failures from the CLI: list, show, requeue, delete; cancel; unique jobs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from
from tests.test_failures import fields


def failed_job(*args: str) -> str:
    return job_id_from(taskctl("enqueue", *args).output)


def test_failed_lists_queue_call_error_attempts_and_time(configured: str, tmp_path: Path) -> None:
    boom = failed_job("fail", "boom")
    flaky = failed_job("flaky", str(tmp_path / "n"), "9", "--retries", "1", "--queue", "low")
    run_burst_worker()

    result = taskctl("failed")

    assert result.exit_code == 0
    header, *rows = result.output.splitlines()
    assert re.split(r"\s{2,}", header) == ["JOB ID", "QUEUE", "CALL", "ERROR", "ATTEMPTS", "FAILED AT"]
    parsed = {re.split(r"\s{2,}", row)[0]: re.split(r"\s{2,}", row) for row in rows}
    assert parsed[boom][1:5] == ["default", "fail('boom')", "RuntimeError: boom", "1"]
    call = f"flaky({str(tmp_path / 'n')!r}, 9)"
    assert parsed[flaky][1:5] == ["low", call[:49] + "…", "taskctl.exceptions.TransientError: attempt 2 failed", "2"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", parsed[boom][5])
    only_low = taskctl("failed", "--queue", "low").output
    assert flaky in only_low and boom not in only_low


def test_failed_show_prints_the_whole_traceback(configured: str) -> None:
    job_id = failed_job("fail", "out of paper")
    run_burst_worker()

    result = taskctl("failed", "show", job_id)

    assert result.exit_code == 0
    assert result.output.startswith("Traceback (most recent call last):")
    assert 'tests/testjobs.py", line' in result.output
    assert result.output.rstrip().endswith("RuntimeError: out of paper")


def test_requeue_makes_a_failed_job_run_again_and_finish(configured: str, tmp_path: Path) -> None:
    job_id = failed_job("flaky", str(tmp_path / "n"), "1", "--retries", "0")
    run_burst_worker()
    assert fields(taskctl("status", job_id).output)["status"] == "failed"

    assert taskctl("failed", "requeue", job_id).output == "Requeued 1 job(s).\n"
    run_burst_worker()

    assert fields(taskctl("status", job_id).output)["status"] == "finished"
    assert taskctl("result", job_id).output == "2\n"
    assert taskctl("failed").output == "No failed jobs.\n"


def test_requeue_all_takes_only_the_given_queue(configured: str, redis: Redis) -> None:
    on_default = failed_job("fail", "a")
    on_low = failed_job("fail", "b", "--queue", "low")
    run_burst_worker()

    assert taskctl("failed", "requeue", "--all", "--queue", "low").output == "Requeued 1 job(s).\n"

    assert redis.lrange("rq:queue:low", 0, -1) == [on_low.encode()]
    assert fields(taskctl("status", on_default).output)["status"] == "failed"


def test_delete_removes_failed_jobs_for_good(configured: str) -> None:
    first, second = failed_job("fail", "a"), failed_job("fail", "b")
    run_burst_worker()

    assert taskctl("failed", "delete", "--all").output == "Deleted 2 job(s).\n"

    assert taskctl("failed").output == "No failed jobs.\n"
    for job_id in (first, second):
        assert taskctl("status", job_id).exit_code == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["failed", "requeue"], 2, "Error: give job ids or --all (not both)"),
        (["failed", "delete", "x", "--all"], 2, "Error: give job ids or --all (not both)"),
        (["failed", "requeue", "x", "--queue", "low"], 2, "Error: --queue goes with --all"),
        (["failed", "--queue", "urgent"], 2, "Error: unknown queue 'urgent'; expected one of: high, default, low"),
        (["failed", "requeue", "--all", "--queue", "urgent"], 2, "Error: unknown queue 'urgent'"),
        (["failed", "requeue", "nope"], 2, "Error: no job with id 'nope'"),
        (["failed", "show", "nope"], 2, "Error: no job with id 'nope'"),
        (["cancel", "nope"], 2, "Error: no job with id 'nope'"),
    ],
)
def test_bad_failure_operations_are_refused(configured: str, args: list[str], code: int, message: str) -> None:
    result = taskctl(*args)

    assert result.exit_code == code
    assert message in result.output


def test_requeueing_a_job_that_did_not_fail_is_refused(configured: str) -> None:
    job_id = failed_job("add", "1", "2")
    run_burst_worker()

    result = taskctl("failed", "requeue", job_id)

    assert result.exit_code == 1
    assert result.output == f"Error: job {job_id} is finished, not failed\n"


def test_cancel_stops_a_queued_job_from_running(configured: str, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    job_id = failed_job("record", str(log), "x")

    assert taskctl("cancel", job_id).output == f"Cancelled {job_id}.\n"
    run_burst_worker()

    assert fields(taskctl("status", job_id).output)["status"] == "canceled"
    assert not log.exists()


def test_cancel_refuses_a_job_that_already_ran(configured: str) -> None:
    job_id = failed_job("add", "1", "2")
    run_burst_worker()

    result = taskctl("cancel", job_id)

    assert result.exit_code == 1
    assert result.output == (
        f"Error: job {job_id} is finished; only queued, scheduled or deferred jobs can be cancelled\n"
    )


def test_a_unique_job_is_refused_while_one_with_its_id_exists(configured: str, redis: Redis) -> None:
    first = taskctl("enqueue", "add", "1", "2", "--job-id", "nightly-total", "--unique")
    second = taskctl("enqueue", "add", "3", "4", "--job-id", "nightly-total", "--unique")

    assert first.exit_code == 0
    assert second.exit_code == 1
    assert second.output == "Error: a job with id 'nightly-total' exists already; not enqueued (unique)\n"
    assert redis.lrange("rq:queue:default", 0, -1) == [b"nightly-total"]
    assert fields(taskctl("status", "nightly-total").output)["call"] == "add(1, 2)"


def test_unique_without_a_job_id_is_a_usage_error(configured: str, redis: Redis) -> None:
    result = taskctl("enqueue", "add", "1", "2", "--unique")

    assert result.exit_code == 2
    assert "Error: unique needs a job id: the id is what makes the job unique" in result.output
    assert redis.dbsize() == 0
