"""The outbox: a job call written as a row in the application's transaction, moved to Redis by the relay.

Every test runs against real servers: the suite's redis-server, SQLite files and
the suite's PostgreSQL (a database of the test's own). Application connections
are the drivers' own (sqlite3, psycopg, SQLAlchemy); the relay is
:class:`taskctl.relay.Relay`, in this process or as ``python -m taskctl.relay``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis

from taskctl import outbox
from taskctl.enqueue import enqueue_call
from taskctl.exceptions import DuplicateJobError, InvalidArgumentsError, InvalidQueueError, UnknownJobError
from taskctl.outbox_db import TABLE, sqlite_path
from taskctl.relay import Pass, Relay
from taskctl.rqscheduler import Scheduler
from taskctl.settings import get_settings
from taskctl.stack import stop
from taskctl.status import fetch_job
from tests.conftest import ROOT, run_burst_worker
from tests.effects import wait_for

SCHEDULED = Scheduler.scheduled_jobs_key

#: The six ways an application hands the outbox its connection.
SQLITE_KINDS = ["sqlite3", "sqlalchemy-connection-sqlite", "sqlalchemy-session-sqlite"]
POSTGRES_KINDS = ["psycopg", "sqlalchemy-connection-postgresql", "sqlalchemy-session-postgresql"]


# --- the application's database -------------------------------------------------------


@dataclass
class AppDb:
    """The application's database: its URL (which the relay is configured with) and its connections."""

    kind: str
    url: str
    opened: list[Any] = field(default_factory=list)
    engines: list[Any] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return "postgresql" if self.kind == "psycopg" or self.kind.endswith("postgresql") else "sqlite"

    def connect(self) -> Any:
        """A new connection of this kind, as the application would open it (not in autocommit mode)."""
        connection: Any
        if self.kind == "sqlite3":
            connection = sqlite3.connect(sqlite_path(self.url), timeout=30)
        elif self.kind == "psycopg":
            connection = psycopg.connect(self.url)
        else:
            from sqlalchemy import create_engine
            from sqlalchemy.orm import Session

            if not self.engines:
                engine_url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
                self.engines.append(create_engine(engine_url))
            engine = self.engines[0]
            connection = Session(engine) if "-session-" in self.kind else engine.connect()
        self.opened.append(connection)
        return connection

    def close(self) -> None:
        for connection in self.opened:
            connection.close()
        for engine in self.engines:
            engine.dispose()

    # Inspection, through a connection of the test's own.

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == "postgresql":
            with psycopg.connect(self.url, autocommit=True) as pg:
                return [tuple(row) for row in pg.execute(sql.replace("?", "%s"), params).fetchall()]
        with sqlite3.connect(sqlite_path(self.url), timeout=30) as lite:
            rows = [tuple(row) for row in lite.execute(sql, params).fetchall()]
        lite.close()
        return rows

    def has_table(self) -> bool:
        if self.dialect == "postgresql":
            return bool(self.query(f"SELECT to_regclass('{TABLE}') IS NOT NULL")[0][0])
        if not sqlite_path(self.url).exists():
            return False
        return bool(self.query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))[0][0])

    def rows(self) -> list[tuple[str, str, str | None]]:
        """(job_id, job, stuck_reason) of every row, in order; none when the table does not exist."""
        if not self.has_table():
            return []
        return [(r[0], r[1], r[2]) for r in self.query(f"SELECT job_id, job, stuck_reason FROM {TABLE} ORDER BY id")]

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Change the table behind the outbox's back (what an old deploy or a hand-written INSERT leaves)."""
        if self.dialect == "postgresql":
            with psycopg.connect(self.url, autocommit=True) as pg:
                pg.execute(sql.replace("?", "%s"), params)
            return
        lite = sqlite3.connect(sqlite_path(self.url), timeout=30)
        with lite:
            lite.execute(sql, params)
        lite.close()

    def call_of(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(self.query(f"SELECT call FROM {TABLE} WHERE job_id = ?", (job_id,))[0][0]))

    def set_call(self, job_id: str, call: dict[str, Any]) -> None:
        self.execute(f"UPDATE {TABLE} SET call = ? WHERE job_id = ?", (json.dumps(call), job_id))


def open_app_db(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AppDb:
    """Point the relay at a fresh database for ``kind``: the shop's SQLite file (the default), or PostgreSQL."""
    if kind == "psycopg" or kind.endswith("postgresql"):
        monkeypatch.setenv("TASKCTL_OUTBOX_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("TASKCTL_OUTBOX_URL", raising=False)
    get_settings.cache_clear()
    url = get_settings().outbox_database
    if not url.startswith("postgresql"):
        assert url == f"sqlite:///{get_settings().data_dir / 'shop.sqlite3'}"
        sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    return AppDb(kind, url)


@pytest.fixture
def app(request: pytest.FixtureRequest, configured: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppDb]:
    """The application's database, of the kind the test is parametrized with (indirect)."""
    database = open_app_db(request.param, request, monkeypatch)
    yield database
    database.close()


@pytest.fixture
def lite(request: pytest.FixtureRequest, configured: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppDb]:
    """The shop's SQLite file, through sqlite3."""
    database = open_app_db("sqlite3", request, monkeypatch)
    yield database
    database.close()


@pytest.fixture
def pg(request: pytest.FixtureRequest, configured: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppDb]:
    """A fresh PostgreSQL database, through psycopg."""
    database = open_app_db("psycopg", request, monkeypatch)
    yield database
    database.close()


def relay_once() -> Pass:
    """One pass of a new relay (as a freshly started relay process would make it)."""
    relay = Relay()
    try:
        return relay.relay_once()
    finally:
        relay.close()


def write(app: AppDb, job: str, *args: Any, **options: Any) -> outbox.OutboxHandle:
    """One committed outbox row, written through a connection of the app's kind."""
    connection = app.connect()
    handle = outbox.enqueue_call(connection, job, args, **options)
    connection.commit()
    return handle


def queued(redis: Redis, queue: str) -> list[str]:
    entries: list[bytes] = redis.lrange(f"rq:queue:{queue}", 0, -1)  # type: ignore[assignment]
    return [job_id.decode() for job_id in entries]


def job_keys(redis: Redis) -> list[str]:
    return sorted(key.decode() for key in redis.scan_iter("rq:job:*"))


# --- 1. commit and rollback, for every driver -------------------------------------------


@pytest.mark.parametrize("app", SQLITE_KINDS + POSTGRES_KINDS, indirect=True)
def test_a_committed_enqueue_becomes_exactly_one_job_with_the_handles_id(app: AppDb, redis: Redis) -> None:
    connection = app.connect()
    handle = outbox.enqueue(connection, "send_email", "ann@example.com", "Order 42", "Thanks.")
    connection.commit()

    assert redis.dbsize() == 0  # nothing reaches Redis before the relay
    assert relay_once() == Pass(moved=1)

    job = fetch_job(handle.id, redis)
    assert (handle.name, handle.queue) == ("send_email", "high")
    assert (job.args, job.kwargs, job.origin) == (["ann@example.com", "Order 42", "Thanks."], {}, "high")
    assert job.get_status() == "queued"
    assert queued(redis, "high") == [handle.id]
    assert job_keys(redis) == [f"rq:job:{handle.id}"]
    assert app.rows() == []


@pytest.mark.parametrize("app", SQLITE_KINDS + POSTGRES_KINDS, indirect=True)
def test_a_rolled_back_enqueue_leaves_no_row_and_makes_no_job(app: AppDb, redis: Redis) -> None:
    connection = app.connect()
    outbox.enqueue(connection, "send_email", "ann@example.com", "Order 42", "Thanks.")
    connection.rollback()

    assert relay_once() == Pass()
    assert app.rows() == []
    assert redis.dbsize() == 0


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_rows_of_one_transaction_become_jobs_with_their_options(app: AppDb, redis: Redis) -> None:
    connection = app.connect()
    first = outbox.enqueue(connection, "add", a=1, b=2)
    second = outbox.enqueue_call(connection, "add", (3, 4), queue="low", job_timeout=9, job_id="order-42-total")
    connection.commit()

    assert relay_once() == Pass(moved=2)

    assert second.id == "order-42-total"
    one, two = fetch_job(first.id, redis), fetch_job(second.id, redis)
    assert (one.args, one.kwargs, one.origin) == ([], {"a": 1, "b": 2}, "default")
    assert (two.args, two.origin, two.timeout) == ([3, 4], "low", 9)
    assert (queued(redis, "default"), queued(redis, "low")) == ([first.id], [second.id])


# --- 2. the table -----------------------------------------------------------------------


@pytest.mark.parametrize("app", ["sqlite3", "psycopg", "sqlalchemy-session-postgresql"], indirect=True)
def test_the_first_enqueue_creates_the_table_in_a_fresh_database(app: AppDb) -> None:
    assert not app.has_table()

    handle = write(app, "add", 1, 2)

    assert app.rows() == [(handle.id, "add", None)]


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_the_relay_creates_the_table_when_it_starts(app: AppDb) -> None:
    assert not app.has_table()

    assert relay_once() == Pass()

    assert app.has_table()
    assert app.rows() == []


@pytest.mark.parametrize("calls", [1, 2], ids=["one-call", "two-calls"])
def test_a_table_created_by_a_rolled_back_postgresql_transaction_is_created_again_by_the_next_call(
    pg: AppDb, redis: Redis, calls: int
) -> None:
    connection = pg.connect()
    for n in range(calls):
        outbox.enqueue(connection, "add", n, n)
    connection.rollback()
    assert not pg.has_table()

    handle = outbox.enqueue(connection, "add", 5, 6)
    connection.commit()

    assert pg.rows() == [(handle.id, "add", None)]
    assert relay_once() == Pass(moved=1)
    assert fetch_job(handle.id, redis).args == [5, 6]


def test_a_table_created_in_a_rolled_back_savepoint_is_created_again_in_the_same_transaction(pg: AppDb) -> None:
    connection = pg.connect()
    with connection.transaction():
        with pytest.raises(ZeroDivisionError), connection.transaction():  # a savepoint
            outbox.enqueue(connection, "add", 1, 1)
            outbox.enqueue(connection, "add", 2, 2)
            _ = 1 / 0
        kept = outbox.enqueue(connection, "add", 3, 3)

    assert pg.rows() == [(kept.id, "add", None)]


def test_two_first_writers_on_postgresql_both_commit(pg: AppDb) -> None:
    """Neither sees the other's table when it checks; the advisory lock makes the second wait and then reuse it."""
    first, second = pg.connect(), pg.connect()
    one = outbox.enqueue(first, "add", 1, 1)
    written: list[outbox.OutboxHandle] = []
    other = threading.Thread(target=lambda: written.append(outbox.enqueue(second, "add", 2, 2)))
    other.start()
    wait_for(lambda: pg.query("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0, 10, "the wait")
    first.commit()
    other.join(timeout=10)
    assert not other.is_alive()
    second.commit()

    assert sorted(row[0] for row in pg.rows()) == sorted([one.id, written[0].id])


# --- 3 and 4. bad calls -----------------------------------------------------------------

BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("no_such_job", (1,), {}, UnknownJobError, "unknown job 'no_such_job'"),
    ("add", (1,), {}, InvalidArgumentsError, "missing a required argument: 'b'"),
    ("add", ("1", 2), {}, InvalidArgumentsError, "add: parameter a: '1' is not an integer"),
    ("add", (1, 2), {"queue": "urgent"}, InvalidQueueError, "unknown queue 'urgent'"),
    ("add", (1, 2), {"job_timeout": -1}, InvalidArgumentsError, "job_timeout must be a positive number"),
    ("add", (1, 2), {"unique": True}, InvalidArgumentsError, "unique needs a job id"),
    ("add", (1, 2), {"at": datetime(2020, 1, 1, tzinfo=UTC)}, InvalidArgumentsError, "is in the past"),
]


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
@pytest.mark.parametrize(
    ("job", "args", "options", "error", "message"),
    BAD_CALLS,
    ids=["unknown-job", "missing-argument", "wrong-type", "unknown-queue", "bad-timeout", "unique-no-id", "past"],
)
def test_bad_calls_raise_the_errors_of_enqueue_call_and_write_nothing(
    app: AppDb,
    redis: Redis,
    job: str,
    args: tuple[Any, ...],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as direct:
        enqueue_call(job, args, **options)
    assert redis.dbsize() == 0
    connection = app.connect()

    with pytest.raises(error) as through_outbox:
        outbox.enqueue_call(connection, job, args, **options)

    assert type(through_outbox.value) is type(direct.value)
    assert message in str(through_outbox.value)
    # The same message (but for the "now is" of a past time, a moment later).
    assert str(through_outbox.value).split(" (now is ")[0] == str(direct.value).split(" (now is ")[0]
    # Nothing written, and the caller's transaction carries on: a good call after it commits, alone.
    good = outbox.enqueue(connection, "add", 1, 2)
    connection.commit()
    assert app.rows() == [(good.id, "add", None)]


@pytest.mark.parametrize("app", ["sqlite3", "psycopg", "sqlalchemy-session-postgresql"], indirect=True)
def test_a_second_row_with_the_same_job_id_is_refused_and_the_transaction_goes_on(app: AppDb) -> None:
    earlier = write(app, "add", 1, 2, job_id="order-7")

    connection = app.connect()
    before = outbox.enqueue(connection, "add", 3, 4)
    with pytest.raises(DuplicateJobError, match="'order-7' waits in the outbox already"):
        outbox.enqueue_call(connection, "add", (5, 6), job_id="order-7")
    after = outbox.enqueue(connection, "add", 7, 8)
    connection.commit()

    assert [row[0] for row in app.rows()] == [earlier.id, before.id, after.id]
    assert app.call_of("order-7")["args"] == [1, 2]


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_the_same_job_id_twice_in_one_transaction_is_refused(app: AppDb) -> None:
    connection = app.connect()
    outbox.enqueue_call(connection, "add", (1, 2), job_id="order-8")
    with pytest.raises(DuplicateJobError):
        outbox.enqueue_call(connection, "add", (1, 2), job_id="order-8")
    connection.commit()

    assert [row[0] for row in app.rows()] == ["order-8"]


def test_a_connection_of_another_kind_is_refused_with_type_error(configured: str) -> None:
    with pytest.raises(TypeError, match="sqlite3 or psycopg"):
        outbox.enqueue(object(), "add", 1, 2)


# --- 5. delayed calls -------------------------------------------------------------------


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_a_delayed_call_becomes_a_job_scheduled_for_its_time(app: AppDb, redis: Redis) -> None:
    asked = time.time()
    handle = write(app, "add", 1, 2, delay=timedelta(minutes=10))
    written = time.time()

    assert relay_once() == Pass(moved=1)

    score = redis.zscore(SCHEDULED, handle.id)
    assert score is not None
    assert asked + 600 <= score <= written + 601  # whole seconds, rounded up
    assert fetch_job(handle.id, redis).get_status() == "scheduled"
    assert queued(redis, "default") == []


def test_a_delayed_row_whose_time_passed_while_it_waited_becomes_a_queued_job(lite: AppDb, redis: Redis) -> None:
    handle = write(lite, "add", 1, 2, at=datetime.now(UTC) + timedelta(minutes=10))
    call = lite.call_of(handle.id)
    lite.set_call(handle.id, {**call, "due": time.time() - 3600})  # an outage of an hour

    assert relay_once() == Pass(moved=1)

    assert queued(redis, "default") == [handle.id]
    assert redis.zscore(SCHEDULED, handle.id) is None
    assert fetch_job(handle.id, redis).get_status() == "queued"


# --- 6. stuck rows ----------------------------------------------------------------------


def _unknown_name(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> str:
    app.execute(
        f"INSERT INTO {TABLE} (job_id, job, call, created_at) VALUES (?, ?, ?, ?)",
        ("by-hand-1", "no_such_job", json.dumps({"args": [], "kwargs": {}, "queue": "default", "job_timeout": None,
                                                 "retries": None, "backoff": None, "unique": False, "due": None}),
         time.time()),
    )  # fmt: skip
    return "by-hand-1"


def _job_left_the_catalog(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> str:
    handle = write(app, "add", 1, 2)  # a test job: in tests.testjobs
    monkeypatch.setenv("TASKCTL_JOB_PACKAGES", "jobs")
    get_settings.cache_clear()
    return handle.id


def _arguments_no_longer_fit(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> str:
    handle = write(app, "add", 1, 2)
    app.set_call(handle.id, {**app.call_of(handle.id), "args": ["one", 2]})
    return handle.id


def _queue_gone(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> str:
    handle = write(app, "add", 1, 2, queue="low")
    monkeypatch.setenv("TASKCTL_QUEUES", "high,default")
    get_settings.cache_clear()
    return handle.id


def _unreadable_call(app: AppDb, monkeypatch: pytest.MonkeyPatch) -> str:
    handle = write(app, "add", 1, 2)
    app.execute(f"UPDATE {TABLE} SET call = ? WHERE job_id = ?", ('{"args": [1, 2]}', handle.id))
    return handle.id


@pytest.mark.parametrize(
    ("app", "make_stuck", "reason"),
    [
        ("sqlite3", _unknown_name, "UnknownJobError: unknown job 'no_such_job'"),
        ("psycopg", _unknown_name, "UnknownJobError: unknown job 'no_such_job'"),
        ("sqlite3", _job_left_the_catalog, "UnknownJobError: unknown job 'add'"),
        ("sqlite3", _arguments_no_longer_fit, "InvalidArgumentsError: add: parameter a: 'one' is not an integer"),
        ("psycopg", _queue_gone, "InvalidQueueError: unknown queue 'low'"),
        ("sqlite3", _unreadable_call, "KeyError"),
    ],
    ids=["unknown-name", "unknown-name-postgresql", "left-catalog", "arguments", "queue-gone-postgresql", "unreadable"],
    indirect=["app"],
)
def test_a_row_that_can_no_longer_become_a_job_is_marked_stuck_and_kept_while_the_others_move(
    app: AppDb,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    make_stuck: Callable[[AppDb, pytest.MonkeyPatch], str],
    reason: str,
) -> None:
    before = write(app, "send_email", "ann@example.com", "Before", "-")
    stuck_id = make_stuck(app, monkeypatch)
    after = write(app, "send_email", "bob@example.com", "After", "-")

    assert relay_once() == Pass(moved=2, stuck=1)

    assert queued(redis, "high") == [before.id, after.id]
    assert not redis.exists(f"rq:job:{stuck_id}")
    ((row_id, _, stuck_reason),) = app.rows()
    assert row_id == stuck_id
    assert stuck_reason is not None and stuck_reason.startswith(reason), stuck_reason
    assert app.query(f"SELECT stuck_at IS NOT NULL FROM {TABLE}") == [(True,)]
    # Later passes skip it, and never delete it.
    assert relay_once() == Pass()
    assert [row[0] for row in app.rows()] == [stuck_id]


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_a_unique_row_whose_id_is_taken_in_redis_is_stuck_and_the_existing_job_is_left_alone(
    app: AppDb, redis: Redis
) -> None:
    existing = enqueue_call("add", (1, 2), job_id="order-9")
    write(app, "add", 5, 5, job_id="order-9", unique=True)
    free = write(app, "add", 6, 6, job_id="order-10", unique=True)

    assert relay_once() == Pass(moved=1, stuck=1)

    assert app.rows() == [("order-9", "add", "a job with id 'order-9' exists already (unique): not enqueued")]
    assert fetch_job(existing.id, redis).args == [1, 2]
    assert queued(redis, "default") == ["order-9", free.id]
    assert fetch_job(free.id, redis).args == [6, 6]


# --- 7. a relay killed between its Redis write and its commit -----------------------------


class Killed(BaseException):
    """The relay process dies here: no except clause of the relay's may catch it."""


@pytest.mark.parametrize("app", ["sqlite3", "psycopg"], indirect=True)
def test_a_row_relayed_by_a_relay_killed_before_its_commit_makes_no_second_job(
    app: AppDb, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = write(app, "send_email", "ann@example.com", "Once", "-")
    killed = Relay()
    db = killed.database()
    execute = db.execute

    def die_at_delete(sql: str, params: Any = ()) -> Any:
        if sql.lstrip().upper().startswith("DELETE"):
            raise Killed
        return execute(sql, params)

    monkeypatch.setattr(db, "execute", die_at_delete)
    with pytest.raises(Killed):
        killed.relay_once()
    killed.db = None  # its connection dies with it: the transaction is rolled back
    db.raw.close()

    assert queued(redis, "high") == [handle.id]  # its Redis write happened
    assert [row[0] for row in app.rows()] == [handle.id]  # its delete did not
    enqueued_at = fetch_job(handle.id, redis).enqueued_at

    assert relay_once() == Pass(already=1)

    assert queued(redis, "high") == [handle.id]
    assert job_keys(redis) == [f"rq:job:{handle.id}"]
    assert fetch_job(handle.id, redis).enqueued_at == enqueued_at
    assert app.rows() == []


def test_a_job_id_used_again_after_its_row_was_relayed_becomes_a_job_again(lite: AppDb, redis: Redis) -> None:
    relay = Relay()  # one running relay, as `python -m taskctl.relay` is
    try:
        write(lite, "add", 1, 2, job_id="nightly-refresh")
        assert relay.relay_once() == Pass(moved=1)
        fetch_job("nightly-refresh", redis).delete()  # it ran, and its result expired

        write(lite, "add", 3, 4, job_id="nightly-refresh")  # accepted: no row with that id waits

        assert relay.relay_once() == Pass(moved=1)
        assert fetch_job("nightly-refresh", redis).args == [3, 4]
    finally:
        relay.close()


def test_a_closed_relay_leaves_no_connection_to_postgresql_open(pg: AppDb) -> None:
    relay = Relay()
    assert relay.relay_once() == Pass()

    relay.close()

    others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    assert pg.query(others) == [(0,)]


# --- 8. two relays at once --------------------------------------------------------------


def test_two_relays_at_once_on_postgresql_make_each_row_one_job(pg: AppDb, redis: Redis) -> None:
    relays = [Relay(), Relay()]
    for relay in relays:
        relay.database()  # started, table made, listening: as two relay processes would be
    connection = pg.connect()
    ids = [outbox.enqueue(connection, "add", n, n).id for n in range(2000)]
    connection.commit()
    start = threading.Barrier(2, timeout=30)
    passes: list[list[Pass]] = [[], []]
    errors: list[BaseException] = []

    def run(relay: Relay, mine: list[Pass]) -> None:
        try:
            start.wait()
            while (done := relay.relay_once(limit=50)).rows:
                mine.append(done)
        except BaseException as exc:
            errors.append(exc)
        finally:
            relay.close()

    threads = [threading.Thread(target=run, args=pair) for pair in zip(relays, passes, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    entries = queued(redis, "default")
    assert len(entries) == 2000
    assert set(entries) == set(ids)
    assert len(job_keys(redis)) == 2000
    assert sum(done.moved for mine in passes for done in mine) == 2000
    assert sum(done.already + done.stuck for mine in passes for done in mine) == 0
    assert pg.rows() == []


# --- 9. the relay process ---------------------------------------------------------------


def start_relay() -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "taskctl.relay"], env=dict(os.environ), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.fixture
def relay_process() -> Iterator[Callable[[], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def launch() -> subprocess.Popen[str]:
        started.append(start_relay())
        return started[-1]

    yield launch
    for process in started:
        if process.poll() is None:
            stop(process)


def stops_cleanly_on_sigterm(process: subprocess.Popen[str]) -> None:
    assert process.poll() is None, process.stdout.read() if process.stdout else ""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the relay did not stop within 10 s of SIGTERM")
    output = process.stdout.read() if process.stdout else ""
    assert code == 0, output
    assert "relay: outbox" in output


def test_the_relay_process_on_postgresql_wakes_on_a_commit_and_stops_on_sigterm(
    pg: AppDb, redis: Redis, relay_process: Callable[[], subprocess.Popen[str]]
) -> None:
    process = relay_process()
    wait_for(
        lambda: (
            process.poll() is not None
            or bool(pg.query("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN taskctl_outbox'")[0][0])
        ),
        30,
        "the relay listening",
    )
    assert process.poll() is None

    handle = write(pg, "send_email", "ann@example.com", "Woken", "-")

    wait_for(lambda: queued(redis, "high") == [handle.id], 15, "the job in Redis")
    wait_for(lambda: pg.rows() == [], 15, "the row deleted")
    stops_cleanly_on_sigterm(process)


def test_the_relay_process_on_sqlite_moves_a_commit_and_stops_on_sigterm(
    lite: AppDb, redis: Redis, relay_process: Callable[[], subprocess.Popen[str]]
) -> None:
    process = relay_process()
    wait_for(lambda: process.poll() is not None or lite.has_table(), 30, "the relay creating the table")
    assert process.poll() is None

    handle = write(lite, "send_email", "ann@example.com", "Polled", "-")

    wait_for(lambda: queued(redis, "high") == [handle.id], 15, "the job in Redis")
    wait_for(lambda: lite.rows() == [], 15, "the row deleted")
    stops_cleanly_on_sigterm(process)


# --- 10. relayed jobs run ---------------------------------------------------------------


@pytest.mark.parametrize("app", ["sqlite3", "sqlalchemy-connection-postgresql"], indirect=True)
def test_relayed_jobs_are_run_by_a_worker(app: AppDb, redis: Redis) -> None:
    connection = app.connect()
    total = outbox.enqueue(connection, "add", 20, 22)
    mail = outbox.enqueue(connection, "send_email", "ann@example.com", "Order 42", "Thanks.")
    connection.commit()
    assert relay_once() == Pass(moved=2)

    run_burst_worker("high", "default")

    assert fetch_job(total.id, redis).get_status() == "finished"
    assert fetch_job(total.id, redis).return_value() == 42
    assert fetch_job(mail.id, redis).get_status() == "finished"
    assert len(list(Path(get_settings().outbox_dir).glob("*.eml"))) == 1


def test_the_outbox_handle_names_its_job(configured: str, lite: AppDb) -> None:
    handle = write(lite, "send_email", "a@example.com", "s", "b")

    assert repr(handle) == f"<OutboxHandle {handle.id} (send_email on high)>"
