"""What one enqueue costs Redis, counted by Redis itself: round trips, connections, commands.

Each is read from the test's own redis-server (INFO): a round trip is one read
of a client's socket by the server (`total_reads_processed`; the payloads here
are far below the 16 KB the server reads at once). A connection's close costs a
read too, counted when the server gets to it: so no client is let go while a
count runs. The job each door writes is compared, field by field, with what
RQ's own enqueue (and rq-scheduler's schedule) writes.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from taskctl import connection
from taskctl.connection import connect
from taskctl.enqueue import Prepared, enqueue, enqueue_call, prepare, resolve_result_ttl, rq_options, submit
from taskctl.exceptions import DuplicateJobError
from taskctl.rqclasses import Queue
from taskctl.rqscheduler import make_scheduler
from taskctl.settings import Settings, get_settings
from tests.conftest import taskctl

#: Fields RQ stamps with the time of the enqueue: equal in kind, not in value.
TIMESTAMPS = {b"created_at", b"enqueued_at"}


@dataclass
class Traffic:
    """What the clients of the test's Redis sent it while a block ran (the counting itself left out)."""

    round_trips: int = 0
    connections: int = 0
    commands: Counter[str] = field(default_factory=Counter)


def _counters(probe: Redis) -> tuple[int, int, int, Counter[str]]:
    info = probe.info("all")
    calls = Counter({name.removeprefix("cmdstat_"): stats["calls"] for name, stats in info.items()
                     if name.startswith("cmdstat_")})  # fmt: skip
    return info["total_reads_processed"], info["total_connections_received"], info["connected_clients"], calls


@contextmanager
def traffic(redis: Redis) -> Iterator[Traffic]:
    """Count, from Redis's own counters, what reaches it while the block runs."""
    seen = Traffic()
    gc.collect()  # clients that earlier tests let go close now, not while counting
    redis.ping()  # by its next command the server has read (and dropped) every connection closed before
    reads, opened, clients, calls = _counters(redis)
    gc.disable()
    try:
        yield seen
    finally:
        gc.enable()
    reads_after, opened_after, clients_after, calls_after = _counters(redis)
    seen.connections = opened_after - opened
    assert clients_after - clients == seen.connections, "a connection closed while counting: a read of its own"
    seen.round_trips = reads_after - reads - 1  # the second INFO is one read, and one call
    seen.commands = calls_after - calls - Counter({"info": 1})


def writes_of(build: Callable[[Any], None], redis: Redis) -> Counter[str]:
    """The commands ``build`` queues on a transaction, as Redis counts them."""
    pipeline = redis.pipeline()
    build(pipeline)
    commands = Counter(str(args[0]).lower() for args, _ in pipeline.command_stack)
    pipeline.reset()
    return commands + Counter({"multi": 1, "exec": 1})


def plain_enqueue_writes(redis: Redis) -> Counter[str]:
    """RQ's writes of a queued job: the queue's registration, the job's hash, the push and its wake-up token."""

    def build(pipeline: Any) -> None:
        queue = Queue("default", connection=redis)
        pipeline.sadd(queue.redis_queues_keys, queue.key)
        pipeline.hset("rq:job:x", mapping={"status": "queued"})
        queue.push_job_id("x", pipeline=pipeline)

    return writes_of(build, redis)


def test_a_plain_enqueue_from_python_is_one_round_trip(configured: str, redis: Redis) -> None:
    enqueue("add", 1, 1)  # the process's first: connects (see the CLI's test for a fresh connection)

    with traffic(redis) as seen:
        handle = enqueue("add", 2, 3)

    assert (seen.round_trips, seen.connections) == (1, 0)
    assert seen.commands == plain_enqueue_writes(redis)
    assert redis.lrange("rq:queue:default", 0, -1)[-1] == handle.id.encode()


def test_taskctl_enqueue_opens_one_connection_and_enqueues_in_its_first_round_trip(
    configured: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients: list[Redis] = []  # kept open until counted (see the module's docstring)
    make_client = connection.one_command_client

    def one_command_client(settings: Settings | None = None) -> Redis:
        clients.append(make_client(settings))
        return clients[-1]

    monkeypatch.setattr(connection, "one_command_client", one_command_client)

    with traffic(redis) as seen:
        result = taskctl("enqueue", "add", "2", "3")

    assert result.exit_code == 0, result.output
    assert len(clients) == 1
    # No PING, no HELLO, no CLIENT SETINFO, no INFO, no status read back: the enqueue alone.
    assert (seen.round_trips, seen.connections) == (1, 1)
    assert seen.commands == plain_enqueue_writes(redis)


def test_a_unique_enqueue_is_one_round_trip_and_a_refused_one_writes_nothing(configured: str, redis: Redis) -> None:
    enqueue_call("add", (1, 1), job_id="warm-up", unique=True)  # loads the script into this Redis

    with traffic(redis) as seen:
        enqueue_call("add", (2, 3), job_id="nightly", unique=True)
    before = redis.hgetall("rq:job:nightly")
    with traffic(redis) as refused, pytest.raises(DuplicateJobError):
        enqueue_call("add", (4, 5), job_id="nightly", unique=True)

    assert seen.round_trips == 1
    assert seen.commands == plain_enqueue_writes(redis) - Counter({"multi": 1, "exec": 1}) + Counter(
        {"evalsha": 1, "exists": 1}
    )
    assert refused.round_trips == 1
    assert refused.commands == Counter({"evalsha": 1, "exists": 1})
    assert redis.hgetall("rq:job:nightly") == before
    assert redis.lrange("rq:queue:default", 0, -1) == [b"warm-up", b"nightly"]


def test_a_delayed_enqueue_is_one_round_trip(configured: str, redis: Redis) -> None:
    enqueue("add", 1, 1)

    with traffic(redis) as seen:
        enqueue_call("add", (2, 3), delay=timedelta(hours=1))

    assert seen.round_trips == 1
    assert seen.commands == Counter({"multi": 1, "hset": 1, "zadd": 1, "exec": 1})


def assert_same_job(redis: Redis, ours: str, theirs: str) -> None:
    """Two job hashes alike field for field (the enqueue times aside), with the same expiry."""
    mine, reference = redis.hgetall(f"rq:job:{ours}"), redis.hgetall(f"rq:job:{theirs}")
    assert mine.keys() == reference.keys()
    assert {k: v for k, v in mine.items() if k not in TIMESTAMPS} == {
        k: v for k, v in reference.items() if k not in TIMESTAMPS
    }
    for name in TIMESTAMPS & mine.keys():
        utcparse(mine[name].decode())  # RQ's own format, as RQ reads it
    assert redis.ttl(f"rq:job:{ours}") == redis.ttl(f"rq:job:{theirs}")


def prepared_call(**options: Any) -> Prepared:
    """One call, with every option that puts a field in the hash: retries, a timeout, a result TTL."""
    return prepare("add", (2, 3), job_timeout=9, retries=2, backoff=5, **options)


def test_a_queued_job_is_what_rqs_enqueue_call_writes_field_for_field(configured: str, redis: Redis) -> None:
    settings = get_settings()
    call = prepared_call()
    Queue("default", connection=redis).enqueue_call(call.entry.func, job_id="rq", **rq_options(call, settings))

    ours = submit(replace(call, job_id="ours"), connect(settings), settings)

    assert_same_job(redis, "ours", "rq")
    assert redis.lrange("rq:queue:default", 0, -1) == [b"rq", b"ours"]
    assert redis.llen("rq:queue:default:wakeup") == 2
    assert redis.smembers("rq:queues") == {b"rq:queue:default"}
    plain = Job.fetch(ours.id, connection=redis, serializer=JSONSerializer)
    assert (plain.func_name, plain.args, plain.get_status(), plain.retries_left) == (
        "tests.testjobs.add", [2, 3], "queued", 2,
    )  # fmt: skip


def test_a_unique_job_is_what_rqs_unique_enqueue_writes_and_wakes_a_worker(configured: str, redis: Redis) -> None:
    settings = get_settings()
    call = prepared_call()
    Queue("default", connection=redis).enqueue_call(
        call.entry.func, job_id="rq", unique=True, **rq_options(call, settings)
    )
    assert redis.llen("rq:queue:default:wakeup") == 0  # RQ's unique script pushes no wake-up token

    submit(replace(call, job_id="ours", unique=True), connect(settings), settings)

    assert_same_job(redis, "ours", "rq")
    assert redis.lrange("rq:queue:default", 0, -1) == [b"rq", b"ours"]
    assert redis.llen("rq:queue:default:wakeup") == 1


def test_a_delayed_job_is_what_rq_scheduler_writes_field_for_field(configured: str, redis: Redis) -> None:
    settings = get_settings()
    call = prepared_call(delay=timedelta(hours=1))
    assert call.due is not None and call.retry is not None
    # How taskctl scheduled before: rq-scheduler's schedule(), then a save for what it does not know.
    reference = make_scheduler(settings, redis).schedule(
        call.due, call.entry.func, args=call.args, kwargs=call.kwargs, timeout=call.timeout, id="rq",
        result_ttl=resolve_result_ttl(call.entry, settings), description=call.description, queue_name=call.queue,
    )  # fmt: skip
    reference.failure_ttl = settings.failure_ttl
    reference.retries_left, reference.retry_intervals = call.retry.max, call.retry.intervals
    reference.save()

    ours = submit(replace(call, job_id="ours"), connect(settings), settings)

    assert_same_job(redis, "ours", "rq")
    assert ours.status == "scheduled"
    due = redis.zscore("rq:scheduler:scheduled_jobs", "ours")
    assert due is not None and call.due.timestamp() <= due < call.due.timestamp() + 1
