"""push_notification against a real (local, threaded) HTTP server and against the JSON Lines file."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobs.push import push_notification
from taskctl import settings as taskctl_settings
from taskctl.enqueue import enqueue_call
from taskctl.exceptions import PermanentError, TransientError
from tests.conftest import free_port, run_burst_worker

TOKEN = "s3cr3t-T0KEN"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class PushServer(ThreadingHTTPServer):
    """Records every request; replies `reply_status` with `reply_body`, after `delay` seconds."""

    daemon_threads = True
    reply_status = 200
    reply_body = b'{"ok": true}'
    delay = 0.0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PushHandler)
        self.received: list[Received] = []
        self.release = threading.Event()  # set in teardown so a delayed reply stops waiting at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/notify"


class PushHandler(BaseHTTPRequestHandler):
    server: PushServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append(Received(self.command, self.path, dict(self.headers.items()), json.loads(raw)))
        if self.server.delay:
            self.server.release.wait(self.server.delay)
        try:
            self.send_response(self.server.reply_status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.server.reply_body)))
            self.end_headers()
            self.wfile.write(self.server.reply_body)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No push service, token or proxy unless a test sets one; returns the JSON Lines file."""
    for name in ("PUSH_URL", "PUSH_TOKEN", "PUSH_TIMEOUT", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKCTL_DATA_DIR", str(tmp_path / "data"))
    taskctl_settings.get_settings.cache_clear()
    yield tmp_path / "data" / "push.jsonl"
    taskctl_settings.get_settings.cache_clear()


@pytest.fixture
def push_server() -> Iterator[PushServer]:
    server = PushServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def use_push(monkeypatch: pytest.MonkeyPatch, url: str, token: str = "", timeout: float | None = None) -> None:
    monkeypatch.setenv("PUSH_URL", url)
    if token:
        monkeypatch.setenv("PUSH_TOKEN", token)
    if timeout is not None:
        monkeypatch.setenv("PUSH_TIMEOUT", str(timeout))
    taskctl_settings.get_settings.cache_clear()


def expected_key(user_id: int, message: str) -> str:
    return hashlib.sha256(
        json.dumps([user_id, message], ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()[:32]


def assert_recent_utc(stamp: str) -> None:
    sent = datetime.fromisoformat(stamp)
    assert sent.utcoffset() == timedelta(0)
    assert abs(datetime.now(sent.tzinfo) - sent) < timedelta(minutes=1)


def test_posts_json_with_bearer_token_and_idempotency_key_and_server_receives_it(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer, env: Path
) -> None:
    use_push(monkeypatch, push_server.url, token=TOKEN)

    result = push_notification(42, "Your order has shipped")

    assert result == {"user_id": 42, "delivered_via": "http", "status": 200}
    [received] = push_server.received
    assert (received.method, received.path) == ("POST", "/notify")
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Authorization"] == f"Bearer {TOKEN}"
    assert received.headers["Idempotency-Key"] == expected_key(42, "Your order has shipped")
    assert set(received.body) == {"user_id", "message", "sent_at"}
    assert received.body["user_id"] == 42
    assert received.body["message"] == "Your order has shipped"
    assert_recent_utc(received.body["sent_at"])
    assert not env.exists()


def test_from_a_worker_the_request_carries_the_runs_fencing_token(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer, configured: str
) -> None:
    use_push(monkeypatch, push_server.url)
    enqueue_call("push_notification", (42, "Your order has shipped"))

    run_burst_worker("high")

    [received] = push_server.received
    assert received.headers["Fencing-Token"] == "1"  # the job's first run
    assert received.headers["Idempotency-Key"] == expected_key(42, "Your order has shipped")


def test_called_directly_there_is_no_fencing_token(monkeypatch: pytest.MonkeyPatch, push_server: PushServer) -> None:
    use_push(monkeypatch, push_server.url)

    push_notification(1, "hi")

    assert "Fencing-Token" not in push_server.received[0].headers


def test_a_retry_sends_the_same_idempotency_key_and_another_message_a_different_one(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    use_push(monkeypatch, push_server.url)

    push_notification(7, "Hello")
    push_notification(7, "Hello")
    push_notification(7, "Hello!")
    push_notification(8, "Hello")

    keys = [r.headers["Idempotency-Key"] for r in push_server.received]
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)


def test_sends_no_authorization_header_without_a_token(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    use_push(monkeypatch, push_server.url)

    assert push_notification(1, "hi")["status"] == 200
    [received] = push_server.received
    assert "Authorization" not in received.headers
    assert received.headers["Idempotency-Key"] == expected_key(1, "hi")


def test_accepts_any_2xx_status(monkeypatch: pytest.MonkeyPatch, push_server: PushServer) -> None:
    push_server.reply_status = 202
    use_push(monkeypatch, push_server.url)

    assert push_notification(1, "hi") == {"user_id": 1, "delivered_via": "http", "status": 202}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_error_or_too_many_requests_is_transient_and_names_url_and_status(
    status: int, monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    push_server.reply_status = status
    use_push(monkeypatch, push_server.url, token=TOKEN)

    with pytest.raises(TransientError, match=str(status)) as caught:
        push_notification(1, "hi")
    assert push_server.url in str(caught.value)
    assert caught.value.__cause__ is not None
    assert TOKEN not in str(caught.value)
    assert len(push_server.received) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_error_is_permanent_with_status_and_start_of_response_body(
    status: int, monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    push_server.reply_status = status
    push_server.reply_body = b'{"error": "unknown device"}' + b"x" * 1000
    use_push(monkeypatch, push_server.url)

    with pytest.raises(PermanentError, match=str(status)) as caught:
        push_notification(1, "hi")
    text = str(caught.value)
    assert "unknown device" in text
    assert "x" * 200 not in text  # only the first 200 characters of the body
    assert caught.value.__cause__ is not None


def test_token_never_appears_in_an_error_message_even_when_the_server_echoes_it(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    push_server.reply_status = 401
    push_server.reply_body = f"bad token Bearer {TOKEN}".encode()
    use_push(monkeypatch, push_server.url, token=TOKEN)

    with pytest.raises(PermanentError, match="401") as caught:
        push_notification(1, "hi")
    assert TOKEN not in str(caught.value)


def test_redirect_is_not_followed_and_is_permanent(monkeypatch: pytest.MonkeyPatch, push_server: PushServer) -> None:
    push_server.reply_status = 302
    use_push(monkeypatch, push_server.url)

    with pytest.raises(PermanentError, match="302"):
        push_notification(1, "hi")
    assert len(push_server.received) == 1


def test_slow_server_beyond_push_timeout_is_transient(monkeypatch: pytest.MonkeyPatch, push_server: PushServer) -> None:
    push_server.delay = 2.0
    use_push(monkeypatch, push_server.url, token=TOKEN, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(TransientError, match=r"did not answer within 0\.5s") as caught:
        push_notification(1, "hi")
    assert time.monotonic() - started < 1.9
    assert push_server.url in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is not None


def test_connection_refused_is_transient_and_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/notify"
    use_push(monkeypatch, url, token=TOKEN, timeout=5)

    with pytest.raises(TransientError, match="refused") as caught:
        push_notification(1, "hi")
    assert url in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is not None


def test_password_in_push_url_is_masked_and_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    port = push_server.server_address[1]
    use_push(monkeypatch, f"http://robot:hunter2@127.0.0.1:{port}/notify")

    with pytest.raises(PermanentError, match="PUSH_TOKEN") as caught:
        push_notification(1, "hi")
    assert "hunter2" not in str(caught.value)
    assert "robot:***@" in str(caught.value)
    assert push_server.received == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/notify"])
def test_push_url_that_is_not_http_is_permanent(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_push(monkeypatch, url)

    with pytest.raises(PermanentError, match="http"):
        push_notification(1, "hi")


def test_token_with_a_line_break_is_rejected_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, push_server: PushServer
) -> None:
    use_push(monkeypatch, push_server.url, token=f"{TOKEN}\r\nX-Evil: 1")

    with pytest.raises(PermanentError, match="PUSH_TOKEN") as caught:
        push_notification(1, "hi")
    assert TOKEN not in str(caught.value)
    assert push_server.received == []


def test_appends_one_json_line_per_notification_when_no_push_url_is_configured(env: Path) -> None:
    first = push_notification(5, "First\nwith a line break and \u2028 a separator")
    second = push_notification(6, "Second")

    assert first == {"user_id": 5, "delivered_via": "file", "path": str(env.resolve())}
    assert second == {"user_id": 6, "delivered_via": "file", "path": str(env.resolve())}
    lines = env.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [(r["user_id"], r["message"]) for r in records] == [
        (5, "First\nwith a line break and \u2028 a separator"),
        (6, "Second"),
    ]
    assert records[0]["idempotency_key"] == expected_key(5, "First\nwith a line break and \u2028 a separator")
    assert records[1]["idempotency_key"] == expected_key(6, "Second")
    for record in records:
        assert set(record) == {"user_id", "message", "sent_at", "idempotency_key"}
        assert_recent_utc(record["sent_at"])


def test_concurrent_appends_never_interleave_lines(env: Path) -> None:
    long_message = "é" * 4000  # 8000 bytes of UTF-8 escaped to 24000: larger than a stdio buffer

    threads = [threading.Thread(target=push_notification, args=(n, long_message)) for n in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    records = [json.loads(line) for line in env.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["user_id"] for r in records) == list(range(1, 21))
    assert all(r["message"] == long_message for r in records)


@pytest.mark.parametrize(
    ("user_id", "message", "error"),
    [
        (0, "hi", "user_id"),
        (-3, "hi", "user_id"),
        (True, "hi", "user_id"),
        (1, "", "empty"),
        (1, "  \n\t ", "empty"),
        (1, "x" * 4001, "4001 characters"),
    ],
)
def test_invalid_arguments_raise_permanent_error_and_nothing_is_sent_or_written(
    user_id: int,
    message: str,
    error: str,
    monkeypatch: pytest.MonkeyPatch,
    push_server: PushServer,
    env: Path,
) -> None:
    with pytest.raises(PermanentError, match=error):
        push_notification(user_id, message)
    assert not env.exists()

    use_push(monkeypatch, push_server.url, token=TOKEN)
    with pytest.raises(PermanentError, match=error) as caught:
        push_notification(user_id, message)
    assert push_server.received == []
    assert TOKEN not in str(caught.value)


def test_message_of_exactly_4000_characters_is_accepted(env: Path) -> None:
    assert push_notification(1, "x" * 4000)["delivered_via"] == "file"
    assert len(env.read_text(encoding="utf-8").splitlines()) == 1
