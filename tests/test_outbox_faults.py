"""The outbox under faults: real relay processes, real workers, Redis and PostgreSQL really down, SIGKILL.

Each row must become exactly one job, whatever is down or killed when, and a
rolled-back row none. What ran is counted from what the jobs themselves wrote
(the shop's mail folder, push log and fencing ledger; the `tally` job's run
log), not from what Redis says. Each test adds a summary line (rows, kills,
jobs, duplicates, lost) printed at the end of the run. Run alone with
``pytest -m faults``.
"""

from __future__ import annotations

import email
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis

from jobs import shop
from taskctl import outbox
from taskctl.outbox_db import TABLE, dialect_of, sqlite_path
from taskctl.rqclasses import CatalogJob
from taskctl.settings import get_settings
from taskctl.stack import redis_server, stop
from tests.conftest import BIN, ROOT, SUMMARIES, free_port, worker_command
from tests.postgres import postgres_server
from tests.test_faults import wait_until_final

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

#: The line the relay (taskctl.relay.run) logs for each pass that moved rows.
PASS_LINE = re.compile(r"relay: (\d+) rows moved, (\d+) already relayed, (\d+) stuck")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, relay: subprocess.Popen[bytes] | None = None,
             log: Path | None = None, every: float = 0.05) -> None:  # fmt: skip
    """Until ``condition()`` holds; AssertionError naming ``what`` after ``timeout`` s, or once the relay exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        assert relay is None or relay.poll() is None, f"the relay exited with {relay.returncode}: {tail}"
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}\n{tail}"
        time.sleep(every)


@pytest.fixture
def relays() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m taskctl.relay` with the test's environment (and more settings), its output into a log."""
    started: list[subprocess.Popen[bytes]] = []

    def start(log: Path, **env: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "taskctl.relay"], env=dict(os.environ, **env),
                                       cwd=Path.cwd(), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=10)


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real worker processes (a command of tests.conftest's) with the test's environment."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command or worker_command(), env=dict(os.environ), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=10)


def started(relay_log: Path) -> bool:
    """Has the relay logged its first line (what it relays, from where to where)?"""
    return relay_log.exists() and "relay: outbox " in relay_log.read_text()


def passes(relay_log: Path) -> list[tuple[int, int, int]]:
    """The relay's pass lines: (moved, already relayed, stuck) each."""
    return [(int(m[1]), int(m[2]), int(m[3])) for m in PASS_LINE.finditer(relay_log.read_text())]


class Table:
    """The test's own look at the outbox table: its own connection, apart from the application's and the relay's."""

    def __init__(self, url: str) -> None:
        self.postgres = dialect_of(url) == "postgresql"
        self.conn: Any = (
            psycopg.connect(url, autocommit=True)
            if self.postgres
            else sqlite3.connect(sqlite_path(url), isolation_level=None, timeout=30)
        )

    def count(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def close(self) -> None:
        with suppress(Exception):
            self.conn.close()


def write_rows(url: str, calls: Sequence[tuple[str, tuple[Any, ...]]], per_transaction: int = 100) -> list[str]:
    """Write the calls as outbox rows, ``per_transaction`` a transaction, as an application would; their job ids."""
    ids: list[str] = []
    chunks = [calls[at : at + per_transaction] for at in range(0, len(calls), per_transaction)]
    if dialect_of(url) == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            for chunk in chunks:
                with conn.transaction():
                    ids += [outbox.enqueue(conn, name, *args).id for name, args in chunk]
    else:
        with closing(shop.connect(sqlite_path(url))) as lite:
            for chunk in chunks:
                with shop.transaction(lite):
                    ids += [outbox.enqueue(lite, name, *args).id for name, args in chunk]
    return ids


def tallies(log: Path, prefix: str, count: int) -> list[tuple[str, tuple[Any, ...]]]:
    """``count`` calls of the `tally` test job, which logs each of its runs under its token: ``prefix`` and a number."""
    return [("tally", (str(log), f"{prefix}{i}", 0.0)) for i in range(count)]


def tally_runs(log: Path) -> Counter[str]:
    """How many times each token's job started, from the jobs' own run log."""
    if not log.exists():
        return Counter()
    return Counter(line.split()[1] for line in log.read_text().splitlines() if line.startswith("start "))


def queue_entries(redis: Redis, queue: str = "default") -> Counter[str]:
    return Counter(entry.decode() for entry in redis.lrange(f"rq:queue:{queue}", 0, -1))


def job_hashes(redis: Redis) -> set[str]:
    """The ids of every job hash in Redis (``rq:job:ID``, not the keys hanging off a job)."""
    prefix = CatalogJob.redis_job_namespace_prefix
    return {key.decode()[len(prefix) :] for key in redis.scan_iter(f"{prefix}*") if key.count(b":") == 2}


def extra(counts: Counter[str]) -> int:
    """Occurrences past the first: duplicates."""
    return sum(n - 1 for n in counts.values() if n > 1)


#: The advisory lock the test's trigger waits for: while the test holds it, the relay's DELETE stalls.
STALL_KEY = 20_2020


def stall_deletes_on(url: str) -> None:
    """A trigger that makes a DELETE from the outbox wait while the test holds STALL_KEY (see :func:`deletes_stalled`).

    The relay deletes a batch's rows after the batch's jobs are in Redis, and commits
    after that: a relay stalled there is exactly between its Redis write and its commit.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION test_stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" PERFORM pg_advisory_lock_shared({STALL_KEY}); PERFORM pg_advisory_unlock_shared({STALL_KEY});"
            " RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE OR REPLACE TRIGGER test_stall BEFORE DELETE ON {TABLE} FOR EACH STATEMENT"
            " EXECUTE FUNCTION test_stall()"
        )


@contextmanager
def deletes_stalled(url: str) -> Iterator[Callable[[], bool]]:
    """Hold STALL_KEY until the block ends; yields "is a DELETE waiting for it now?"."""
    holder = psycopg.connect(url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (STALL_KEY,))
    watcher = psycopg.connect(url, autocommit=True)

    def waiting() -> bool:
        row = watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()
        return bool(row and row[0])

    try:
        yield waiting
    finally:
        for conn in (holder, watcher):  # after a server stop both are gone already
            with suppress(psycopg.Error):
                conn.close()


def test_orders_placed_while_redis_is_down_become_their_jobs_once_redis_starts(
    relays: Callable[..., subprocess.Popen[bytes]],
    workers: Callable[..., subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Issue 20, point 1: 200 orders, four outbox rows each, placed as the shop places them, with Redis down.

    Nothing listens at REDIS_URL's port while the relay runs and the orders are written;
    then Redis starts on that port, and the Procfile's worker pool runs the jobs. What
    ran is counted from what the shop's own jobs write: one mail file per send_email
    run, one line of the push log per push_notification run, and the fencing ledger
    of the two order jobs (a job's token counts the runs of that job that started).
    """
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    settings = get_settings()

    def redis_down() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) != 0

    assert redis_down()
    conn = shop.connect()
    with shop.transaction(conn):
        shop.add_product(conn, "MUG", "Coffee mug", 1200, 10_000)
        shop.add_product(conn, "STICKER", "Sticker pack", 300, 10_000)
    relay_log = tmp_path / "relay.log"
    relay = relays(relay_log)  # the shop's own database is the outbox (TASKCTL_OUTBOX_URL unset)
    wait_for(lambda: started(relay_log), 30, "the relay started", relay, relay_log)

    orders = 200
    items = [{"sku": "MUG", "quantity": 1}, {"sku": "STICKER", "quantity": 2}]
    handles: dict[str, dict[int, str]] = {"send_email": {}, "push_notification": {}, "update_inventory": {},
                                          "process_order": {}}  # fmt: skip
    for n in range(orders):
        with shop.transaction(conn):
            order_id = shop.create_order(conn, f"customer{n}@example.com", n + 1, items)
            calls: list[tuple[str, tuple[Any, ...]]] = [
                ("send_email", (f"customer{n}@example.com", f"Order {order_id} confirmed", "Thanks for your order.")),
                ("push_notification", (n + 1, f"Order {order_id} is on its way")),
                ("update_inventory", (order_id, items)),
                ("process_order", (order_id,)),
            ]
            for name, args in calls:
                handles[name][order_id] = outbox.enqueue(conn, name, *args).id
    ids = [job_id for by_order in handles.values() for job_id in by_order.values()]
    table = Table(settings.outbox_database)
    try:
        assert (table.count(), len(set(ids))) == (4 * orders, 4 * orders)
        wait_for(lambda: "Redis unavailable" in relay_log.read_text(), 30, "the relay saw Redis down", relay, relay_log)
        assert redis_down() and relay.poll() is None  # really down all along; the relay waits for it

        with redis_server(port, tmp_path / "redis"):
            client = Redis.from_url(url)
            wait_for(lambda: table.count() == 0, 60, "the relay moved every row once Redis started", relay, relay_log)
            in_redis = job_hashes(client)
            entries = queue_entries(client, "high") + queue_entries(client, "default")
            workers([str(BIN / "rq"), "worker-pool", "-n", "2"])  # the Procfile's
            final = wait_until_final(client, ids, timeout=120)
            client.close()
    finally:
        table.close()

    emails = Counter(
        email.message_from_bytes(path.read_bytes())["Subject"] for path in settings.outbox_dir.glob("*.eml")
    )
    pushes = Counter(json.loads(line)["message"] for line in settings.push_log.read_text().splitlines())
    fences = dict(conn.execute("SELECT job_id, token FROM job_fences").fetchall())
    ran: Counter[str] = Counter()  # job id: its runs, from what the jobs wrote
    for order_id, job_id in handles["send_email"].items():
        ran[job_id] = emails[f"Order {order_id} confirmed"]
    for order_id, job_id in handles["push_notification"].items():
        ran[job_id] = pushes[f"Order {order_id} is on its way"]
    for name in ("update_inventory", "process_order"):
        for job_id in handles[name].values():
            ran[job_id] = fences.get(job_id, 0)
    runs = sum(emails.values()) + sum(pushes.values()) + sum(fences.values())  # every run that did its work
    confirmed = conn.execute("SELECT count(*) FROM orders WHERE status = 'confirmed'").fetchone()[0]
    applied = conn.execute("SELECT count(*) FROM inventory_applied").fetchone()[0]
    stock = dict(conn.execute("SELECT sku, stock FROM products").fetchall())
    conn.close()
    text = relay_log.read_text()
    lost = [job_id for job_id in ids if ran[job_id] == 0]
    duplicates = sum(max(0, n - 1) for n in ran.values()) + extra(entries)
    SUMMARIES.append(
        f"outbox 1 (200 orders written with Redis down, then Redis started): orders={orders} rows={len(ids)} "
        f"jobs={len(in_redis)} runs={runs} job ids that ran={sum(1 for n in ran.values() if n)} "
        f"duplicates={duplicates} lost={len(lost)}"
    )
    assert relay.poll() is None
    assert (text.count("Redis unavailable"), text.count("Redis answers again")) == (1, 1), text
    assert sorted(entries) == sorted(ids) and extra(entries) == 0  # each row one queue entry
    assert in_redis == set(ids)
    assert set(final.values()) == {"finished"}, Counter(final.values())
    assert (runs, len(ran), lost, duplicates) == (4 * orders, 4 * orders, [], 0)
    assert set(ran.values()) == {1}
    assert (len(emails), len(pushes), len(fences)) == (orders, orders, 2 * orders)
    assert (confirmed, applied) == (orders, orders)
    assert stock == {"MUG": 10_000 - orders, "STICKER": 10_000 - 2 * orders}


@pytest.fixture(params=["postgresql", "sqlite"])
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The application's database holding the outbox: a fresh PostgreSQL database, or an SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'app.sqlite3'}"


def test_a_relay_sigkilled_ten_times_while_it_moves_1000_rows_makes_each_row_one_job(
    outbox_url: str,
    configured: str,
    redis: Redis,
    relays: Callable[..., subprocess.Popen[bytes]],
    workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Issue 20, point 2: 1,000 committed rows, 20 a pass; the relay SIGKILLed 10 times, restarted after each kill.

    A kill lands a few passes into a relay's life, at a random moment. On PostgreSQL
    every other kill lands, for certain, between a pass's Redis write and its commit:
    the test's trigger holds the pass's DELETE until the relay is dead. The jobs in
    Redis are counted before any worker runs (queue entries, job hashes), then run by
    two workers and counted again from their run log.
    """
    postgres = dialect_of(outbox_url) == "postgresql"
    log = tmp_path / "runs.log"
    total = 1000
    ids = write_rows(outbox_url, tallies(log, "t", total))
    if postgres:
        stall_deletes_on(outbox_url)
    env = {"TASKCTL_OUTBOX_URL": outbox_url, "TASKCTL_OUTBOX_BATCH": "20", "TASKCTL_OUTBOX_POLL": "0.05"}
    relay_logs = [tmp_path / f"relay-{life}.log" for life in range(11)]
    table = Table(outbox_url)
    rng = random.Random(20)
    left: list[int] = []  # rows waiting after each kill
    excess: list[int] = []  # after each kill: rows still in the table whose jobs are in Redis already
    stalled = [postgres and life % 2 == 0 for life in range(10)]
    try:
        for life in range(10):
            before = table.count()
            if stalled[life]:
                with deletes_stalled(outbox_url) as waiting:
                    relay = relays(relay_logs[life], **env)
                    wait_for(waiting, 30, "the relay's pass stalled at its DELETE", relay, relay_logs[life], 0.005)
                    relay.send_signal(signal.SIGKILL)
                    relay.wait(timeout=10)
                # The dead relay's session ends when it finds its client gone: its transaction rolls back.
            else:
                relay = relays(relay_logs[life], **env)
                wait_for(lambda b=before: table.count() < b, 30, "the relay moved a batch", relay, relay_logs[life],
                         0.002)  # fmt: skip
                time.sleep(rng.uniform(0, 0.01))
                relay.send_signal(signal.SIGKILL)
                relay.wait(timeout=10)
            left.append(table.count())
            excess.append(sum(queue_entries(redis).values()) - (total - left[-1]))
            assert left[-1] > 0, f"kill {life + 1} came after the relay had moved every row: {left}"
        relay = relays(relay_logs[10], **env)  # the last restart, left to finish
        wait_for(lambda: table.count() == 0, 60, "the last relay moved every row", relay, relay_logs[10])
    finally:
        table.close()
    entries = queue_entries(redis)
    in_redis = job_hashes(redis)
    for _ in range(2):
        workers()
    final = wait_until_final(redis, ids, timeout=120)
    ran = tally_runs(log)
    already = [sum(a for _, a, _ in passes(relay_log)) for relay_log in relay_logs]
    # A life's kill left rows relayed and uncommitted when the excess grew by more than the life cleared.
    between = [
        stalled[life] or excess[life] - (excess[life - 1] if life else 0) + already[life] > 0 for life in range(10)
    ]
    lost = [job_id for job_id in ids if entries[job_id] == 0]
    duplicates = extra(entries) + extra(ran)
    SUMMARIES.append(
        f"outbox 2 (relay SIGKILLed while it moves rows, {dialect_of(outbox_url)}): rows={total} kills={len(left)} "
        f"(between a Redis write and its commit: {sum(between)}, {sum(stalled)} of them stalled there on purpose; "
        f"rows found already relayed by the next relays: {sum(already)}) "
        f"jobs={len(in_redis)} runs={sum(ran.values())} duplicates={duplicates} lost={len(lost)}"
        f"; rows left at each kill={left}"
    )
    assert len(left) == 10 and all(n > 0 for n in left)
    assert (lost, extra(entries), len(entries)) == ([], 0, total)  # each row exactly one queue entry
    assert in_redis == set(ids)
    assert set(final.values()) == {"finished"}, Counter(final.values())
    assert ran == Counter({f"t{i}": 1 for i in range(total)})  # 1,000 runs, each job once
    if postgres:
        # Each stalled kill left a batch written to Redis and uncommitted; later relays wrote nothing for them.
        assert all(excess[life] >= 20 for life in range(10) if stalled[life]), excess
        assert sum(already) >= 20, already


@pytest.fixture(params=["sqlite", "postgresql"])
def rollback_url(request: pytest.FixtureRequest) -> str:
    """The shop's own SQLite file (the default outbox), or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return get_settings().outbox_database


class Abort(Exception):
    """What makes the application's transaction roll back."""


def test_rows_of_a_rolled_back_transaction_never_become_jobs(
    rollback_url: str,
    configured: str,
    redis: Redis,
    relays: Callable[..., subprocess.Popen[bytes]],
    workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Issue 20, point 3: with the relay running, 20 transactions write an order and four rows each, then roll back.

    Some stay open half a second, while the relay looks at the table. A later committed
    marker row becomes its job; by then the rolled-back rows have not, and a worker
    that drains the queue runs the marker alone.
    """
    postgres = dialect_of(rollback_url) == "postgresql"
    log = tmp_path / "runs.log"
    relay_log = tmp_path / "relay.log"
    relay = relays(relay_log, TASKCTL_OUTBOX_URL=rollback_url)
    wait_for(lambda: started(relay_log), 30, "the relay started", relay, relay_log)
    rolled_back: list[str] = []
    conn: Any
    if postgres:
        conn = psycopg.connect(rollback_url)
        conn.execute("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer_email TEXT NOT NULL)")
        conn.commit()
    else:
        conn = shop.connect(sqlite_path(rollback_url))
        with shop.transaction(conn):
            shop.add_product(conn, "MUG", "Coffee mug", 1200, 100)

    def place(n: int, prefix: str, rows: int, pause: float = 0.0) -> list[str]:
        """An order and its rows in one transaction; committed unless Abort is raised (after ``pause`` s)."""
        if postgres:
            conn.execute("INSERT INTO orders (customer_email) VALUES (%s)", (f"customer{n}@example.com",))
        else:
            shop.create_order(conn, f"customer{n}@example.com", n + 1, [{"sku": "MUG", "quantity": 1}])
        written = [outbox.enqueue(conn, "tally", str(log), f"{prefix}{n}.{k}", 0.0).id for k in range(rows)]
        rolled_back.extend(written)
        time.sleep(pause)
        return written

    def transaction() -> Any:
        """The application's transaction: psycopg's, or the shop's (BEGIN IMMEDIATE)."""
        return conn.transaction() if postgres else shop.transaction(conn)

    for n in range(20):
        with suppress(Abort), transaction():
            place(n, "rolled-back-", 4, 0.5 if n % 5 == 0 else 0.0)
            raise Abort
    with transaction():
        [marker] = place(99, "marker-", 1)
    rolled_back.remove(marker)
    orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    if postgres:
        conn.commit()
    conn.close()

    key = CatalogJob.key_for(marker)
    wait_for(lambda: redis.exists(key), 30, "the marker row became its job", relay, relay_log)
    entries = queue_entries(redis)
    appeared = [job_id for job_id in rolled_back if redis.exists(CatalogJob.key_for(job_id))]
    workers(worker_command("--burst"))
    final = wait_until_final(redis, [marker], timeout=60)
    ran = tally_runs(log)
    moved = sum(m for m, _, _ in passes(relay_log))
    SUMMARIES.append(
        f"outbox 3 (rolled-back transactions, {dialect_of(rollback_url)}): rows rolled back={len(rolled_back)} "
        f"jobs of them={len(appeared)} runs of them={sum(n for t, n in ran.items() if t.startswith('rolled'))}; "
        f"committed marker: jobs={len(entries)} runs={ran['marker-99.0']}"
    )
    assert (len(rolled_back), orders) == (80, 1)  # the rolled-back orders went with their rows
    assert appeared == [] and entries == Counter({marker: 1})
    assert moved == 1 and relay.poll() is None
    assert final == {marker: "finished"}
    assert ran == Counter({"marker-99.0": 1})


def test_the_database_down_30_seconds_mid_pass_the_relay_carries_on_and_moves_every_row_once(
    configured: str,
    redis: Redis,
    relays: Callable[..., subprocess.Popen[bytes]],
    workers: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Issue 20, point 4: PostgreSQL stopped (fast shutdown) for 30 s while the relay moves rows, then started again.

    500 rows committed while the relay runs are moved; 500 more are committed, and the
    relay's first pass over them is held at its DELETE (the test's trigger) when the
    server goes down: that batch's jobs are in Redis, its DELETE not committed.
    The relay must stay up, log the outage once and the return once, move the rows
    that waited (writing nothing for the batch it had written) and the 100 committed
    after the return: 1,100 jobs, each run once.
    """
    log = tmp_path / "runs.log"
    relay_log = tmp_path / "relay.log"
    with postgres_server(free_port(), tmp_path / "postgres") as server:
        url = server.url
        env = {"TASKCTL_OUTBOX_URL": url, "TASKCTL_OUTBOX_BATCH": "20"}
        relay = relays(relay_log, **env)
        wait_for(lambda: started(relay_log), 30, "the relay started", relay, relay_log)
        ids = write_rows(url, tallies(log, "before-", 500))  # committed during the relay's run
        table = Table(url)
        wait_for(lambda: table.count() == 0, 30, "the relay moved the first 500 rows", relay, relay_log)
        table.close()
        stall_deletes_on(url)
        with deletes_stalled(url) as waiting:
            ids += write_rows(url, tallies(log, "outage-", 500))
            wait_for(waiting, 30, "the relay's pass stalled at its DELETE", relay, relay_log, 0.005)
            jobs_at_outage = len(job_hashes(redis))
            table = Table(url)
            waited = table.count()  # the stalled pass's DELETE is not committed: all 500 wait
            table.close()
            server.stop()  # ends every session: the relay's, in the middle of its pass, and the trigger's lock
        down_at = time.monotonic()
        while time.monotonic() - down_at < 30:
            assert relay.poll() is None, relay_log.read_text()[-3000:]
            time.sleep(0.5)
        during = relay_log.read_text()
        jobs_after_outage = len(job_hashes(redis))
        server.start()
        table = Table(url)
        wait_for(lambda: table.count() < waited, 60, "the relay moved rows again", relay, relay_log)
        ids += write_rows(url, tallies(log, "after-", 100))  # committed after the return
        wait_for(lambda: table.count() == 0, 60, "the relay moved every row", relay, relay_log)
        table.close()
        entries = queue_entries(redis)
        in_redis = job_hashes(redis)
        for _ in range(2):
            workers()
        final = wait_until_final(redis, ids, timeout=120)
        alive = relay.poll() is None
        relay.send_signal(signal.SIGTERM)  # stopped before its database is: the test's end is no outage
        stopped = relay.wait(timeout=15)
    ran = tally_runs(log)
    text = relay_log.read_text()
    already = sum(a for _, a, _ in passes(relay_log))
    lost = [job_id for job_id in ids if entries[job_id] == 0]
    duplicates = extra(entries) + extra(ran)
    outage_lines = (text.count("the outbox database unavailable"), text.count("the outbox database answers again"))
    SUMMARIES.append(
        f"outbox 4 (PostgreSQL down 30 s mid-pass): rows={len(ids)} waiting when it went down={waited} "
        f"written to Redis, uncommitted, at the outage={jobs_at_outage - 500} found already relayed after={already} "
        f"jobs={len(in_redis)} runs={sum(ran.values())} duplicates={duplicates} lost={len(lost)} "
        f"outage logged={outage_lines[0]} return logged={outage_lines[1]} relay still running={alive}"
    )
    assert alive and stopped == 0  # it never exited, until asked to
    assert outage_lines == (1, 1), text
    assert "the outbox database unavailable" in during  # logged while it was down
    assert jobs_at_outage == jobs_after_outage == 520  # the stalled batch's jobs, nothing more while it was down
    assert waited == 500 and already == 20  # the stalled batch's rows: found relayed, nothing written for them
    assert (lost, extra(entries), len(entries)) == ([], 0, 1100)
    assert in_redis == set(ids)
    assert set(final.values()) == {"finished"}, Counter(final.values())
    expected = Counter(
        {f"{p}{i}": 1 for p, n in (("before-", 500), ("outage-", 500), ("after-", 100)) for i in range(n)}
    )
    assert ran == expected
