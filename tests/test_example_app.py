"""examples/shop_app.py as a user runs it: a real process, a real worker, a real (slow) SMTP server.

The point of the example is that ``POST /orders`` answers before the slow work is done;
the SMTP server here takes 3 s to accept a message, so the answer must come while the
mail job is still in the outbox, queued or running, and the work must then be finished
by the relay and the worker. The order and its jobs commit together (the jobs as outbox
rows), so the request needs no Redis at all: with Redis down it still answers 202, and
the jobs run once Redis is back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sqlite3
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
from types import ModuleType
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis import Redis

from jobs import shop
from taskctl import settings as settings_module
from taskctl.exceptions import SettingsError
from taskctl.outbox_db import TABLE
from taskctl.stack import redis_server, stop
from tests.conftest import ROOT, free_port, wait_until_serving, worker_command
from tests.effects import wait_for

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


def start_relay(log: Path) -> subprocess.Popen[bytes]:
    """``python -m taskctl.relay`` with this test's environment, its output in ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "taskctl.relay"], env=dict(os.environ), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture
def relay(configured: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The relay on the test's Redis and the shop's database (its default): the shop's jobs reach Redis."""
    process = start_relay(tmp_path / "relay.log")
    yield process
    assert stop(process) == 0, (tmp_path / "relay.log").read_text()  # SIGTERM: a clean stop


def outbox_rows_in(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """The outbox rows ``conn`` sees, its own uncommitted ones included (none when no order ever made the table)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone() is None:
        return []
    return [tuple(row) for row in conn.execute(f"SELECT job_id, job, stuck_reason FROM {TABLE}")]


def outbox_rows() -> list[tuple[Any, ...]]:
    """The shop database's committed outbox rows."""
    with closing(shop.connect()) as conn:
        return outbox_rows_in(conn)


def stock(sku: str) -> int:
    with closing(shop.connect()) as conn:
        return int(conn.execute("SELECT stock FROM products WHERE sku = ?", (sku,)).fetchone()["stock"])


def wait_until_finished(base: str, job_ids: dict[str, str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        reports = {name: call(base, f"/jobs/{job_id}")[1] for name, job_id in job_ids.items()}
        if all(r.get("status") == "finished" for r in reports.values()):
            return reports
        ended = ("failed", "stopped", "canceled", "stuck")
        failed = {name: r for name, r in reports.items() if r.get("status") in ended}
        assert not failed, f"jobs did not succeed: {failed}"
        assert time.monotonic() < deadline, f"jobs not finished after {timeout:g}s: {reports}"
        time.sleep(0.2)


def test_post_order_returns_before_the_slow_jobs_and_the_workers_then_do_the_work(
    slow_smtp: SlowHandler, worker: subprocess.Popen[str], relay: subprocess.Popen[bytes], launch_app: Launch
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
    assert mail_job["status"] in ("outbox", "queued", "started"), mail_job
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
    assert outbox_rows() == []  # every row became its job


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
    assert outbox_rows() == []
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


def test_with_redis_down_the_order_is_accepted_and_its_jobs_run_once_redis_is_back(
    launch_app: Launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay runs through the outage (as under `taskctl up`); nothing listens on the Redis port until it ends."""
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("TASKCTL_REDIS_CONNECT_TIMEOUT", "1")
    settings_module.get_settings.cache_clear()
    relay_log = tmp_path / "relay.log"
    relay = start_relay(relay_log)
    try:
        base = launch_app()

        status, reply = call(base, "/orders", ORDER)

        assert status == 202, reply
        order_id, jobs = reply["order_id"], reply["jobs"]
        assert set(jobs) == JOB_NAMES and len(set(jobs.values())) == 4
        assert call(base, f"/jobs/{jobs['send_email']}") == (200, {
            "id": jobs["send_email"], "job": "send_email", "status": "outbox", "queue": "high",
            "enqueued_at": None, "started_at": None, "ended_at": None, "error": None,
        })  # fmt: skip
        assert {call(base, f"/jobs/{job_id}")[1]["status"] for job_id in jobs.values()} == {"outbox"}
        assert call(base, f"/orders/{order_id}") == (
            200,
            {"order_id": order_id, "status": "pending", "total_cents": None},
        )
        assert call(base, "/jobs/anything")[0] == 503  # not in the outbox: only Redis could know it
        wait_for(lambda: "Redis unavailable" in relay_log.read_text(), 10, "the relay to find Redis down")
        assert relay.poll() is None, relay_log.read_text()
        assert sorted(row[0] for row in outbox_rows()) == sorted(jobs.values())  # waiting, not stuck

        with redis_server(port, tmp_path / "redis"):
            worker = subprocess.Popen(worker_command(), env=dict(os.environ), cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                reports = wait_until_finished(base, jobs, timeout=30)
            finally:
                stop(worker, timeout=15)
    finally:
        assert stop(relay) == 0, relay_log.read_text()

    assert {r["job"] for r in reports.values()} == JOB_NAMES
    assert call(base, f"/orders/{order_id}")[1]["status"] == "confirmed"
    assert outbox_rows() == []
    assert "Redis answers again" in relay_log.read_text()


def load_shop_app() -> ModuleType:
    """examples/shop_app.py as a module (examples/ is not a package), for the tests that need no processes."""
    spec = importlib.util.spec_from_file_location("shop_app", ROOT / "examples" / "shop_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_order_whose_jobs_cannot_be_written_is_not_saved_either(monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction: a failure after the order and two of its rows were written leaves neither."""
    shop_app = load_shop_app()
    client = shop_app.create_app().test_client()
    written = shop_app.outbox.enqueue

    def fail_on_the_third(conn: sqlite3.Connection, job: str, *args: Any) -> Any:
        if len(outbox_rows_in(conn)) == 2:
            raise RuntimeError("disk full")
        return written(conn, job, *args)

    monkeypatch.setattr(shop_app.outbox, "enqueue", fail_on_the_third)
    reply = client.post("/orders", json=ORDER)

    assert reply.status_code == 500, reply.get_json()
    assert outbox_rows() == []
    with closing(shop.connect()) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0


def test_a_stuck_row_is_reported_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # no Redis: the outbox answers alone
    settings_module.get_settings.cache_clear()
    client = load_shop_app().create_app().test_client()
    job_id = client.post("/orders", json=ORDER).get_json()["jobs"]["process_order"]
    with closing(shop.connect()) as conn:
        conn.execute(f"UPDATE {TABLE} SET stuck_reason = 'UnknownJobError: gone' WHERE job_id = ?", (job_id,))

    reply = client.get(f"/jobs/{job_id}").get_json()

    assert (reply["status"], reply["job"], reply["queue"], reply["error"]) == (
        "stuck",
        "process_order",
        "default",
        "UnknownJobError: gone",
    )


def test_the_shop_refuses_to_start_when_the_relay_would_read_another_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shop_app = load_shop_app()
    monkeypatch.setenv("TASKCTL_OUTBOX_URL", f"sqlite:///{tmp_path / 'other.sqlite3'}")
    settings_module.get_settings.cache_clear()

    with pytest.raises(SettingsError, match="is not the shop's database"):
        shop_app.create_app()
    assert shop_app.main(["--port", str(free_port())]) == 2

    monkeypatch.setenv("TASKCTL_OUTBOX_URL", f"sqlite:///{settings_module.get_settings().database}")
    settings_module.get_settings.cache_clear()
    shop_app.create_app()  # the shop's file, named explicitly: fine
