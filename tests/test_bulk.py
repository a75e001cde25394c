"""`taskctl enqueue-many` and the bulk API: every line checked, nothing half-imported, pipelined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

import cli
from taskctl.bulk import read_calls
from taskctl.enqueue import enqueue_many
from tests.conftest import run_burst_worker, taskctl


def test_ten_thousand_lines_enqueue_correctly_and_in_order(configured: str, redis: Redis, tmp_path: Path) -> None:
    source = tmp_path / "adds.jsonl"
    source.write_text("".join(json.dumps([i, i]) + "\n" for i in range(10_000)))

    result = taskctl("enqueue-many", "add", "--from", str(source))

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "Enqueued 10000 add job(s) on default."
    ids = [i.decode() for i in redis.lrange("rq:queue:default", 0, -1)]
    assert len(ids) == 10_000
    for position in (0, 4_321, 9_999):
        job = Job.fetch(ids[position], connection=redis, serializer=JSONSerializer)
        assert (job.args, job.description, job.timeout) == ([position, position], f"add({position}, {position})", 180)


def test_a_bad_line_enqueues_nothing_and_is_named_by_number(configured: str, redis: Redis, tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text('[1, 2]\n\n["x", 2]\n{"a": 1, "b": 2}\n{"a": 1}\nnot json\n42\n[3, 4]\n')

    result = taskctl("enqueue-many", "add", "--from", str(source))

    assert result.exit_code == 2
    assert "line 3: add: parameter a: 'x' is not an integer" in result.output
    assert "line 5: add(a: int, b: int) -> int: missing a required argument: 'b'" in result.output
    assert "line 6: not valid JSON (Expecting value)" in result.output
    assert "line 7: expected a JSON array (the arguments) or object (the keyword arguments)" in result.output
    assert f"Error: 4 bad line(s) in {source}; nothing enqueued (--skip-invalid enqueues the rest)" in result.output
    assert redis.dbsize() == 0


def test_skip_invalid_enqueues_the_good_lines(configured: str, redis: Redis, tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text('[1, 2]\n["x", 2]\n{"a": 5, "b": 6}\n')

    result = taskctl("enqueue-many", "add", "--from", str(source), "--skip-invalid", "--queue", "low")

    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == "Enqueued 2 add job(s) on low; skipped 1 bad line(s)."
    stored = [
        Job.fetch(i.decode(), connection=redis, serializer=JSONSerializer) for i in redis.lrange("rq:queue:low", 0, -1)
    ]
    assert [(job.args, job.kwargs) for job in stored] == [([1, 2], {}), ([], {"a": 5, "b": 6})]
    run_burst_worker()
    assert taskctl("queues").output.splitlines()[3].split()[:4] == ["low", "0", "0", "2"]


def test_csv_with_a_header_of_parameter_names(configured: str, redis: Redis, tmp_path: Path) -> None:
    source = tmp_path / "mails.csv"
    source.write_text('to,subject,body\nann@example.com,Hello,"Hi, Ann"\nbob@example.com,Hello,Hi Bob\n')

    result = taskctl("enqueue-many", "send_email", "--from", str(source))

    assert result.output.splitlines()[-1] == "Enqueued 2 send_email job(s) on high."
    first = Job.fetch(redis.lindex("rq:queue:high", 0).decode(), connection=redis, serializer=JSONSerializer)  # type: ignore[union-attr]
    assert first.kwargs == {"to": "ann@example.com", "subject": "Hello", "body": "Hi, Ann"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,c\n1,2\n", "line 1: unknown column(s) c; columns are add's parameters: a, b"),
        ("a,b\n1,x\n", "line 2: add: parameter b: 'x' is not an integer"),
        ("a,b\n1,2,3\n", "line 2: more cells than the 2 columns of the header"),
    ],
)
def test_bad_csv_is_refused_with_the_line(
    configured: str, redis: Redis, tmp_path: Path, content: str, message: str
) -> None:
    source = tmp_path / "adds.csv"
    source.write_text(content)

    result = taskctl("enqueue-many", "add", "--from", str(source))

    assert result.exit_code == 2
    assert message in result.output
    assert redis.dbsize() == 0


def test_stdin_is_read_with_a_dash(configured: str, redis: Redis) -> None:
    result = CliRunner().invoke(cli.main, ["enqueue-many", "add", "--from", "-"], input="[1, 2]\n[3, 4]\n")

    assert result.output.splitlines()[-1] == "Enqueued 2 add job(s) on default."
    assert redis.llen("rq:queue:default") == 2


def test_the_bulk_api_returns_ids_in_order_in_batches(configured: str, redis: Redis) -> None:
    calls, bad = read_calls("add", (json.dumps([i, 1]) for i in range(25)))
    seen: list[int] = []

    ids = enqueue_many(calls, batch_size=10, progress=seen.append)

    assert bad == [] and seen == [10, 10, 5]
    assert [i.decode() for i in redis.lrange("rq:queue:default", 0, -1)] == ids
