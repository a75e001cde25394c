"""The outbox's figures (issue 20), on SQLite and PostgreSQL: ``python -m bench --systems outbox`` runs them alone.

For each database, with the job ``process_order(order_id)`` (one argument, the id of
the order row the application has just written):

1. What an enqueue costs the application: ``taskctl.enqueue.enqueue`` alone (one
   Redis round trip) beside ``outbox.enqueue`` inside the application's own
   transaction (an order INSERT and its COMMIT), one job per transaction, and the
   same transaction without the job, so that what the outbox row adds is seen apart
   from what the application pays anyway. The variants take turns, in rounds.
2. The relay's throughput: rows committed beforehand, then ``Relay.relay_once``
   called until a pass finds none, in this process; Redis's commands and CPU per
   row from its own counters (INFO commandstats, INFO cpu), as for the workers.
3. Commit-to-queued latency: a relay process (``python -m taskctl.relay``) running,
   rows committed one per transaction on a fixed schedule (not paced by the relay),
   each timed from its ``commit()`` returning until its job's hash exists in Redis
   (a thread looks every half millisecond, one pipelined EXISTS for all waiting).

Only the relay's public API and process are used. SQLite is a file in the bench's
temporary folder, opened as the shop opens its database (WAL, the default
``synchronous=FULL``: each COMMIT syncs the WAL to disk). PostgreSQL is the pgserver
wheel's, started by the bench on a free port through ``tests.postgres`` (the test
suite's helper, imported from ``tests/``: the bench runs from the project's folder);
that server runs with ``fsync=off`` and ``synchronous_commit=off``, so its COMMITs
never wait for a disk: PostgreSQL's figures are its CPU and round trips, not its I/O.
Redis is the bench's own.
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from redis import Redis

from bench import free_port
from taskctl.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
#: The job every figure enqueues, with the new order's id: the outbox's own example.
JOB = "process_order"
#: Turns each cost variant takes, so that a drift of the machine spreads over all of them.
ROUNDS = 10
#: Seconds between two commits of the latency run.
COMMIT_INTERVAL_S = 0.02
#: Seconds between two looks of the latency run for the jobs it waits for.
LOOK_S = 0.0005
#: Seconds a committed row may take to become a job before the run is taken as broken.
APPEAR_TIMEOUT_S = 10.0
#: Rows per transaction when the relay's rows are written beforehand.
FILL_BATCH = 1000
#: The relay's settings, written out (a .env must not change what is measured): taskctl's defaults.
POLL_S = 0.2
BATCH = 500
THROUGHPUT_GOAL = 5_000
LATENCY_GOAL_MS = {"postgresql": 50.0, "sqlite": POLL_S * 1000 + 50.0}

#: bench's ``redis_counters``: commands Redis has run (Lua's included) and its CPU seconds.
Counters = Callable[[Redis], tuple[int, float]]
Goal = Callable[[str, str, bool], None]


@dataclass(frozen=True)
class Sizes:
    calls: int = 2000
    """Calls per cost variant."""
    rows: int = 20_000
    """Rows the relay moves for its throughput."""
    commits: int = 200
    """Commits timed one by one for the latency."""


@contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A PostgreSQL server of the bench's own (tests.postgres: the pgserver wheel's), on a free port; its URL."""
    from tests.postgres import postgres_server

    with postgres_server(free_port(), workdir / "postgres") as server:
        yield server.url


def versions(postgres_url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {"sqlite": sqlite3.sqlite_version, "postgresql": str(row[0]) if row else "?"}


class App:
    """The application's own connection, used as a shop's code would: an order row, then its COMMIT."""

    def __init__(self, dialect: str, url: str) -> None:
        self.dialect = dialect
        self.conn: Any
        if dialect == "sqlite":
            from taskctl.outbox_db import sqlite_path

            # As jobs.shop opens the shop's database: WAL, the default synchronous=FULL.
            self.conn = sqlite3.connect(sqlite_path(url), timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer_email TEXT NOT NULL,"
                " total_cents INTEGER NOT NULL, created_at REAL NOT NULL)"
            )
        else:
            import psycopg

            self.conn = psycopg.connect(url)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, customer_email TEXT NOT NULL,"
                " total_cents INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL)"
            )
        from taskctl.outbox_db import wrap

        # What outbox.enqueue does on first use, done here so that no measured call pays for it.
        wrap(self.conn).create_table()
        self.conn.commit()

    def order(self) -> int:
        """INSERT an order in the current transaction; its id."""
        values = ("customer@example.com", 4200, time.time())
        if self.dialect == "sqlite":
            cursor = self.conn.execute(
                "INSERT INTO orders (customer_email, total_cents, created_at) VALUES (?, ?, ?)", values
            )
            return int(cursor.lastrowid)
        row = self.conn.execute(
            "INSERT INTO orders (customer_email, total_cents, created_at) VALUES (%s, %s, %s) RETURNING id", values
        ).fetchone()
        return int(row[0])

    def commit(self) -> None:
        self.conn.commit()

    def clear(self) -> None:
        """Empty the outbox (and the orders), outside any measurement."""
        from taskctl.outbox_db import TABLE

        if self.dialect == "sqlite":
            self.conn.execute(f"DELETE FROM {TABLE}")
            self.conn.execute("DELETE FROM orders")
        else:
            self.conn.execute(f"TRUNCATE {TABLE}, orders")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def run(
    redis_url: str, env: dict[str, str], postgres_url: str, workdir: Path, sizes: Sizes, counters: Counters
) -> dict[str, dict[str, float]]:
    """One repeat: every figure, for each database."""
    from taskctl.settings import load_settings

    redis = Redis.from_url(redis_url)
    folder = Path(tempfile.mkdtemp(prefix="outbox-", dir=workdir))
    figures: dict[str, dict[str, float]] = {}
    for dialect in DATABASES:
        url = f"sqlite:///{folder / 'shop.db'}" if dialect == "sqlite" else postgres_url
        relay_env = env | {"TASKCTL_OUTBOX_URL": url, "TASKCTL_OUTBOX_POLL": str(POLL_S),
                           "TASKCTL_OUTBOX_BATCH": str(BATCH)}  # fmt: skip
        app = App(dialect, url)
        try:
            app.clear()
            redis.flushdb()
            found = enqueue_costs(app, sizes.calls)
            app.clear()
            redis.flushdb()
            found |= relay_throughput(app, load_settings(relay_env, env_file=None), redis, sizes.rows, counters)
            app.clear()
            redis.flushdb()
            with open(folder / f"relay-{dialect}.log", "ab") as log:
                found |= percentiles(commit_to_queued(app, relay_env, redis, sizes.commits, log))
        finally:
            app.close()
        redis.flushdb()
        figures[dialect] = found
    return figures


def enqueue_costs(app: App, calls: int) -> dict[str, float]:
    """Microseconds per call of each way to enqueue (see report() for what each includes)."""
    from taskctl import outbox
    from taskctl.enqueue import enqueue

    spent = {"plain_enqueue_us": 0.0, "txn_us": 0.0, "txn_outbox_us": 0.0, "txn_then_enqueue_us": 0.0}
    call_alone = [0.0]

    def plain() -> None:
        enqueue(JOB, 1)

    def txn() -> None:
        app.order()
        app.commit()

    def txn_outbox() -> None:
        order = app.order()
        started = time.perf_counter()
        outbox.enqueue(app.conn, JOB, order)
        call_alone[0] += time.perf_counter() - started
        app.commit()

    def txn_then_enqueue() -> None:
        order = app.order()
        app.commit()
        enqueue(JOB, order)

    variants: list[tuple[str, Callable[[], None]]] = [
        ("plain_enqueue_us", plain), ("txn_us", txn), ("txn_outbox_us", txn_outbox),
        ("txn_then_enqueue_us", txn_then_enqueue),
    ]  # fmt: skip
    for _, action in variants:  # warm-up: connections, the catalog, the prepared statements
        for _ in range(20):
            action()
    call_alone[0] = 0.0
    each = max(1, calls // ROUNDS)
    for turn in range(ROUNDS):
        for key, action in variants[turn % len(variants) :] + variants[: turn % len(variants)]:
            started = time.perf_counter()
            for _ in range(each):
                action()
            spent[key] += time.perf_counter() - started
    done = each * ROUNDS
    figures = {key: seconds / done * 1e6 for key, seconds in spent.items()}
    figures["outbox_call_us"] = call_alone[0] / done * 1e6
    figures["outbox_row_us"] = figures["txn_outbox_us"] - figures["txn_us"]
    return figures


def relay_throughput(app: App, settings: Settings, redis: Redis, rows: int, counters: Counters) -> dict[str, float]:
    """Rows per second for ``Relay.relay_once`` to empty a table of ``rows`` committed rows, and their cost to Redis."""
    from taskctl import outbox
    from taskctl.relay import Relay

    for start in range(0, rows, FILL_BATCH):
        for order in range(start, min(rows, start + FILL_BATCH)):
            outbox.enqueue(app.conn, JOB, order)
        app.commit()
    relay = Relay(settings)
    try:
        relay.database()  # its connections, opened before the clock starts
        calls_before, cpu_before = counters(redis)
        moved, passes = 0, 0
        started = time.perf_counter()
        while True:
            done = relay.relay_once()
            passes += 1
            moved += done.moved
            if not done.rows:
                break
        elapsed = time.perf_counter() - started
        calls_after, cpu_after = counters(redis)
    finally:
        relay.close()
    if moved != rows:
        raise RuntimeError(f"the relay moved {moved} of {rows} rows (the others: stuck or already relayed)")
    return {
        "relay_rows_per_s": rows / elapsed,
        "relay_passes": float(passes),
        "relay_commands_per_row": (calls_after - calls_before) / rows,
        "relay_redis_cpu_us_per_row": (cpu_after - cpu_before) / rows * 1e6,
    }


def commit_to_queued(app: App, env: dict[str, str], redis: Redis, commits: int, log: IO[bytes]) -> list[float]:
    """Milliseconds from each commit's return to its job in Redis, with ``python -m taskctl.relay`` running."""
    from rq.job import Job

    from taskctl import outbox
    from taskctl.stack import stop

    def commit_one() -> tuple[str, float]:
        order = app.order()
        handle = outbox.enqueue(app.conn, JOB, order)
        app.commit()
        return Job.key_for(handle.id), time.perf_counter()

    relay = subprocess.Popen([sys.executable, "-m", "taskctl.relay"], env=env, cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    pending: dict[str, float] = {}
    lock = threading.Lock()
    committed = threading.Event()
    found: list[float] = []

    def look() -> None:
        """Until every committed row's job exists: one pipelined EXISTS for all waiting, every LOOK_S."""
        while True:
            with lock:
                waiting = list(pending.items())
            if not waiting and committed.is_set():
                return
            if waiting:
                with redis.pipeline(transaction=False) as pipeline:
                    for key, _ in waiting:
                        pipeline.exists(key)
                    there = pipeline.execute()
                now = time.perf_counter()
                late = False
                with lock:
                    for (key, at), exists in zip(waiting, there, strict=True):
                        if exists:
                            found.append((now - at) * 1000)
                            del pending[key]
                        elif now - at > APPEAR_TIMEOUT_S:
                            late = True
                if late:
                    raise TimeoutError(f"a committed row was no job after {APPEAR_TIMEOUT_S} s; see {log.name}")
            if relay.poll() is not None:
                raise RuntimeError(f"the relay exited (rc={relay.returncode}); see {log.name}")
            time.sleep(LOOK_S)

    try:
        with ThreadPoolExecutor(1) as pool:
            # Not counted: the relay's start (the first row is its first job), then two more to warm up.
            for _ in range(3):
                key, at = commit_one()
                pending[key] = at
                committed.set()
                pool.submit(look).result()
                committed.clear()
            found.clear()
            looking = pool.submit(look)
            started = time.perf_counter()
            for number in range(commits):
                wait = started + number * COMMIT_INTERVAL_S - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if looking.done():
                    break  # it failed: its error is raised below
                key, at = commit_one()
                with lock:
                    pending[key] = at
            committed.set()
            looking.result()
    finally:
        stop(relay)
    return found


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "latency_p50_ms": statistics.median(ordered),
        "latency_p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
        "latency_p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "latency_max_ms": ordered[-1],
    }


def medians(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {db: {key: statistics.median(run[db][key] for run in runs) for key in runs[0][db]} for db in runs[0]}


def report(figures: dict[str, dict[str, float]], about: dict[str, str], repeats: int, sizes: Sizes, goal: Goal) -> None:
    """The outbox's figures and its goals, in the bench's style (``goal`` prints a goal's line)."""
    print(f"\nthe outbox (issue 20), job {JOB}(order_id), medians of {repeats} repeat(s):")
    print(f"  SQLite {about['sqlite']}: a file, WAL, synchronous=FULL (each COMMIT syncs to disk);")
    print(f"  PostgreSQL {about['postgresql']}: local, fsync=off and synchronous_commit=off (no COMMIT waits for disk)")
    print(f"\nwhat one enqueue costs the application, µs per call ({sizes.calls} calls each, {ROUNDS} rounds in turn):")
    print("  enqueue      taskctl.enqueue.enqueue alone: one Redis round trip, no database")
    print("  txn          the application's transaction alone: an order INSERT and its COMMIT, no job")
    print("  txn+outbox   the same with outbox.enqueue inside: one job per transaction, COMMIT included")
    print("  outbox call  outbox.enqueue alone, inside the open transaction (COMMIT not included)")
    print("  row          txn+outbox minus txn: what the row adds to a committed transaction (its COMMIT share too)")
    print("  txn;enqueue  txn, then enqueue after its COMMIT: the same request without the outbox")
    columns = [("plain_enqueue_us", "enqueue"), ("txn_us", "txn"), ("txn_outbox_us", "txn+outbox"),
               ("outbox_call_us", "outbox call"), ("outbox_row_us", "row"),
               ("txn_then_enqueue_us", "txn;enqueue")]  # fmt: skip
    print(f"  {'database':<12}" + "".join(f"{title:>13}" for _, title in columns))
    for db, found in figures.items():
        print(f"  {DATABASES[db]:<12}" + "".join(f"{found[key]:>13.1f}" for key, _ in columns))
    for db, found in figures.items():
        plain = found["plain_enqueue_us"]
        print(f"  {DATABASES[db]}: outbox call / enqueue {found['outbox_call_us'] / plain:.2f}x,"
              f" row / enqueue {found['outbox_row_us'] / plain:.2f}x,"
              f" txn+outbox / txn;enqueue {found['txn_outbox_us'] / found['txn_then_enqueue_us']:.2f}x")  # fmt: skip
    print(f"\nthe relay: Relay.relay_once in a loop (batches of {BATCH}) until the table is empty,"
          f" {sizes.rows:,} rows committed beforehand:")  # fmt: skip
    print(f"  {'database':<12}{'rows/s':>10}{'passes':>8}{'commands/row':>14}{'Redis CPU/row':>15}")
    for db, found in figures.items():
        print(f"  {DATABASES[db]:<12}{found['relay_rows_per_s']:>10,.0f}{found['relay_passes']:>8.0f}"
              f"{found['relay_commands_per_row']:>14.2f}{found['relay_redis_cpu_us_per_row']:>12.1f} µs")  # fmt: skip
    print(f"\ncommit-to-queued: python -m taskctl.relay running (SQLite: polled every {POLL_S:g} s; PostgreSQL:"
          f" woken by NOTIFY), {sizes.commits} commits {COMMIT_INTERVAL_S * 1000:.0f} ms apart,")  # fmt: skip
    print(f"  each from commit() returning to its rq:job:<id> existing (looked for every {LOOK_S * 1000:g} ms):")
    print(f"  {'database':<12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for db, found in figures.items():
        cells = (found[f"latency_{p}_ms"] for p in ("p50", "p95", "p99", "max"))
        print(f"  {DATABASES[db]:<12}" + "".join(f"{cell:>9.1f}" for cell in cells))
    print("\ngoals of issue 20 (this run):")
    for db, found in figures.items():
        rate = found["relay_rows_per_s"]
        goal(f"relay throughput, {DATABASES[db]}: {rate:,.0f} rows/s", f">= {THROUGHPUT_GOAL:,} rows/s",
             rate >= THROUGHPUT_GOAL)  # fmt: skip
    for db, found in figures.items():
        p99, limit = found["latency_p99_ms"], LATENCY_GOAL_MS[db]
        how = "NOTIFY" if db == "postgresql" else f"poll {POLL_S:g} s"
        within = f"<= {limit:.0f} ms" + (" (the poll interval + 50 ms)" if db == "sqlite" else "")
        goal(f"commit-to-queued p99, {DATABASES[db]} ({how}): {p99:.1f} ms", within, p99 <= limit)
