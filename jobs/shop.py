"""The shop's SQLite database: products, orders and the ledger of stock already taken.

Shared by the order jobs, the example web app and the report job, so that they all
open the file the same way. Several workers write to it at once: every write that
reads before it writes goes through :func:`transaction`, which takes SQLite's write
lock up front. The path comes from the settings when a connection is opened, so one
process follows the environment it was given.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskctl.fencing import Run
from taskctl.settings import get_settings

# Seconds a connection waits for another process's write lock before SQLite gives up
# with "database is locked"; long enough for any of our short transactions.
BUSY_TIMEOUT = 30.0

_TABLES = ("products", "orders", "order_items", "inventory_applied", "job_fences")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock INTEGER NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    customer_email TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')) DEFAULT 'pending',
    total_cents INTEGER,
    created_at TEXT NOT NULL,
    confirmed_at TEXT
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    sku TEXT NOT NULL REFERENCES products(sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    -- The price when the order was placed: a later price change must not alter the order.
    price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)
);
-- One row per order whose items were taken out of stock: the ledger that makes a
-- duplicated or retried inventory job a no-op.
CREATE TABLE IF NOT EXISTS inventory_applied (
    order_id INTEGER PRIMARY KEY REFERENCES orders(id),
    applied_at TEXT NOT NULL
);
-- The highest fencing token each job has written with (taskctl.fencing): a write from a
-- run older than one that already wrote is refused (see fence()).
CREATE TABLE IF NOT EXISTS job_fences (
    job_id TEXT PRIMARY KEY,
    token INTEGER NOT NULL,
    written_at TEXT NOT NULL
);
"""

DEMO_PRODUCTS: tuple[tuple[str, str, int, int], ...] = (
    ("MUG", "Coffee mug", 1200, 50),
    ("TSHIRT", "T-shirt", 2500, 20),
    ("STICKER", "Sticker pack", 300, 200),
    ("POSTER", "Poster", 1500, 10),
)


def now() -> str:
    """A UTC timestamp as stored in the database: ISO 8601, sortable as text."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open the shop database (settings.database unless ``path`` is given), creating it if needed.

    Autocommit mode (``isolation_level=None``): transactions are opened explicitly with
    :func:`transaction`, never implicitly by the driver. WAL lets readers (the web app,
    reports) go on while a worker writes.
    """
    path = Path(path) if path is not None else get_settings().database
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        _use_wal(conn)
        conn.execute("PRAGMA foreign_keys=ON")
        _create_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, which it keeps once set.

    On a new file, processes opening it at the same moment race to switch it, and SQLite
    answers the losers "database is locked" at once, busy timeout or not (seen with
    workers starting their first jobs together): they try again, within the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create missing tables; when they all exist, only read, so opening takes no write lock."""
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if present.issuperset(_TABLES):
        return
    with transaction(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: COMMIT when the block ends, ROLLBACK when it raises.

    ``BEGIN IMMEDIATE`` takes the write lock before the first read, so a read-check-write
    inside the block cannot interleave with another process's; a second writer waits
    (up to the busy timeout) instead of failing half-way through.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself after some errors; a second ROLLBACK would raise.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def fence(conn: sqlite3.Connection, run: Run | None) -> bool:
    """Inside a write transaction: may this run of a job write? False once a later run of the job has.

    The tokens of one job only grow, run after run, so the table keeps the highest one
    that wrote; a run that lost its lease (frozen, cut off) and comes back after a newer
    run wrote is refused here, by the database, whatever its worker believes. Tokens of
    different jobs are not comparable: the fence is per job, not per row written.
    Outside a worker (``run`` None: a test, a script) there is nothing to fence.
    """
    if run is None:
        return True
    cursor = conn.execute(
        "INSERT INTO job_fences (job_id, token, written_at) VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE"
        " SET token = excluded.token, written_at = excluded.written_at WHERE job_fences.token <= excluded.token",
        (run.job_id, run.token, now()),
    )
    return cursor.rowcount == 1


def _atomic(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]:
    """A transaction of our own, or the caller's when one is already open (they cannot nest)."""
    return nullcontext(conn) if conn.in_transaction else transaction(conn)


def add_product(conn: sqlite3.Connection, sku: str, name: str, price_cents: int, stock: int) -> None:
    """Create the product, or overwrite its name, price and stock (one statement, so atomic)."""
    conn.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,"
        " stock = excluded.stock",
        (sku, name, price_cents, stock),
    )


def create_order(conn: sqlite3.Connection, customer_email: str, user_id: int, items: list[dict[str, Any]]) -> int:
    """Place a pending order and return its id; each item keeps the product's current price.

    ``items`` is like ``[{"sku": "MUG", "quantity": 2}]``. Every item is checked before
    anything is written, so a ValueError (unknown sku, bad quantity, a sku twice, no
    items) leaves no half-made order, even inside a caller's transaction.
    """
    if not items:
        raise ValueError("an order needs at least one item")
    with _atomic(conn):
        lines: list[tuple[str, int, int]] = []
        for index, item in enumerate(items):
            sku, quantity = item.get("sku"), item.get("quantity")
            if not isinstance(sku, str) or not sku:
                raise ValueError(f"item {index}: 'sku' must be a non-empty string, got {sku!r}")
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
                raise ValueError(f"item {index}: 'quantity' must be an integer above 0, got {quantity!r}")
            if any(sku == line[0] for line in lines):
                raise ValueError(f"item {index}: sku {sku!r} appears twice")
            product = conn.execute("SELECT price_cents FROM products WHERE sku = ?", (sku,)).fetchone()
            if product is None:
                raise ValueError(f"item {index}: unknown product {sku!r}")
            lines.append((sku, quantity, product["price_cents"]))
        cursor = conn.execute(
            "INSERT INTO orders (customer_email, user_id, status, created_at) VALUES (?, ?, 'pending', ?)",
            (customer_email, user_id, now()),
        )
        order_id = cursor.lastrowid
        assert order_id is not None
        conn.executemany(
            "INSERT INTO order_items (order_id, sku, quantity, price_cents) VALUES (?, ?, ?, ?)",
            [(order_id, sku, quantity, price) for sku, quantity, price in lines],
        )
    return order_id


def seed_demo(conn: sqlite3.Connection) -> int:
    """Add the demo products when there are no products at all; return how many were added.

    A shop that already has products is left alone, so this is safe to run at every start.
    """
    with _atomic(conn):
        if conn.execute("SELECT 1 FROM products LIMIT 1").fetchone() is not None:
            return 0
        for sku, name, price_cents, stock in DEMO_PRODUCTS:
            add_product(conn, sku, name, price_cents, stock)
    return len(DEMO_PRODUCTS)
