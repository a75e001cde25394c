"""`taskctl jobs`, `queues`, `status`, `result` and `enqueue --wait`, against real workers."""

from __future__ import annotations

import re
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from


def test_jobs_lists_each_job_with_queue_signature_and_summary(configured: str) -> None:
    result = taskctl("jobs")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["JOB", "QUEUE", "SIGNATURE", "DESCRIPTION"]
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line) for line in lines[1:]}
    assert rows["add"] == ["add", "default", "add(a: int, b: int)", "Add two integers."]
    assert rows["send_email"][:3] == [
        "send_email",
        "high",
        "send_email(to: str, subject: str, body: str)",
    ]
    assert rows["send_email"][3].startswith("Send an email")
    assert "touch" not in rows  # importable, but not declared as a job


def test_a_job_enqueued_by_the_cli_runs_on_a_stock_rq_worker(configured: str) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "2", "3").output)
    assert "status:        queued" in taskctl("status", job_id).output

    run_burst_worker()

    status = taskctl("status", job_id)
    assert status.exit_code == 0
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in status.output.splitlines())
    assert fields["job"] == "add"
    assert fields["call"] == "add(2, 3)"
    assert fields["queue"] == "default"
    assert fields["status"] == "finished"
    for stamp in ("enqueued at", "started at", "ended at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", fields[stamp]), fields[stamp]
    assert taskctl("result", job_id).output == "5\n"


def test_a_failed_job_shows_its_error_and_has_no_result(configured: str) -> None:
    job_id = job_id_from(taskctl("enqueue", "fail", "out of paper").output)
    run_burst_worker()

    assert "status:        failed" in taskctl("status", job_id).output
    assert "error:         RuntimeError: out of paper" in taskctl("status", job_id).output
    result = taskctl("result", job_id)
    assert result.exit_code == 1
    assert result.output == f"Error: job {job_id} failed: RuntimeError: out of paper\n"


def test_result_of_a_queued_job_says_it_has_none_yet(configured: str) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "1", "1").output)

    result = taskctl("result", job_id)

    assert result.exit_code == 1
    assert result.output == f"Error: job {job_id} is queued; it has no result yet\n"


def test_wait_prints_the_result_when_the_job_finishes(worker: object) -> None:
    result = taskctl("enqueue", "add", "20", "22", "--wait", "--wait-timeout", "30")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["42"]


def test_wait_prints_the_error_of_a_failed_job(worker: object) -> None:
    result = taskctl("enqueue", "fail", "boom", "--wait", "--wait-timeout", "30")

    assert result.exit_code == 1
    assert result.output.splitlines()[-1].endswith("failed: RuntimeError: boom")


def test_wait_gives_up_after_its_timeout_and_leaves_the_job_queued(configured: str) -> None:
    result = taskctl("enqueue", "add", "1", "2", "--wait", "--wait-timeout", "0.3")

    assert result.exit_code == 1
    job_id = job_id_from(result.output)
    assert f"Error: job {job_id} is still queued after 0.3s" in result.output
    assert "status:        queued" in taskctl("status", job_id).output


def test_workers_take_high_before_default_before_low(configured: str, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    for queue in ("low", "default", "high"):
        taskctl("enqueue", "record", str(log), queue, "--queue", queue)

    run_burst_worker()

    assert [line.split()[0] for line in log.read_text().splitlines()] == ["high", "default", "low"]


def test_queues_shows_counts_per_queue_and_live_workers(worker: object, redis: Redis) -> None:
    taskctl("enqueue", "add", "1", "2", "--wait", "--wait-timeout", "30")
    taskctl("enqueue", "fail", "x", "--wait", "--wait-timeout", "30")
    taskctl("enqueue", "add", "1", "2", "--queue", "low", "--job-timeout", "5")  # stays queued? no: the worker takes it

    result = taskctl("queues")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["QUEUE", "QUEUED", "STARTED", "FINISHED", "FAILED", "DEFERRED", "SCHEDULED"]
    default = lines[2].split()
    assert default[0] == "default" and default[3:5] == ["1", "1"]
    assert "Workers: 1" in result.output
    assert re.search(r"^\S+\.\d+\s+taskctl\s+(idle|busy)\s+high,default,low\s", result.output, re.M)


def test_workers_refuse_a_job_that_names_a_function_outside_the_catalog(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """Someone with Redis access writes a job naming an importable function; it must not run."""
    marker = tmp_path / "pwned"
    planted = Queue("default", connection=redis, serializer=JSONSerializer)
    job_os = planted.enqueue_call("os.system", args=(f"touch {marker}",))
    job_fn = planted.enqueue_call("tests.testjobs.touch", args=(str(marker),))

    run_burst_worker()

    for job in (job_os, job_fn):
        status = taskctl("status", job.id).output
        assert "status:        failed" in status
        assert "is not an allowed job: workers run only functions from the job catalog" in status
    assert not marker.exists()


def test_status_shows_the_progress_a_long_job_reported(configured: str) -> None:
    job_id = job_id_from(taskctl("enqueue", "count_to", "4").output)
    run_burst_worker()

    assert "progress:      4/4 (100%) step 4\n" in taskctl("status", job_id).output


def test_progress_reporting_outside_a_worker_does_nothing() -> None:
    from tests.testjobs import count_to

    assert count_to(3) == 3
