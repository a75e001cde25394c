"""send_email against a real (local, in-process) SMTP server and against the outbox folder."""

from __future__ import annotations

import email
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from jobs.mail import send_email
from taskctl import settings as taskctl_settings
from taskctl.exceptions import PermanentError, TransientError
from tests.conftest import free_port

USER, PASSWORD = "ann@example.com", "p@ss:w/rd"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class RecordingHandler:
    rcpt_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd then sends the 535 itself


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Settings from the environment only: no SMTP server and no stray .env unless a test sets one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMTP_URL", raising=False)
    monkeypatch.setenv("MAIL_FROM", "robot@example.org")
    monkeypatch.setenv("TASKCTL_DATA_DIR", str(tmp_path / "data"))
    taskctl_settings.get_settings.cache_clear()
    yield tmp_path / "data" / "outbox"
    taskctl_settings.get_settings.cache_clear()


@pytest.fixture
def smtp_server() -> Iterator[tuple[RecordingHandler, int]]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ready_timeout=5.0,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def use_smtp(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SMTP_URL", url)
    taskctl_settings.get_settings.cache_clear()


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_sends_over_smtp_and_server_receives_an_rfc5322_message(
    monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[RecordingHandler, int], env: Path
) -> None:
    handler, port = smtp_server
    use_smtp(monkeypatch, f"smtp://127.0.0.1:{port}")

    result = send_email("bob@example.com", "Hello Bob", "Line one.\nLine two.\n")

    assert result == {
        "to": "bob@example.com",
        "message_id": result["message_id"],
        "delivered_via": "smtp",
        "host": "127.0.0.1",
    }
    [received] = handler.received
    assert received.mail_from == "robot@example.org"
    assert received.rcpt_tos == ["bob@example.com"]
    message = parse(received.content.replace(b"\r\n", b"\n"))  # SMTP carries CRLF line ends
    assert message["From"] == "robot@example.org"
    assert message["To"] == "bob@example.com"
    assert message["Subject"] == "Hello Bob"
    assert message["Message-ID"] == result["message_id"]
    assert message["Date"]
    assert message.get_content() == "Line one.\nLine two.\n"
    assert not env.exists()


def test_logs_in_with_percent_decoded_credentials(
    monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[RecordingHandler, int]
) -> None:
    handler, port = smtp_server
    use_smtp(monkeypatch, f"smtp://ann%40example.com:p%40ss%3Aw%2Frd@127.0.0.1:{port}")

    assert send_email("bob@example.com", "Hi", "body")["delivered_via"] == "smtp"
    assert len(handler.received) == 1


def test_wrong_password_is_a_permanent_error_that_does_not_show_the_password(
    monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[RecordingHandler, int]
) -> None:
    handler, port = smtp_server
    use_smtp(monkeypatch, f"smtp://ann%40example.com:sekrit@127.0.0.1:{port}")

    with pytest.raises(PermanentError, match="535") as caught:
        send_email("bob@example.com", "Hi", "body")
    assert "sekrit" not in str(caught.value)
    assert handler.received == []


def test_writes_an_eml_into_the_outbox_when_no_smtp_url_is_configured(env: Path) -> None:
    result = send_email("bob@example.com", "Report ready", "See attached.\n")

    path = Path(result["path"])
    assert result == {
        "to": "bob@example.com",
        "message_id": result["message_id"],
        "delivered_via": "outbox",
        "path": str(path),
    }
    assert path.parent == env and path.suffix == ".eml"
    assert [p.name for p in env.iterdir()] == [path.name]  # no temp file left behind
    message = parse(path.read_bytes())
    assert message["From"] == "robot@example.org"
    assert message["To"] == "bob@example.com"
    assert message["Subject"] == "Report ready"
    assert message["Message-ID"] == result["message_id"]
    assert message["Date"]
    assert message.get_content() == "See attached.\n"


@pytest.mark.parametrize("to", ["", "not-an-address", "a@b.c, d@e.f", "x@y.z\nBcc: evil@x.y", "a b@c.d", "@c.d"])
def test_invalid_recipient_raises_permanent_error_and_writes_nothing(to: str, env: Path) -> None:
    with pytest.raises(PermanentError, match="invalid recipient address"):
        send_email(to, "Hi", "body")
    assert not env.exists()


@pytest.mark.parametrize("to", ["", "a@b.c, d@e.f", "x@y.z\nBcc: evil@x.y"])
def test_invalid_recipient_sends_nothing_over_smtp(
    to: str, monkeypatch: pytest.MonkeyPatch, smtp_server: tuple[RecordingHandler, int]
) -> None:
    handler, port = smtp_server
    use_smtp(monkeypatch, f"smtp://127.0.0.1:{port}")

    with pytest.raises(PermanentError, match="invalid recipient address"):
        send_email(to, "Hi", "body")
    assert handler.received == []


def test_subject_with_a_line_break_raises_permanent_error(env: Path) -> None:
    with pytest.raises(PermanentError, match="subject"):
        send_email("bob@example.com", "Hi\r\nBcc: evil@x.y", "body")
    assert not env.exists()


@pytest.mark.parametrize(("reply", "error"), [("550 no such user", PermanentError), ("451 try later", TransientError)])
def test_rcpt_reply_code_decides_permanent_or_transient(
    reply: str,
    error: type[Exception],
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, port = smtp_server
    handler.rcpt_reply = reply
    use_smtp(monkeypatch, f"smtp://127.0.0.1:{port}")

    with pytest.raises(error, match=reply) as caught:
        send_email("bob@example.com", "Hi", "body")
    assert type(caught.value) is error
    assert handler.received == []


def test_connection_refused_is_transient_and_names_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    use_smtp(monkeypatch, f"smtp://127.0.0.1:{port}")

    with pytest.raises(TransientError, match=f"127.0.0.1:{port}"):
        send_email("bob@example.com", "Hi", "body")


def test_unknown_scheme_is_permanent_and_lists_accepted_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    use_smtp(monkeypatch, "http://user:sekrit@x")

    with pytest.raises(PermanentError, match="'http'") as caught:
        send_email("bob@example.com", "Hi", "body")
    assert "smtps" in str(caught.value) and "smtp+starttls" in str(caught.value)
    assert "sekrit" not in str(caught.value)
