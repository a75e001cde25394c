"""Chains, groups and chords on real workers; `taskctl chain`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis import Redis

from taskctl.exceptions import InvalidArgumentsError, JobFailedError, UnknownJobError
from taskctl.workflows import Call, call, chain, chord, group
from tests.conftest import run_burst_worker, taskctl
from tests.test_failures import fields


def test_a_chain_runs_its_steps_in_order_even_across_queue_priorities(configured: str, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    handle = chain(
        Call("record", (str(log), "first"), queue="low"),
        Call("record", (str(log), "second"), queue="default"),
        Call("record", (str(log), "third"), queue="high"),
    )
    assert [step.status for step in handle.steps] == ["queued", "deferred", "deferred"]

    run_burst_worker()

    assert [line.split()[0] for line in log.read_text().splitlines()] == ["first", "second", "third"]
    assert (handle.status, handle.result()) == ("finished", "third")


def test_a_failed_step_stops_the_chain_and_the_rest_are_canceled_visibly(configured: str, tmp_path: Path) -> None:
    log = tmp_path / "never.log"
    handle = chain(
        call("add", 1, 2), call("fail", "boom"), call("record", str(log), "x"), call("record", str(log), "y")
    )

    run_burst_worker()

    assert [step.status for step in handle.steps] == ["finished", "failed", "canceled", "canceled"]
    assert not log.exists()
    assert handle.status == "failed"
    with pytest.raises(JobFailedError, match=r"chain stopped at step 2, fail\('boom'\): RuntimeError: boom"):
        handle.result()
    shown = fields(taskctl("status", handle.steps[3].id).output)
    assert (shown["status"], shown["error"]) == ("canceled", "canceled: fail('boom') failed")


def test_a_group_runs_in_parallel_and_collects_results_in_order(configured: str) -> None:
    handle = group(*(call("add", i, i) for i in range(5)), Call("add", (10, 10), queue="high"))

    run_burst_worker()

    assert handle.results() == [0, 2, 4, 6, 8, 20]


def test_a_chord_callback_receives_all_results_in_order(configured: str) -> None:
    handle = chord([call("add", 1, 1), Call("add", (2, 2), queue="high"), call("add", 3, 3)], call("total", offset=10))
    assert handle.callback.status == "deferred"

    run_burst_worker()

    assert handle.result() == 2 + 4 + 6 + 10
    assert handle.callback.job.description == "total(offset=10)"


def test_a_chord_with_a_failed_member_does_not_run_its_callback(configured: str) -> None:
    handle = chord([call("add", 1, 1), call("fail", "member down")], call("total"))

    run_burst_worker()

    assert handle.callback.status == "canceled"
    with pytest.raises(JobFailedError, match="chord callback not run: fail\\('member down'\\) failed"):
        handle.result()


def test_waiting_on_a_chain_returns_the_last_result(worker: object) -> None:
    handle = chain(call("add", 1, 2), call("add", 3, 4))

    assert handle.result(timeout=30) == 7


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: chain(call("add", 1, 2), call("add", "x", 2)), InvalidArgumentsError, "parameter a: 'x' is not"),
        (lambda: chain(), InvalidArgumentsError, "a chain needs at least one step"),
        (lambda: group(call("add", 1, 2), call("nope")), UnknownJobError, "unknown job 'nope'"),
        (lambda: chord([call("add", 1, 2)], call("add", 1)), InvalidArgumentsError, "parameter a: [] is not"),
    ],
)
def test_a_bad_step_refuses_the_whole_workflow_before_redis(
    configured: str, redis: Redis, build: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        build()  # type: ignore[operator]

    assert message in str(raised.value)
    assert redis.dbsize() == 0


def test_chain_from_the_cli(configured: str, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"

    result = taskctl("chain", "add 1 2", f"record {log} 'hello world'")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Enqueued a chain of 2 jobs:"
    assert re.fullmatch(r"  1\. \S+  add\(1, 2\)  \(queued on default\)", lines[1])
    assert re.fullmatch(rf"  2\. \S+  record\('{log}', 'hello world'\)  \(deferred on high\)", lines[2])
    run_burst_worker()
    assert log.read_text().startswith("hello world ")


def test_chain_from_the_cli_names_the_bad_step_and_writes_nothing(configured: str, redis: Redis) -> None:
    result = taskctl("chain", "add 1 2", "add 1", "send_email 'unclosed")

    assert result.exit_code == 2
    assert "Error: step 2: add: missing argument(s) b (expected: a b)" in result.output
    assert redis.dbsize() == 0
    unbalanced = taskctl("chain", "add 1 2", "send_email 'unclosed")
    assert 'Error: step 2 ("send_email \'unclosed"): No closing quotation' in unbalanced.output


def test_chain_wait_reports_the_failed_step(worker: object) -> None:
    result = taskctl("chain", "add 1 2", "fail boom", "add 3 4", "--wait", "--wait-timeout", "30")

    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("Error: chain stopped at step 2, fail('boom'): RuntimeError: boom")
