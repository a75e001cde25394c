"""`taskctl enqueue-many` and the bulk API: every line checked, nothing half-imported, pipelined."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

import cli
from taskctl.bulk import read_calls
from taskctl.enqueue import Prepared, enqueue_many, prepare
from taskctl.rqclasses import Queue
from taskctl.settings import get_settings
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


def keyspace(redis: Redis, job_ids: list[str]) -> dict[bytes, Any]:
    """Every key with its type, expiry and content; job ids as their position, job timestamps left out."""

    def plain(value: bytes) -> bytes:
        for position, job_id in enumerate(job_ids):
            value = value.replace(job_id.encode(), b"<job %d>" % position)
        return value

    found: dict[bytes, Any] = {}
    for key in redis.scan_iter():
        kind = redis.type(key)
        if kind == b"hash":
            skipped = {b"created_at", b"enqueued_at"}
            content: Any = {field: plain(value) for field, value in redis.hgetall(key).items() if field not in skipped}
        elif kind == b"list":
            content = [plain(value) for value in redis.lrange(key, 0, -1)]
        else:
            assert kind == b"set", f"{key!r} is a {kind!r}: compare it too"
            content = {plain(value) for value in redis.smembers(key)}
        found[plain(key)] = (kind, redis.ttl(key), content)
    return found


@pytest.mark.parametrize(
    "options",
    [
        {},  # the job's declaration and the settings: 3 retries, jittered waits drawn for each call
        {"queue": "low", "job_timeout": 30, "retries": 0},
        {"retries": 2, "backoff": 5, "meta": {"source": "import", "batch": 7}},
    ],
)
def test_bulk_jobs_are_stored_exactly_as_rqs_own_enqueue_stores_them(
    configured: str, redis: Redis, options: dict[str, Any]
) -> None:
    meta = options.pop("meta", {})
    calls = [replace(prepare("add", [i], {"b": i * 10}, **options), meta=meta) for i in range(3)]

    bulk = keyspace(redis, enqueue_many(calls, redis))
    redis.flushdb()
    settings = get_settings()
    by_rq = [
        Queue(call.queue, connection=redis).enqueue_call(
            call.entry.func, args=call.args, kwargs=call.kwargs, timeout=call.timeout,
            result_ttl=settings.result_ttl, failure_ttl=settings.failure_ttl, description=call.description,
            retry=call.retry, meta=call.meta or None,
        ).id
        for call in calls
    ]  # fmt: skip

    assert bulk == keyspace(redis, by_rq)
    job = bulk[b"rq:job:<job 2>"][2]
    assert (job[b"description"], job[b"status"]) == (b"add(2, b=20)", b"queued")
    assert job.get(b"meta") == (json.dumps(meta).encode() if meta else None)
    assert (b"retry_intervals" in job) == (options.get("retries") != 0)


def test_a_bulk_job_whose_given_id_exists_replaces_it_as_rqs_own_enqueue_does(configured: str, redis: Redis) -> None:
    """The fast path copies a template into new keys only; an existing job's key is written field by field."""
    call = prepare("add", [1, 2], job_id="again")
    settings = get_settings()

    def stored(enqueue: Callable[[], object]) -> dict[bytes, Any]:
        redis.flushdb()
        redis.hset("rq:job:again", mapping={"status": "finished", "left_over": "from the earlier run"})
        enqueue()
        return keyspace(redis, ["again"])

    bulk = stored(lambda: enqueue_many([call], redis))
    by_rq = stored(
        lambda: Queue(call.queue, connection=redis).enqueue_call(
            call.entry.func, args=call.args, kwargs=call.kwargs, timeout=call.timeout, job_id="again",
            result_ttl=settings.result_ttl, failure_ttl=settings.failure_ttl, description=call.description,
            retry=call.retry,
        )
    )  # fmt: skip

    assert bulk == by_rq
    job = bulk[b"rq:job:<job 0>"][2]
    assert (job[b"status"], job[b"left_over"]) == (b"queued", b"from the earlier run")


def test_bulk_jobs_of_several_queues_and_shapes_run_on_a_worker(configured: str, redis: Redis) -> None:
    calls: list[Prepared] = [
        prepare("add", [1, 2]),
        prepare("add", [], {"a": 3, "b": 4}, queue="low", retries=0),
        prepare("add", [5, 6], job_id="chosen-id"),
        prepare("typed", [1, 0.5, True, ["x"], {"k": "v"}], {"note": "é"}),
        prepare("add", [7, 8], queue="low", job_timeout=5),
    ]
    seen: list[int] = []

    ids = enqueue_many(calls, redis, batch_size=2, progress=seen.append)

    assert seen == [2, 2, 1] and ids[2] == "chosen-id" and len(set(ids)) == 5
    run_burst_worker()
    jobs = [Job.fetch(job_id, connection=redis, serializer=JSONSerializer) for job_id in ids]
    assert [job.get_status() for job in jobs] == ["finished"] * 5
    assert [job.return_value() for job in jobs] == [
        3, 7, 11, {"count": 1, "ratio": 0.5, "enabled": True, "tags": ["x"], "options": {"k": "v"}, "mode": "fast",
                   "note": "é"}, 15,
    ]  # fmt: skip
    assert [job.origin for job in jobs] == ["default", "low", "default", "low", "low"]
    assert "status:        finished" in taskctl("status", ids[1]).output
