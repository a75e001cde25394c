"""The Python API a web application calls: the same checks as the CLI, raised before Redis is touched."""

from __future__ import annotations

import pytest
from redis import Redis

from taskctl.enqueue import enqueue, enqueue_call
from taskctl.exceptions import (
    InvalidArgumentsError,
    InvalidQueueError,
    JobFailedError,
    JobStateError,
    NoResultError,
    NoSuchJobError,
    UnknownJobError,
)
from taskctl.handle import JobHandle
from tests import testjobs
from tests.conftest import run_burst_worker


def test_enqueue_by_name_or_by_function_uses_the_declared_queue(configured: str, redis: Redis) -> None:
    by_name = enqueue("add", 1, 2)
    by_function = enqueue(testjobs.add, a=3, b=4)

    assert (by_name.queue, by_name.job.args, by_name.job.kwargs) == ("default", [1, 2], {})
    assert (by_function.queue, by_function.job.args, by_function.job.kwargs) == ("default", [], {"a": 3, "b": 4})
    assert redis.llen("rq:queue:default") == 2


def test_enqueue_call_takes_queue_timeout_and_id(configured: str) -> None:
    job = enqueue_call("add", (1, 2), queue="low", job_timeout=9, job_id="order-42-total")

    assert (job.id, job.queue, job.job.timeout) == ("order-42-total", "low", 9)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: enqueue("add", "1", 2), InvalidArgumentsError, "add: parameter a: '1' is not an integer"),
        (lambda: enqueue("add", True, 2), InvalidArgumentsError, "add: parameter a: True is not an integer"),
        (
            lambda: enqueue("add", 1),
            InvalidArgumentsError,
            "add(a: int, b: int) -> int: missing a required argument: 'b'",
        ),
        (lambda: enqueue("add", 1, 2, c=3), InvalidArgumentsError, "got an unexpected keyword argument 'c'"),
        (
            lambda: enqueue("typed", 1, 1.0, True, ["a"], {"when": {1, 2}}),
            InvalidArgumentsError,
            "typed: parameter options: value cannot be stored as JSON (Object of type set is not JSON serializable)",
        ),
        (
            lambda: enqueue("typed", 1, 1, True, [], {}, mode="medium"),
            InvalidArgumentsError,
            "typed: parameter mode: 'medium' is not one of 'fast', 'slow'",
        ),
        (lambda: enqueue(testjobs.touch, "x"), UnknownJobError, "'touch' is not a catalog job"),
        (lambda: enqueue_call("add", (1, 2), queue="urgent"), InvalidQueueError, "unknown queue 'urgent'"),
        (
            lambda: enqueue_call("add", (1, 2), job_timeout=-1),
            InvalidArgumentsError,
            "job_timeout must be a positive number of seconds, got -1",
        ),
    ],
)
def test_bad_calls_raise_before_anything_reaches_redis(
    configured: str, redis: Redis, call: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        call()  # type: ignore[operator]

    assert message in str(raised.value)
    assert redis.dbsize() == 0


def test_a_handle_gives_the_result_when_the_job_finishes(worker: object) -> None:
    handle = enqueue("add", 20, 22)

    assert handle.result(timeout=30) == 42
    assert JobHandle.fetch(handle.id).status == "finished"


def test_a_handle_raises_the_failure_and_can_cancel_a_waiting_job(configured: str) -> None:
    waiting = enqueue("add", 1, 2)
    with pytest.raises(NoResultError, match="is queued; it has no result yet"):
        waiting.result()

    waiting.cancel()

    assert JobHandle.fetch(waiting.id).status == "canceled"
    with pytest.raises(JobStateError, match="only queued, scheduled or deferred jobs can be cancelled"):
        waiting.cancel()
    with pytest.raises(NoSuchJobError):
        JobHandle.fetch("no-such-job")


def test_a_handle_reports_a_failed_job(configured: str) -> None:
    handle = enqueue("fail", "out of ink")
    run_burst_worker()

    with pytest.raises(JobFailedError, match=f"job {handle.id} failed: RuntimeError: out of ink"):
        handle.result(timeout=5)


def test_a_job_declared_to_keep_no_result_is_enqueued_with_result_ttl_0_and_a_bad_ttl_is_refused(
    configured: str, redis: Redis
) -> None:
    from taskctl.declare import job

    handle = enqueue("add_quietly", 2, 3)
    assert redis.hget(f"rq:job:{handle.id}", "result_ttl") == b"0"
    assert redis.hget(f"rq:job:{enqueue('add', 2, 3).id}", "result_ttl") == b"86400"  # the settings' default
    with pytest.raises(ValueError, match="result_ttl must be 0 or more seconds, or -1, got -2"):
        job(result_ttl=-2)(lambda: None)
