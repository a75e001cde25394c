"""`taskctl enqueue`: what reaches Redis, and what never does."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import zlib

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import BIN, free_port, taskctl


def job_id_from(output: str) -> str:
    # "Enqueued add as <id> on queue default"
    return output.split(" as ", 1)[1].split()[0]


def test_enqueue_prints_the_job_id_and_its_declared_queue(configured: str, redis: Redis) -> None:
    result = taskctl("enqueue", "send_email", "user@example.com", "Order confirmed", "Thank you")

    assert result.exit_code == 0, result.output
    job_id = job_id_from(result.output)
    assert result.output == f"Enqueued send_email as {job_id} on queue high\n"
    assert redis.lrange("rq:queue:high", 0, -1) == [job_id.encode()]


def test_enqueued_jobs_are_json_that_plain_rq_and_rq_info_can_read(configured: str, redis: Redis) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "2", "3").output)

    raw = redis.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    # RQ compresses what it stores; inside is plain JSON, no pickle.
    assert json.loads(zlib.decompress(raw)) == ["tests.testjobs.add", None, [2, 3], {}]
    plain = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert (plain.func_name, plain.args, plain.description) == ("tests.testjobs.add", [2, 3], "add(2, 3)")
    info = subprocess.run(
        [str(BIN / "rq"), "info", "-u", configured, "--only-queues"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert re.search(r"^default\s+\|\S* 1, 0 executing", info.stdout, re.M), info.stdout


def test_arguments_are_converted_with_the_annotations(configured: str, redis: Redis) -> None:
    result = taskctl("enqueue", "typed", "3", "0.5", "yes", '["a", "b"]', '{"k": 1}', "mode=slow", "note=hi")

    assert result.exit_code == 0, result.output
    job = Job.fetch(job_id_from(result.output), connection=redis, serializer=JSONSerializer)
    assert job.args == [3, 0.5, True, ["a", "b"], {"k": 1}]
    assert job.kwargs == {"mode": "slow", "note": "hi"}
    assert job.origin == "low"


def test_queue_and_timeout_can_be_overridden(configured: str, redis: Redis) -> None:
    result = taskctl("enqueue", "add", "1", "1", "--queue", "high", "--job-timeout", "7", "--job-id", "my-id")

    assert result.output == "Enqueued add as my-id on queue high\n"
    job = Job.fetch("my-id", connection=redis, serializer=JSONSerializer)
    assert (job.origin, job.timeout) == ("high", 7)


BAD_INPUT = [
    (["nope"], "unknown job 'nope'; known jobs: add, add_quietly, count_to, fail, fenced_steps, flaky,"),
    (["add", "1"], "add: missing argument(s) b (expected: a b)"),
    (["add", "1", "2", "3"], "add takes 2 argument(s) (a b), got extra value '3'"),
    (["add", "one", "2"], "add: parameter a: 'one' is not an integer"),
    (["add", "1", "b=x"], "add: parameter b: 'x' is not an integer"),
    (["add", "a=1", "2"], "add: positional value '2' after a keyword argument"),
    (["typed", "1", "x", "yes", "[]", "{}"], "typed: parameter ratio: 'x' is not a number"),
    (["typed", "1", "1", "maybe", "[]", "{}"], "typed: parameter enabled: 'maybe' is not true or false"),
    (["typed", "1", "1", "yes", "[oops", "{}"], "typed: parameter tags: '[oops' is not valid JSON"),
    (["typed", "1", "1", "yes", "{}", "{}"], "typed: parameter tags: {} is not a JSON list"),
    (["typed", "1", "1", "yes", "[]", "[]"], "typed: parameter options: [] is not a JSON object"),
    (
        ["typed", "1", "1", "yes", "[]", "{}", "mode=medium"],
        "typed: parameter mode: 'medium' is not one of 'fast', 'slow'",
    ),
    (["add", "1", "2", "--queue", "urgent"], "unknown queue 'urgent'; expected one of: high, default, low"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_refused_with_exit_2_and_nothing_written(
    configured: str, redis: Redis, args: list[str], message: str
) -> None:
    result = taskctl("enqueue", *args)

    assert result.exit_code == 2
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output
    assert redis.dbsize() == 0


def test_a_non_positive_job_timeout_is_refused_by_click(configured: str, redis: Redis) -> None:
    result = taskctl("enqueue", "add", "1", "2", "--job-timeout", "0")

    assert result.exit_code == 2
    assert "Invalid value for '--job-timeout': 0 is not in the range x>=1" in result.output
    assert redis.dbsize() == 0


@pytest.mark.parametrize(
    "command",
    [["enqueue", "add", "1", "2"], ["status", "some-id"], ["result", "some-id"], ["queues"]],
    ids=lambda c: c[0],
)
def test_every_command_names_the_url_when_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    started = time.monotonic()
    result = taskctl(*command)

    assert result.exit_code == 1
    masked = url.replace("s3cret", "***")
    assert result.output.startswith(f"Error: cannot reach Redis at {masked}: ")
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 10  # bounded: the connect timeout, not the OS's


def test_unknown_job_id_is_a_usage_error(configured: str) -> None:
    for command in ("status", "result"):
        result = taskctl(command, "no-such-id")
        assert result.exit_code == 2
        assert "Error: no job with id 'no-such-id' (never enqueued, or expired after its TTL)" in result.output


def test_enqueue_names_the_url_when_what_answers_is_not_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing PINGs before the enqueue: its own first command is what finds out.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            peer, _ = server.accept()
            with peer:
                peer.recv(4096)
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        from taskctl.settings import get_settings

        get_settings.cache_clear()
        result = taskctl("enqueue", "add", "1", "2")

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach Redis at redis://127.0.0.1:{port}/0: ")
    assert "protocol error" in result.output.lower()  # redis-py's words, or hiredis's
    assert "Traceback" not in result.output
