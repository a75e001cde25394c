"""A web shop whose ``POST /orders`` returns at once, the design notes' example made runnable.

Before taskctl, placing an order sent the confirmation mail, the push notification and
updated the stock inside the request: the customer waited for the slowest mail server,
and a failure there failed the order. Here the request only does what must be done
before answering (validate, write the order) and leaves the rest to the workers, which
retry it when a server is down for a while. That is safe because the jobs are
idempotent: ``process_order`` confirms an order once, ``update_inventory`` keeps a
ledger per order, ``push_notification`` sends an idempotency key; a job run twice does
its work once.

The order and its four jobs are written in one SQLite transaction, the jobs as rows of
the outbox (:mod:`taskctl.outbox`), so they commit together: there is no order whose jobs
were lost (Redis down, or the process killed, between saving the order and enqueueing)
and no job for an order that was rolled back. The request never touches Redis, so it
answers 202 while Redis is down; the relay (``python -m taskctl.relay``, a process of
the stack) moves committed rows into Redis as jobs, with the ids the request returned,
once Redis answers. Until then ``GET /jobs/ID`` says "outbox". That is why the relay's
database (``TASKCTL_OUTBOX_URL``) must be the shop's own file, which it is by default.

Run it from the project root, next to the stack (``python3 dev.py up``)::

    python examples/shop_app.py --port 8000
    curl -X POST localhost:8000/orders -H 'Content-Type: application/json' \\
         -d '{"customer_email": "ann@example.com", "user_id": 7, "items": [{"sku": "MUG", "quantity": 2}]}'
    curl localhost:8000/jobs/JOB_ID      # outbox / queued / started / finished / failed
    curl localhost:8000/orders/ORDER_ID  # pending, then confirmed once process_order ran
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from contextlib import closing
from datetime import datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from jobs import shop
from taskctl import outbox, outbox_db
from taskctl.connection import connect
from taskctl.exceptions import NoSuchJobError, RedisUnavailableError, SettingsError
from taskctl.outbox import OutboxHandle
from taskctl.outbox_ops import find_row
from taskctl.settings import Settings, get_settings, mask_url
from taskctl.status import fetch_job, report

Reply = tuple[Response, int]


class BadRequest(ValueError):
    """A request body the shop cannot use; the message names the field and is shown to the client."""


def error(message: str, status: int) -> Reply:
    return jsonify(error=message), status


def create_app() -> Flask:
    """The shop; SettingsError when the relay would not read the shop's outbox (its jobs would never run)."""
    check_outbox(get_settings())
    app = Flask(__name__)
    with closing(shop.connect()) as conn:
        shop.seed_demo(conn)  # demo products on a fresh machine; an existing shop is left alone

    @app.post("/orders")
    def place_order() -> Reply:
        try:
            email, user_id, items = parse_order(request.get_json(silent=True))
            # One transaction: the order and its jobs' outbox rows commit together, or neither does.
            with closing(shop.connect()) as conn, shop.transaction(conn):
                try:
                    order_id = shop.create_order(conn, email, user_id, items)
                except ValueError as exc:  # unknown sku, a sku twice, ...: nothing written
                    raise BadRequest(str(exc)) from None
                jobs = order_jobs(conn, order_id, email, user_id, items)
        except BadRequest as exc:
            return error(str(exc), 400)
        return jsonify(order_id=order_id, jobs={name: job.id for name, job in jobs.items()}), 202

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Reply:
        # The outbox first: the relay deletes a row only once its job is in Redis, so an id in
        # neither place is unknown. The other way round, a job relayed between the two looks
        # would be in neither.
        with closing(shop.connect()) as conn:
            waiting = outbox_row(conn, job_id)
        if waiting is not None:
            return jsonify(waiting), 200
        try:
            job = report(fetch_job(job_id, connect()))
        except NoSuchJobError as exc:
            return error(str(exc), 404)
        except RedisUnavailableError as exc:
            return error(str(exc), 503)
        return jsonify(
            id=job.id,
            job=job.name,
            status=job.status,
            queue=job.queue,
            enqueued_at=iso(job.enqueued_at),
            started_at=iso(job.started_at),
            ended_at=iso(job.ended_at),
            error=job.error,
        ), 200

    @app.get("/orders/<int:order_id>")
    def order_status(order_id: int) -> Reply:
        with closing(shop.connect()) as conn:
            row = conn.execute("SELECT id, status, total_cents FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            return error(f"no order {order_id}", 404)
        return jsonify(order_id=row["id"], status=row["status"], total_cents=row["total_cents"]), 200

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Reply:  # unknown route, wrong method: JSON, like the rest
        return error(exc.description or exc.name, exc.code or 500)

    return app


def parse_order(body: Any) -> tuple[str, int, list[dict[str, Any]]]:
    """The order's fields, checked; BadRequest names the first field at fault."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with customer_email, user_id and items")
    email, user_id, items = body.get("customer_email"), body.get("user_id"), body.get("items")
    if not isinstance(email, str) or "@" not in email.strip(" @") or any(c.isspace() for c in email):
        raise BadRequest(f"customer_email must be an email address like ann@example.com, got {email!r}")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise BadRequest(f"user_id must be a positive integer, got {user_id!r}")
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        raise BadRequest(f'items must be a non-empty list like [{{"sku": "MUG", "quantity": 2}}], got {items!r}')
    # Only the fields the jobs use: the job arguments are stored in Redis as they are given.
    return email, user_id, [{"sku": item.get("sku"), "quantity": item.get("quantity")} for item in items]


def order_jobs(
    conn: sqlite3.Connection, order_id: int, email: str, user_id: int, items: list[dict[str, Any]]
) -> dict[str, OutboxHandle]:
    """The order's four jobs, as outbox rows in ``conn``'s open transaction (the order's)."""
    return {
        "send_email": outbox.enqueue(
            conn, "send_email", email, f"Order {order_id} confirmed", mail_body(order_id, items)
        ),
        "push_notification": outbox.enqueue(conn, "push_notification", user_id, f"Order {order_id} received"),
        "update_inventory": outbox.enqueue(conn, "update_inventory", order_id, items),
        "process_order": outbox.enqueue(conn, "process_order", order_id),
    }


def outbox_row(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    """``GET /jobs/ID``'s reply for a job still in the outbox (waiting for the relay, or stuck); None if it is not.

    Read with the shop's own connection: the rows are in its database, and Redis may be down.
    """
    row = find_row(conn, job_id)
    if row is None:
        return None
    stuck = row.stuck_reason
    return {
        "id": job_id,
        "job": row.job,
        # "stuck": the relay could not make it a job and will not retry by itself (`taskctl outbox`).
        "status": "stuck" if stuck else "outbox",
        "queue": row.queue,
        "enqueued_at": None,
        "started_at": None,
        "ended_at": None,
        "error": stuck,
    }


def check_outbox(settings: Settings) -> None:
    """SettingsError unless the relay reads this shop's database: its rows would wait there forever."""
    url = settings.outbox_database
    same = outbox_db.dialect_of(url) == "sqlite" and outbox_db.sqlite_path(url).resolve() == settings.database.resolve()
    if not same:
        raise SettingsError(
            f"TASKCTL_OUTBOX_URL={mask_url(url)!r} is not the shop's database {settings.database}: the relay "
            "would never move the shop's jobs; unset it (the default is the shop's file)"
        )


def mail_body(order_id: int, items: list[dict[str, Any]]) -> str:
    lines = "\n".join(f"- {item['quantity']} x {item['sku']}" for item in items)
    return f"Thank you for your order {order_id}:\n\n{lines}\n"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The example shop: POST /orders writes its slow work to the outbox, in the order's transaction."
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on, on 127.0.0.1 (default 8000)")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        app = create_app()
    except SettingsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(
        f"shop example on http://127.0.0.1:{args.port} (Redis {settings.redis_url_masked}, "
        f"database {settings.database})",
        flush=True,
    )
    app.run(host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
