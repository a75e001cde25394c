"""Operating on failures from the CLI: list, show, requeue, delete; cancel; unique jobs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from
from tests.test_failures import fields


def failed_job(*args: str) -> str:
    return job_id_from(taskctl("enqueue", *args).output)


def rows(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line) for line in text.splitlines()]


def test_failed_summarizes_by_job_and_cause_then_lists_the_latest(configured: str, tmp_path: Path) -> None:
    orders = [failed_job("fail", f"order {n} refused") for n in (7, 42, 4711)]
    flaky = failed_job("flaky", str(tmp_path / "n"), "9", "--retries", "1", "--queue", "low")
    run_burst_worker()

    result = taskctl("failed", "--limit", "2")

    assert result.exit_code == 0
    summary, latest = result.output.split("\n\n")
    title, header, *causes = rows(summary)
    assert title == ["4 failed jobs, by job and cause:"]
    assert header == ["JOB", "CAUSE", "FAILED", "FIRST", "LAST", "QUEUES"]
    assert [row[:3] + row[5:] for row in causes] == [
        ["fail", "RuntimeError: order <n> refused", "3", "default"],
        ["flaky", "taskctl.exceptions.TransientError: attempt <n> failed", "1", "low"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cell) for row in causes for cell in row[3:5])
    title, header, *listed = rows(latest)
    assert title == ["The latest 2 (--limit for more; `taskctl failed show ID` for a traceback):"]
    assert header == ["JOB ID", "QUEUE", "CALL", "ERROR", "ATTEMPTS", "FAILED AT"]
    call = f"flaky({str(tmp_path / 'n')!r}, 9)"
    assert listed[0][:5] == [flaky, "low", call[:49] + "…", "taskctl.exceptions.TransientError: attempt 2 failed", "2"]
    assert listed[1][:5] == [orders[2], "default", "fail('order 4711 refused')", "RuntimeError: order 4711 refused",
                             "1"]  # fmt: skip


def test_failed_filters_by_job_queue_cause_and_time(configured: str, tmp_path: Path) -> None:
    refused = failed_job("fail", "order 7 refused")
    timed_out = failed_job("fail", "order 8 timed out", "--queue", "low")
    flaky = failed_job("flaky", str(tmp_path / "n"), "9", "--retries", "0")
    run_burst_worker()

    def listed(*filters: str) -> set[str]:
        result = taskctl("failed", "--json", *filters)
        assert result.exit_code == 0, result.output
        return {job["id"] for job in json.loads(result.output)["latest"]}

    assert listed() == {refused, timed_out, flaky}
    assert listed("--job", "fail") == {refused, timed_out}
    assert listed("--queue", "low") == {timed_out}
    assert listed("--cause", "refused") == {refused}
    assert listed("--cause", "runtimeerror") == {refused, timed_out}
    assert listed("--cause", "TransientError: attempt <n> failed") == {flaky}
    assert listed("--job", "fail", "--cause", "RuntimeError", "--queue", "default") == {refused}
    assert listed("--since", "1h") == {refused, timed_out, flaky}
    assert listed("--until", "1h") == set()
    assert listed("--since", "2020-01-01T00:00", "--until", "2999-01-01T00:00+01:00") == {refused, timed_out, flaky}
    assert taskctl("failed", "--until", "1h").output == "No failed job matches (of 3 failed).\n"


def test_failed_json_holds_the_summary_and_the_latest(configured: str) -> None:
    job_id = failed_job("fail", "order 7 refused")
    run_burst_worker()

    found = json.loads(taskctl("failed", "--json").output)

    assert found["failed"] == found["matched"] == 1
    [cause] = found["causes"]
    assert cause["job"] == "fail" and cause["cause"] == "RuntimeError: order <n> refused" and cause["count"] == 1
    assert cause["first_failed"] == cause["last_failed"] == found["latest"][0]["failed_at"]
    assert found["latest"][0] == {
        "id": job_id, "queue": "default", "job": "fail", "call": "fail('order 7 refused')", "attempts": 1,
        "error": "RuntimeError: order 7 refused", "cause": "RuntimeError: order <n> refused",
        "failed_at": found["latest"][0]["failed_at"],
    }  # fmt: skip


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
    ("args", "message"),
    [
        (["failed", "requeue"], "Error: say which failed jobs: give job ids, --all, or filters (--job, --queue, "),
        (["failed", "delete", "x", "--all"], "Error: give job ids, or --all and filters (--job, --queue, --cause, "),
        (["failed", "requeue", "x", "--queue", "low"], "Error: give job ids, or --all and filters"),
        (["failed", "--queue", "urgent"], "Error: unknown queue 'urgent'; expected one of: high, default, low"),
        (["failed", "requeue", "--all", "--queue", "urgent"], "Error: unknown queue 'urgent'"),
        (["failed", "requeue", "nope"], "Error: no job with id 'nope'"),
        (["failed", "show", "nope"], "Error: no job with id 'nope'"),
        (["cancel", "nope"], "Error: no job with id 'nope'"),
        (["failed", "--job", "nope"], "Error: unknown job 'nope'; known jobs: add, add_quietly,"),
        (["failed", "delete", "--job", " "], "Error: --job is empty; expected a job's name"),
        (["failed", "--cause", "SMTP"], "Error: no failed job's cause matches 'SMTP'; the causes are: RuntimeError: b"),
        (["failed", "requeue", "--cause", "SMTP"], "Error: no failed job's cause matches 'SMTP'"),
        (["failed", "--since", "1h", "--until", "2h"], "the window is empty"),
        (["failed", "--since", "yesterday"], "Error: --since 'yesterday' is neither a time ago (30m, 2h, 1d) nor "),
        (["failed", "delete", "--until", "12/05/2026"], "Error: --until '12/05/2026' is neither a time ago"),
        (["failed", "requeue", "--all", "--rate", "0/s"], "Error: --rate: rate '0/s' is not starts per period; "),
        (["failed", "requeue", "--all", "--rate", "fast"], "expected e.g. 20/s, 100/m, 5/30s"),
        (["failed", "--limit", "-1"], "Invalid value for '--limit': -1 is not in the range x>=0."),
        (
            ["failed", "--cause", "boom", "delete"],
            "Error: --cause before 'delete' would not narrow it; put the filters "
            "after it: taskctl failed delete --cause ...",
        ),
    ],
)
def test_bad_failure_operations_are_refused_with_what_is_expected(
    configured: str, redis: Redis, args: list[str], message: str
) -> None:
    job_id = failed_job("fail", "boom")
    run_burst_worker()

    result = taskctl(*args)

    assert result.exit_code == 2
    assert message in result.output
    assert redis.zrange("rq:failed:default", 0, -1) == [job_id.encode()]
    assert redis.hget(f"rq:job:{job_id}", "status") == b"failed"


def test_a_requeue_or_delete_that_matches_nothing_says_so_and_changes_nothing(configured: str, redis: Redis) -> None:
    job_id = failed_job("fail", "boom")
    run_burst_worker()

    for action in ("requeue", "delete"):
        result = taskctl("failed", action, "--cause", "boom", "--queue", "low")

        assert (result.exit_code, result.output) == (0, f"No failed job matches; nothing {action}d.\n")
    assert redis.zrange("rq:failed:default", 0, -1) == [job_id.encode()]
    nothing = taskctl("failed", "requeue", "--all", "--queue", "high")
    assert nothing.output == "No failed job matches; nothing requeued.\n"


def test_a_dry_run_says_how_many_and_which_and_changes_nothing(configured: str, redis: Redis) -> None:
    refused = [failed_job("fail", f"order {n} refused") for n in (1, 2)]
    other = failed_job("fail", "disk full")
    run_burst_worker()
    before = {key: redis.dump(key) for key in redis.keys("*")}

    result = taskctl("failed", "requeue", "--cause", "refused", "--dry-run")

    assert result.exit_code == 0
    title, _, cause = rows(result.output)
    assert title == ["Would requeue 2 failed job(s):"]
    assert cause[:3] + cause[5:] == ["fail", "RuntimeError: order <n> refused", "2", "default"]
    assert taskctl("failed", "delete", refused[0], other, "--dry-run").output == (
        f"Would delete 2 failed job(s): {refused[0]}, {other}\n"
    )
    assert {key: redis.dump(key) for key in redis.keys("*")} == before


def test_requeue_by_cause_puts_back_that_cause_only_and_they_run_again(configured: str, redis: Redis) -> None:
    refused = [failed_job("fail", f"order {n} refused") for n in (1, 2, 3)]
    other = failed_job("fail", "disk full", "--queue", "low")
    run_burst_worker()

    result = taskctl("failed", "requeue", "--cause", "refused", "--rate", "20/s")

    assert result.output == "Requeued 3 job(s).\n"
    assert sorted(redis.lrange("rq:queue:default", 0, -1)) == sorted(job_id.encode() for job_id in refused)
    assert redis.zrange("rq:failed:default", 0, -1) == []
    assert redis.zrange("rq:failed:low", 0, -1) == [other.encode()]
    run_burst_worker()
    # They fail again (the job always raises): each ran once more, one more attempt each.
    assert [fields(taskctl("status", job_id).output)["attempts"] for job_id in refused] == ["2", "2", "2"]
    assert fields(taskctl("status", other).output)["attempts"] == "1"


def test_a_requeue_resumed_with_its_until_leaves_alone_the_jobs_that_failed_again(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    down, log = tmp_path / "down", tmp_path / "runs.log"
    down.mkdir()
    (down / "mail").touch()
    jobs = [failed_job("outage", str(log), str(down), "mail", str(n)) for n in range(3)]
    run_burst_worker()
    began = datetime.now(UTC).isoformat()

    assert taskctl("failed", "requeue", "--job", "outage", "--until", began).output == "Requeued 3 job(s).\n"
    run_burst_worker()  # the service is still down: they fail again, after `began`
    again = taskctl("failed", "requeue", "--job", "outage", "--until", began)

    assert again.output == "No failed job matches; nothing requeued.\n"
    assert sorted(log.read_text().splitlines()) == sorted(f"mail {n}" for n in range(3) for _ in range(2))
    assert sorted(redis.zrange("rq:failed:default", 0, -1)) == sorted(job_id.encode() for job_id in jobs)


def test_delete_by_job_and_window_removes_only_those(configured: str, redis: Redis, tmp_path: Path) -> None:
    fails = [failed_job("fail", "boom") for _ in range(2)]
    flaky = failed_job("flaky", str(tmp_path / "n"), "9", "--retries", "0")
    run_burst_worker()

    assert taskctl("failed", "delete", "--job", "fail", "--since", "10m").output == "Deleted 2 job(s).\n"

    assert redis.zrange("rq:failed:default", 0, -1) == [flaky.encode()]
    for job_id in fails:
        assert not redis.exists(f"rq:job:{job_id}", f"rq:results:{job_id}")


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


def test_the_python_api_takes_the_cli_parameters(configured: str, redis: Redis) -> None:
    from taskctl.failed_actions import delete_failed, requeue_failed
    from taskctl.failures import summarize

    refused = sorted(failed_job("fail", f"order {n} refused") for n in (1, 2))
    full = failed_job("fail", "disk full")
    run_burst_worker()

    preview = requeue_failed(cause="refused", since="10m", dry_run=True)
    assert sorted(preview.selection.job_ids) == refused and preview.done == []
    assert [(c.cause, c.count) for c in summarize(preview.selection.failed)] == [("RuntimeError: order <n> refused", 2)]
    assert redis.llen("rq:queue:default") == 0

    assert sorted(requeue_failed(cause="refused", rate="100/s").done) == refused
    assert delete_failed(job="fail").done == [full]
    assert sorted(redis.lrange("rq:queue:default", 0, -1)) == [job_id.encode() for job_id in refused]


def test_the_python_listing_takes_the_cli_parameters(configured: str) -> None:
    from taskctl.failures import list_failed

    refused = [failed_job("fail", f"order {n} refused") for n in (1, 2)]
    failed_job("fail", "disk full")
    run_burst_worker()

    found = list_failed(cause="refused", since="10m", limit=1)

    assert (found.total, found.matched) == (3, 2)
    assert [(c.job, c.cause, c.count) for c in found.causes] == [("fail", "RuntimeError: order <n> refused", 2)]
    [latest] = found.latest  # order 2 failed last
    assert (latest.id, latest.description, latest.attempts) == (refused[1], "fail('order 2 refused')", 1)
