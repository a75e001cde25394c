"""Order jobs. Jobs run at least once, and several workers may run copies of one job at the same
time, so each job reads, checks and writes in one SQLite write transaction: whichever copy comes
second sees the first one's work and changes nothing. Each transaction is also fenced
(jobs.shop.fence): a run of the job that lost its lease and comes back after a newer run wrote
is refused by the database, and stops."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from jobs.shop import connect, fence, now, transaction
from taskctl.declare import job
from taskctl.exceptions import LeaseLostError, PermanentError, TransientError
from taskctl.fencing import current_run

_ITEM_SHAPE = '{"sku": "MUG", "quantity": 2}'


@job(queue="default", timeout=60, retries=3, backoff=5)
def process_order(order_id: int) -> dict[str, Any]:
    """Confirm a pending order: compute its total and mark it confirmed, once.

    The total comes from the prices copied into the order when it was placed, so a later
    price change does not alter what the customer agreed to. An order that is no longer
    pending is reported as it is, so a duplicated or retried job is harmless.
    """
    try:
        with closing(connect()) as conn, transaction(conn):
            _fenced(conn)
            order = conn.execute("SELECT status, total_cents FROM orders WHERE id = ?", (order_id,)).fetchone()
            if order is None:
                raise PermanentError(f"no order {order_id}")
            if order["status"] != "pending":
                return {
                    "order_id": order_id,
                    "status": order["status"],
                    "total_cents": order["total_cents"],
                    "changed": False,
                }
            total = conn.execute(
                "SELECT COALESCE(SUM(quantity * price_cents), 0) FROM order_items WHERE order_id = ?", (order_id,)
            ).fetchone()[0]
            conn.execute(
                "UPDATE orders SET status = 'confirmed', total_cents = ?, confirmed_at = ? WHERE id = ?",
                (total, now(), order_id),
            )
            return {"order_id": order_id, "status": "confirmed", "total_cents": total, "changed": True}
    except sqlite3.OperationalError as exc:
        if _is_locked(exc):
            raise TransientError(f"the shop database is busy, try again later: {exc}") from exc
        raise


@job(queue="default", timeout=60, retries=3, backoff=5)
def update_inventory(order_id: int, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Take an order's items out of stock, once per order.

    The order id is required (the issue asked for ``update_inventory(items)``): without it a
    retried or duplicated job cannot tell that its stock was already taken, and would take
    it twice. The ledger table ``inventory_applied`` records each order whose stock was
    taken, in the same transaction as the stock change. When any item cannot be served,
    nothing is taken: a partly applied order could never be completed by a retry.
    """
    wanted = _checked_items(items)
    try:
        with closing(connect()) as conn, transaction(conn):
            _fenced(conn)
            if conn.execute("SELECT 1 FROM inventory_applied WHERE order_id = ?", (order_id,)).fetchone():
                return {"order_id": order_id, "applied": False}
            if conn.execute("SELECT 1 FROM orders WHERE id = ?", (order_id,)).fetchone() is None:
                raise PermanentError(f"no order {order_id}")
            for index, (sku, quantity) in enumerate(wanted):
                product = conn.execute("SELECT stock FROM products WHERE sku = ?", (sku,)).fetchone()
                if product is None:
                    raise PermanentError(f"item {index}: unknown product {sku!r}")
                if product["stock"] < quantity:
                    raise PermanentError(f"insufficient stock for {sku}: {product['stock']} left, {quantity} wanted")
            conn.executemany("UPDATE products SET stock = stock - ? WHERE sku = ?", [(q, s) for s, q in wanted])
            conn.execute("INSERT INTO inventory_applied (order_id, applied_at) VALUES (?, ?)", (order_id, now()))
            return {"order_id": order_id, "applied": True, "items": len(wanted)}
    except sqlite3.OperationalError as exc:
        if _is_locked(exc):
            raise TransientError(f"the shop database is busy, try again later: {exc}") from exc
        raise


def _fenced(conn: sqlite3.Connection) -> None:
    """Refuse, and roll back, the transaction of a run that a newer run of the job has overtaken."""
    run = current_run()
    if run is not None and not fence(conn, run):
        raise LeaseLostError(f"run {run.token} of this job is stale: a newer run has written")


def _checked_items(items: Any) -> list[tuple[str, int]]:
    """Refuse malformed items before touching the database: no retry can fix a bad argument."""
    if not isinstance(items, list) or not items:
        raise PermanentError(f"items must be a non-empty list like [{_ITEM_SHAPE}], got {items!r}")
    wanted: list[tuple[str, int]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PermanentError(f"item {index}: expected an object like {_ITEM_SHAPE}, got {item!r}")
        sku, quantity = item.get("sku"), item.get("quantity")
        if not isinstance(sku, str) or not sku.strip():
            raise PermanentError(f"item {index}: 'sku' must be a non-empty string, got {sku!r}")
        # bool is an int in Python, but `true` is not a quantity.
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise PermanentError(f"item {index}: 'quantity' must be an integer above 0, got {quantity!r}")
        if any(sku == seen for seen, _ in wanted):
            raise PermanentError(f"item {index}: sku {sku!r} appears twice; give each product once")
        wanted.append((sku, quantity))
    return wanted


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    """Another writer held the lock past the busy timeout: a later try can succeed. Other
    operational errors (a missing table, an unreadable file) are not this."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)) or "locked" in str(exc)
