"""process_order and update_inventory: called directly, then duplicated and raced on real workers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

import jobs.shop
from jobs.orders import process_order, update_inventory
from jobs.shop import add_product, connect, create_order, transaction
from taskctl.enqueue import enqueue
from taskctl.exceptions import PermanentError, TransientError
from taskctl.rqclasses import Queue
from taskctl.stack import stop
from tests.conftest import ROOT, run_burst_worker, taskctl, worker_command
from tests.test_enqueue_cli import job_id_from

MUG_AND_SHIRT = [{"sku": "MUG", "quantity": 2}, {"sku": "TSHIRT", "quantity": 3}]


@pytest.fixture
def shop() -> Iterator[sqlite3.Connection]:
    """The test's shop database (in its TASKCTL_DATA_DIR, where workers find it too), with two products."""
    conn = connect()
    add_product(conn, "MUG", "Coffee mug", 1200, 10)
    add_product(conn, "TSHIRT", "T-shirt", 2500, 5)
    yield conn
    conn.close()


def stock(conn: sqlite3.Connection) -> dict[str, int]:
    return {row["sku"]: row["stock"] for row in conn.execute("SELECT sku, stock FROM products")}


def order_row(conn: sqlite3.Connection, order_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    assert row is not None
    return row  # type: ignore[no-any-return]


def ledger(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT order_id FROM inventory_applied")]


# Called directly: no Redis, no worker.


def test_connect_creates_the_database_in_the_data_dir_with_wal(shop: sqlite3.Connection) -> None:
    path = Path(os.environ["TASKCTL_DATA_DIR"]) / "shop.sqlite3"
    assert path.is_file()
    assert shop.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert shop.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def _open_when_released(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait(timeout=30)
    try:
        connect(Path(path)).close()
    except sqlite3.Error as exc:
        errors.append(repr(exc))


def test_processes_opening_a_new_database_at_the_same_moment_all_open_it(tmp_path: Path) -> None:
    """Workers starting their first jobs together: each opens the new file and switches it to WAL."""
    import multiprocessing

    with multiprocessing.Manager() as manager:
        errors = manager.list()
        for attempt in range(20):  # without the retry, 8 of 160 opens failed here
            barrier = manager.Barrier(8)
            path = str(tmp_path / f"shop{attempt}.sqlite3")
            processes = [multiprocessing.Process(target=_open_when_released, args=(path, barrier, errors))
                         for _ in range(8)]  # fmt: skip
            for process in processes:
                process.start()
            for process in processes:
                process.join(timeout=60)
            assert [process.exitcode for process in processes] == [0] * 8
        assert list(errors) == []


def test_create_order_copies_prices_and_refuses_unknown_products(shop: sqlite3.Connection) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)
    add_product(shop, "MUG", "Coffee mug", 9999, 10)  # a later price change

    items = shop.execute("SELECT sku, quantity, price_cents FROM order_items WHERE order_id = ?", (order_id,))
    assert sorted(tuple(row) for row in items) == [("MUG", 2, 1200), ("TSHIRT", 3, 2500)]
    assert order_row(shop, order_id)["status"] == "pending"
    with pytest.raises(ValueError, match="unknown product 'HAT'"):
        create_order(shop, "ann@example.com", 7, [{"sku": "MUG", "quantity": 1}, {"sku": "HAT", "quantity": 1}])
    assert shop.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1


def test_transaction_rolls_back_when_the_block_raises(shop: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError), transaction(shop):
        shop.execute("UPDATE products SET stock = 0")
        raise RuntimeError("boom")

    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}
    assert not shop.in_transaction


def test_process_order_confirms_with_the_total_once(shop: sqlite3.Connection) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)

    first = process_order(order_id)
    confirmed_at = order_row(shop, order_id)["confirmed_at"]
    second = process_order(order_id)

    assert first == {"order_id": order_id, "status": "confirmed", "total_cents": 2 * 1200 + 3 * 2500, "changed": True}
    assert second == {**first, "changed": False}
    row = order_row(shop, order_id)
    assert (row["status"], row["total_cents"]) == ("confirmed", 9900)
    assert confirmed_at and row["confirmed_at"] == confirmed_at


def test_process_order_of_an_unknown_order_is_permanent(shop: sqlite3.Connection) -> None:
    with pytest.raises(PermanentError, match="no order 404"):
        process_order(404)


def test_update_inventory_takes_stock_once_per_order(shop: sqlite3.Connection) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)

    first = update_inventory(order_id, MUG_AND_SHIRT)
    second = update_inventory(order_id, MUG_AND_SHIRT)

    assert first == {"order_id": order_id, "applied": True, "items": 2}
    assert second == {"order_id": order_id, "applied": False}
    assert stock(shop) == {"MUG": 8, "TSHIRT": 2}
    assert ledger(shop) == [order_id]


def test_update_inventory_of_an_unknown_order_is_permanent(shop: sqlite3.Connection) -> None:
    with pytest.raises(PermanentError, match="no order 404"):
        update_inventory(404, MUG_AND_SHIRT)
    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}


def test_insufficient_stock_changes_no_product(shop: sqlite3.Connection) -> None:
    items = [{"sku": "MUG", "quantity": 2}, {"sku": "TSHIRT", "quantity": 6}]  # only the second is short
    order_id = create_order(shop, "ann@example.com", 7, items)

    with pytest.raises(PermanentError, match="insufficient stock for TSHIRT: 5 left, 6 wanted"):
        update_inventory(order_id, items)

    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}
    assert ledger(shop) == []


def test_an_unknown_product_changes_no_product(shop: sqlite3.Connection) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)

    with pytest.raises(PermanentError, match="item 1: unknown product 'HAT'"):
        update_inventory(order_id, [{"sku": "MUG", "quantity": 1}, {"sku": "HAT", "quantity": 1}])

    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}
    assert ledger(shop) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "non-empty list"),
        ([{"sku": "MUG", "quantity": 0}], "item 0: 'quantity' must be an integer above 0"),
        ([{"sku": "MUG", "quantity": 1}, {"quantity": 1}], "item 1: 'sku' must be a non-empty string"),
        ([{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 2}], "item 1: sku 'MUG' appears twice"),
        ([{"sku": "MUG", "quantity": True}], "item 0: 'quantity' must be an integer"),
        (["MUG"], "item 0: expected an object"),
    ],
)
def test_invalid_items_are_permanent_and_change_nothing(
    shop: sqlite3.Connection, items: list[dict[str, Any]], message: str
) -> None:
    order_id = create_order(shop, "ann@example.com", 7, [{"sku": "MUG", "quantity": 1}])

    with pytest.raises(PermanentError, match=message):
        update_inventory(order_id, items)

    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}
    assert ledger(shop) == []


def test_a_database_locked_past_the_busy_timeout_is_transient(
    shop: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)
    monkeypatch.setattr(jobs.shop, "BUSY_TIMEOUT", 0.2)

    with transaction(shop):  # another writer holds the lock
        with pytest.raises(TransientError, match="database is locked"):
            update_inventory(order_id, MUG_AND_SHIRT)
        with pytest.raises(TransientError, match="database is locked"):
            process_order(order_id)

    assert stock(shop) == {"MUG": 10, "TSHIRT": 5}
    assert order_row(shop, order_id)["status"] == "pending"


# On real workers.


def test_jobs_enqueued_twice_by_the_cli_apply_once(configured: str, redis: Redis, shop: sqlite3.Connection) -> None:
    items = '[{"sku": "MUG", "quantity": 2}]'
    order_id = create_order(shop, "ann@example.com", 7, [{"sku": "MUG", "quantity": 2}])
    enqueued = [
        taskctl("enqueue", "update_inventory", str(order_id), items),
        taskctl("enqueue", "update_inventory", str(order_id), items),
        taskctl("enqueue", "process_order", str(order_id)),
        taskctl("enqueue", "process_order", str(order_id)),
    ]
    assert all(result.exit_code == 0 for result in enqueued), [result.output for result in enqueued]

    run_burst_worker()

    jobs = [Job.fetch(job_id_from(result.output), connection=redis, serializer=JSONSerializer) for result in enqueued]
    assert [job.get_status() for job in jobs] == ["finished"] * 4
    results: list[dict[str, Any]] = [job.return_value() or {} for job in jobs]
    assert [result["applied"] for result in results[:2]] == [True, False]
    assert [result["changed"] for result in results[2:]] == [True, False]
    assert stock(shop) == {"MUG": 8, "TSHIRT": 5}
    assert ledger(shop) == [order_id]
    row = order_row(shop, order_id)
    assert (row["status"], row["total_cents"]) == ("confirmed", 2400)


def test_two_workers_racing_on_one_order_apply_it_once(
    configured: str, redis: Redis, shop: sqlite3.Connection, tmp_path: Path
) -> None:
    order_id = create_order(shop, "ann@example.com", 7, MUG_AND_SHIRT)
    jobs = []
    for _ in range(20):
        jobs.append(enqueue("update_inventory", order_id, MUG_AND_SHIRT))
        jobs.append(enqueue("process_order", order_id))
    started = Queue("default", connection=redis).started_job_registry
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers: list[subprocess.Popen[bytes]] = []

    # The test holds the write lock until each worker is inside a job waiting for it, so that
    # one worker cannot drain the queue before the other starts, and the two really contend.
    blocker = connect()
    try:
        with transaction(blocker):
            for log in logs:
                with log.open("wb") as out:
                    workers.append(
                        subprocess.Popen(
                            worker_command("--burst"),
                            env=dict(os.environ),
                            cwd=ROOT,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            deadline = time.monotonic() + 30
            while started.count < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert started.count == 2, "both workers should each be running a job, waiting for the lock"
        for process in workers:
            assert process.wait(timeout=60) == 0
    finally:
        blocker.close()
        for process in workers:
            if process.poll() is None:
                stop(process, timeout=5)

    fetched = [Job.fetch(job.id, connection=redis, serializer=JSONSerializer) for job in jobs]
    assert [job.get_status() for job in fetched] == ["finished"] * 40
    assert len({job.worker_name for job in fetched}) == 2
    assert all("Job OK" in log.read_text() for log in logs)
    returned: list[dict[str, Any]] = [job.return_value() or {} for job in fetched]
    assert sum(1 for result in returned if result.get("applied")) == 1
    assert sum(1 for result in returned if result.get("changed")) == 1
    assert stock(shop) == {"MUG": 8, "TSHIRT": 2}
    assert ledger(shop) == [order_id]
    row = order_row(shop, order_id)
    assert (row["status"], row["total_cents"]) == ("confirmed", 9900)
