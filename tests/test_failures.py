"""When jobs fail: retries with backoff, permanent errors, timeouts."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.timeouts import JobTimeoutException

from taskctl.connection import connect
from taskctl.enqueue import enqueue_call
from taskctl.exceptions import InvalidArgumentsError
from taskctl.retry import backoff_intervals
from taskctl.status import fetch_job, report, wait_for
from taskctl.timeouts import AlarmDeathPenalty
from tests.conftest import run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from


def fields(output: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in output.splitlines() if ":" in line)}


def test_a_job_that_fails_twice_then_succeeds_ends_finished_after_3_attempts(configured: str, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    job_id = job_id_from(taskctl("enqueue", "flaky", str(counter), "2").output)

    run_burst_worker()

    status = fields(taskctl("status", job_id).output)
    assert (status["status"], status["attempts"], status["retries left"]) == ("finished", "3", "0")
    assert taskctl("result", job_id).output == "3\n"


def test_when_attempts_run_out_the_job_is_failed_with_its_last_error(configured: str, tmp_path: Path) -> None:
    job_id = job_id_from(taskctl("enqueue", "flaky", str(tmp_path / "n"), "5", "--retries", "1").output)

    run_burst_worker()

    status = fields(taskctl("status", job_id).output)
    assert (status["status"], status["attempts"], status["retries left"]) == ("failed", "2", "0")
    assert status["error"] == "taskctl.exceptions.TransientError: attempt 2 failed"


def test_a_permanent_error_fails_after_one_attempt_without_spending_retries(configured: str, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    job_id = job_id_from(taskctl("enqueue", "refuse", str(counter), "no such customer").output)

    run_burst_worker()

    status = fields(taskctl("status", job_id).output)
    assert (status["status"], status["attempts"], status["retries left"]) == ("failed", "1", "0")
    assert status["error"] == "taskctl.exceptions.PermanentError: no such customer"
    assert counter.read_text() == "1"


def test_a_job_that_overruns_its_timeout_is_stopped_and_the_attempt_counts(configured: str) -> None:
    job_id = job_id_from(
        taskctl("enqueue", "slow", "30", "--job-timeout", "1", "--retries", "1", "--backoff", "0").output
    )

    run_burst_worker()

    status = fields(taskctl("status", job_id).output)
    assert (status["status"], status["attempts"]) == ("failed", "2")
    assert "JobTimeoutException" in status["error"]


def test_a_job_that_installed_its_own_alarm_handler_does_not_take_the_next_jobs_timeout(configured: str) -> None:
    # The worker installs its SIGALRM handler once per process (taskctl.timeouts), not before every job.
    first = job_id_from(taskctl("enqueue", "own_alarm_handler").output)
    second = job_id_from(taskctl("enqueue", "slow", "30", "--job-timeout", "1", "--retries", "0").output)

    run_burst_worker()

    assert fields(taskctl("status", first).output)["status"] == "finished"
    status = fields(taskctl("status", second).output)
    assert status["status"] == "failed"
    # Raised in the job by the alarm, not the monitor's end of a process whose job ignored it.
    assert status["error"] == "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (1 seconds)"


def test_the_death_penalty_raises_in_the_job_and_an_alarm_between_jobs_is_ignored() -> None:
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    try:
        started = time.monotonic()
        with (
            pytest.raises(JobTimeoutException, match="maximum timeout value \\(1 seconds\\)"),
            AlarmDeathPenalty(1, JobTimeoutException),
        ):
            time.sleep(5)
        assert time.monotonic() - started < 3

        with AlarmDeathPenalty(5, JobTimeoutException):
            pass
        os.kill(os.getpid(), signal.SIGALRM)  # no penalty armed: RQ's default handler would end the process
        time.sleep(0.1)  # a signal's Python handler runs at the next bytecode; this one raises nothing
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_retry_with_backoff_waits_then_runs_on_the_standard_worker(worker: object, tmp_path: Path) -> None:
    job_id = job_id_from(taskctl("enqueue", "flaky", str(tmp_path / "n"), "1", "--backoff", "1").output)

    final = wait_for(fetch_job(job_id, connect()), timeout=30)
    assert (final.status, final.attempts) == ("finished", 2)


def test_the_declared_policy_applies_and_enqueue_overrides_it(configured: str, redis: Redis) -> None:
    declared = enqueue_call("flaky", ("/tmp/x", 0))
    overridden = enqueue_call("flaky", ("/tmp/x", 0), retries=5, backoff=2)
    settings_default = enqueue_call("add", (1, 2))

    assert (declared.job.retries_left, declared.job.retry_intervals) == (2, [0, 0])
    assert overridden.job.retries_left == 5
    assert overridden.job.retry_intervals is not None and len(overridden.job.retry_intervals) == 5
    assert settings_default.job.retries_left == 3  # TASKCTL_RETRIES default
    assert report(fetch_job(declared.id, redis)).retries_left == 2


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    waits = backoff_intervals(6, base=10, cap=100, rng=random.Random(7))

    ceilings = [10, 20, 40, 80, 100, 100]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert backoff_intervals(3, base=0, cap=100) == [0, 0, 0]
    assert len(set(tuple(backoff_intervals(4, 10, 100)) for _ in range(20))) > 1  # jittered


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retries", "-1"], "Invalid value for '--retries': -1 is not in the range x>=0"),
        (["--backoff", "-5"], "Invalid value for '--backoff': -5.0 is not in the range x>=0"),
    ],
)
def test_negative_retry_options_are_refused(configured: str, redis: Redis, args: list[str], message: str) -> None:
    result = taskctl("enqueue", "add", "1", "2", *args)

    assert result.exit_code == 2
    assert message in result.output
    assert redis.dbsize() == 0


def test_the_api_refuses_negative_retries_before_redis(configured: str, redis: Redis) -> None:
    with pytest.raises(InvalidArgumentsError, match="retries must be 0 or more, got -2"):
        enqueue_call("add", (1, 2), retries=-2)
    assert redis.dbsize() == 0
