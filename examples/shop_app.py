"""A web shop whose ``POST /orders`` returns at once, the design notes' example made runnable.

Before taskctl, placing an order sent the confirmation mail, the push notification and
updated the stock inside the request: the customer waited for the slowest mail server,
and a failure there failed the order. Here the request only does what must be done
before answering (validate, write the order) and enqueues the rest; the workers do the
slow work, and retry it when a server is down for a while. That is safe because the jobs
are idempotent: ``process_order`` confirms an order once, ``update_inventory`` keeps a
ledger per order, ``push_notification`` sends an idempotency key; a job run twice does
its work once.

Run it from the project root, next to the stack (``python3 dev.py up``)::

    python examples/shop_app.py --port 8000
    curl -X POST localhost:8000/orders -H 'Content-Type: application/json' \\
         -d '{"customer_email": "ann@example.com", "user_id": 7, "items": [{"sku": "MUG", "quantity": 2}]}'
    curl localhost:8000/jobs/JOB_ID      # queued / started / finished / failed
    curl localhost:8000/orders/ORDER_ID  # pending, then confirmed once process_order ran
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from datetime import datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from jobs import shop
from taskctl.connection import connect
from taskctl.enqueue import enqueue
from taskctl.exceptions import NoSuchJobError, RedisUnavailableError
from taskctl.settings import get_settings
from taskctl.status import fetch_job, report

Reply = tuple[Response, int]


class BadRequest(ValueError):
    """A request body the shop cannot use; the message names the field and is shown to the client."""


def error(message: str, status: int) -> Reply:
    return jsonify(error=message), status


def create_app() -> Flask:
    app = Flask(__name__)
    with closing(shop.connect()) as conn:
        shop.seed_demo(conn)  # demo products on a fresh machine; an existing shop is left alone

    @app.post("/orders")
    def place_order() -> Reply:
        try:
            email, user_id, items = parse_order(request.get_json(silent=True))
            with closing(shop.connect()) as conn:
                order_id = shop.create_order(conn, email, user_id, items)
        except ValueError as exc:  # BadRequest, or create_order's (unknown sku, a sku twice, ...)
            return error(str(exc), 400)
        try:  # The order is saved; everything slow goes to the workers.
            jobs = {
                "send_email": enqueue("send_email", email, f"Order {order_id} confirmed", mail_body(order_id, items)),
                "push_notification": enqueue("push_notification", user_id, f"Order {order_id} received"),
                "update_inventory": enqueue("update_inventory", order_id, items),
                "process_order": enqueue("process_order", order_id),
            }
        except RedisUnavailableError as exc:
            return error(f"order {order_id} saved; background jobs not queued: {exc}", 503)
        return jsonify(order_id=order_id, jobs={name: job.id for name, job in jobs.items()}), 202

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Reply:
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


def mail_body(order_id: int, items: list[dict[str, Any]]) -> str:
    lines = "\n".join(f"- {item['quantity']} x {item['sku']}" for item in items)
    return f"Thank you for your order {order_id}:\n\n{lines}\n"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The example shop: POST /orders enqueues its slow work.")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on, on 127.0.0.1 (default 8000)")
    args = parser.parse_args(argv)
    settings = get_settings()
    app = create_app()
    print(
        f"shop example on http://127.0.0.1:{args.port} (Redis {settings.redis_url_masked}, "
        f"database {settings.database})",
        flush=True,
    )
    app.run(host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
