"""examples/shop_app.py as a user runs it: a real process, a real worker, a real (slow) SMTP server.

The point of the example is that ``POST /orders`` answers before the slow work is done;
the SMTP server here takes 3 s to accept a message, so the answer must come while the
mail job is still queued or running, and the work must then be finished by the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis import Redis

from jobs import shop
from taskctl import settings as settings_module
from taskctl.stack import stop
from tests.conftest import ROOT, free_port, wait_until_serving

SMTP_DELAY = 3.0
JOB_NAMES = {"send_email", "push_notification", "update_inventory", "process_order"}
ORDER = {
    "customer_email": "ann@example.com",
    "user_id": 7,
    "items": [{"sku": "MUG", "quantity": 2}, {"sku": "STICKER", "quantity": 3}],
}

Launch = Callable[..., str]


@dataclass
class SlowHandler:
    """Accepts every message, SMTP_DELAY seconds after its data arrived: a deliberately slow mail server."""

    received: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(SMTP_DELAY)
        self.received.append((list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def slow_smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowHandler]:
    """Request it before ``worker``: SMTP_URL must be in the environment the worker process inherits."""
    handler = SlowHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5.0)
    controller.start()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")
    settings_module.get_settings.cache_clear()
    try:
        yield handler
    finally:
        controller.stop()


def call(base: str, path: str, body: Any = None, method: str | None = None) -> tuple[int, dict[str, Any]]:
    """One request; the JSON reply, whatever the status."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(
        base + path, data=data, method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def launch_app(tmp_path: Path) -> Iterator[Launch]:
    """Start ``python examples/shop_app.py --port N`` with this test's environment (plus ``env``); returns its URL."""
    started: list[subprocess.Popen[bytes]] = []

    def launch(**env: str) -> str:
        port = free_port()
        log = tmp_path / f"shop_app-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "examples" / "shop_app.py"), "--port", str(port)],
                env=dict(os.environ, **env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(process, base, "/orders/0", {404}, "the example app")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from None
        return base

    yield launch
    for process in started:
        stop(process)


def stock(sku: str) -> int:
    with closing(shop.connect()) as conn:
        return int(conn.execute("SELECT stock FROM products WHERE sku = ?", (sku,)).fetchone()["stock"])


def wait_until_finished(base: str, job_ids: dict[str, str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        reports = {name: call(base, f"/jobs/{job_id}")[1] for name, job_id in job_ids.items()}
        if all(r.get("status") == "finished" for r in reports.values()):
            return reports
        failed = {name: r for name, r in reports.items() if r.get("status") in ("failed", "stopped", "canceled")}
        assert not failed, f"jobs did not succeed: {failed}"
        assert time.monotonic() < deadline, f"jobs not finished after {timeout:g}s: {reports}"
        time.sleep(0.2)


def test_post_order_returns_before_the_slow_jobs_and_the_workers_then_do_the_work(
    slow_smtp: SlowHandler, worker: subprocess.Popen[str], launch_app: Launch
) -> None:
    base = launch_app()
    mugs, stickers = stock("MUG"), stock("STICKER")

    started = time.monotonic()
    status, reply = call(base, "/orders", ORDER)
    elapsed = time.monotonic() - started
    answered_at = datetime.now(UTC)
    _, mail_job = call(base, f"/jobs/{reply['jobs']['send_email']}")

    assert status == 202, reply
    assert set(reply["jobs"]) == JOB_NAMES and all(reply["jobs"].values())
    assert len(set(reply["jobs"].values())) == 4
    # The mail job needs SMTP_DELAY seconds at the server: the order was answered before it was sent.
    assert elapsed < 2, f"POST /orders took {elapsed:.1f}s"
    assert mail_job["status"] in ("queued", "started"), mail_job
    assert mail_job["job"] == "send_email" and mail_job["queue"] == "high" and mail_job["ended_at"] is None

    order_id = reply["order_id"]
    reports = wait_until_finished(base, reply["jobs"])

    assert datetime.fromisoformat(reports["send_email"]["ended_at"]) > answered_at
    assert all(r["error"] is None and r["enqueued_at"] and r["started_at"] for r in reports.values())
    [(recipients, content)] = slow_smtp.received
    assert recipients == ["ann@example.com"]
    assert f"Subject: Order {order_id} confirmed".encode() in content
    assert b"2 x MUG" in content
    assert call(base, f"/orders/{order_id}") == (
        200,
        {"order_id": order_id, "status": "confirmed", "total_cents": 2 * 1200 + 3 * 300},
    )
    assert (stock("MUG"), stock("STICKER")) == (mugs - 2, stickers - 3)


BAD_ORDERS: list[tuple[Any, str]] = [
    ({k: v for k, v in ORDER.items() if k != "customer_email"}, "customer_email"),
    ({**ORDER, "customer_email": "not an address"}, "customer_email"),
    ({**ORDER, "user_id": "x"}, "user_id"),
    ({**ORDER, "user_id": True}, "user_id"),
    ({**ORDER, "items": []}, "items"),
    ({**ORDER, "items": ["MUG"]}, "items"),
    ({**ORDER, "items": [{"sku": "NOPE", "quantity": 1}]}, "unknown product 'NOPE'"),  # from create_order
    ({**ORDER, "items": [{"sku": "MUG", "quantity": 0}]}, "quantity"),
    (b"{not json", "JSON object"),
    ([ORDER], "JSON object"),
]


def test_bad_order_is_refused_with_400_naming_the_field_and_nothing_is_enqueued(
    configured: str, redis: Redis, launch_app: Launch
) -> None:
    base = launch_app()

    for body, named in BAD_ORDERS:
        status, reply = call(base, "/orders", body)
        assert status == 400, (body, reply)
        assert named in reply["error"], (body, reply)

    assert redis.llen("rq:queue:high") == 0 and redis.llen("rq:queue:default") == 0
    assert redis.keys("rq:job:*") == []
    with closing(shop.connect()) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0


def test_unknown_job_and_unknown_order_are_404(configured: str, launch_app: Launch) -> None:
    base = launch_app()

    status, reply = call(base, "/jobs/unknown")
    assert status == 404 and "unknown" in reply["error"]
    status, reply = call(base, "/orders/999")
    assert status == 404 and "999" in reply["error"]
    status, reply = call(base, "/nowhere")
    assert status == 404 and reply["error"]


def test_redis_down_answers_503_and_keeps_the_order(launch_app: Launch) -> None:
    base = launch_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TASKCTL_REDIS_CONNECT_TIMEOUT="1")

    status, reply = call(base, "/orders", ORDER)

    assert status == 503, reply
    assert reply["error"].startswith("order 1 saved; background jobs not queued: cannot reach Redis")
    assert call(base, "/orders/1") == (200, {"order_id": 1, "status": "pending", "total_cents": None})
    assert call(base, "/jobs/anything")[0] == 503
