"""Mail jobs. The settings are read when a job runs, so one worker process follows the environment it was given."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import tempfile
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from taskctl.declare import job
from taskctl.exceptions import PermanentError, TransientError
from taskctl.settings import Settings, get_settings, mask_url

# One plain address; anything fancier (lists, display names, comments) is a mistake in a job argument.
_ADDRESS = re.compile(r"[^@\s,;<>()\"]+@[^@\s,;<>()\"]+")
_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_CONNECT_TIMEOUT = 30.0


@job(queue="high", timeout=60, retries=5, backoff=30)
def send_email(to: str, subject: str, body: str) -> dict[str, str]:
    """Send an email: over SMTP when SMTP_URL is set, else into the local outbox folder.

    The outbox lets a laptop or a test run the whole flow without a mail server, and
    failures are sorted into permanent and transient so that retries are spent only
    where the server may later say yes.
    """
    if "\r" in to or "\n" in to or parseaddr(to)[1] != to.strip() or not _ADDRESS.fullmatch(to.strip()):
        raise PermanentError(f"invalid recipient address {to!r}: expected one address like user@example.com")
    if "\r" in subject or "\n" in subject:
        raise PermanentError(f"invalid subject {subject!r}: it must be one line (no CR or LF)")
    to = to.strip()
    settings = get_settings()
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # An explicit domain: the default looks up this host's FQDN, which can stall on DNS.
    message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or "localhost")
    message.set_content(body)
    result = {"to": to, "message_id": message["Message-ID"]}
    if not settings.smtp_url:
        return {**result, "delivered_via": "outbox", "path": str(_write_outbox(settings.outbox_dir, message).resolve())}
    return {**result, "delivered_via": "smtp", "host": _send_smtp(settings, message)}


def _write_outbox(outbox: Path, message: EmailMessage) -> Path:
    """Write through a temp file and rename, so a reader of the outbox never sees half a message."""
    outbox.mkdir(parents=True, exist_ok=True)
    unique = message["Message-ID"].strip("<>").partition("@")[0]
    path = outbox / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{unique}.eml"
    fd, tmp = tempfile.mkstemp(dir=outbox, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.as_bytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _send_smtp(settings: Settings, message: EmailMessage) -> str:
    """Deliver over SMTP; the exception type tells the worker whether a retry can help."""
    parts = urlsplit(settings.smtp_url)
    shown = mask_url(settings.smtp_url)
    if parts.scheme not in _SCHEMES:
        raise PermanentError(f"SMTP_URL={shown!r} has scheme {parts.scheme!r}; expected one of {sorted(_SCHEMES)}")
    try:
        port = parts.port or _SCHEMES[parts.scheme]
    except ValueError:
        raise PermanentError(f"SMTP_URL={shown!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise PermanentError(f"SMTP_URL={shown!r} names no host")
    starttls = parts.scheme == "smtp+starttls" or parse_qs(parts.query).get("starttls", [""])[0].lower() in (
        "true",
        "1",
        "yes",
    )
    where = f"{host}:{port}"
    try:
        if parts.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                host, port, timeout=_CONNECT_TIMEOUT, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(host, port, timeout=_CONNECT_TIMEOUT)
        with client:
            if starttls:
                client.starttls(context=ssl.create_default_context())
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        raise _by_code(f"{where} refused recipient {message['To']}", code, text) from exc
    except smtplib.SMTPConnectError as exc:
        raise TransientError(f"SMTP server {where} refused the connection: {exc.smtp_code} {exc.smtp_error!r}") from exc
    except smtplib.SMTPResponseException as exc:  # sender refused, data error, authentication, ...
        raise _by_code(f"SMTP server {where} replied", exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"SMTP server {where} does not support what SMTP_URL asks: {exc}") from exc
    except OSError as exc:  # refused, timed out, disconnected (SMTPException is an OSError too)
        raise TransientError(f"could not talk to SMTP server {where}: {exc}") from exc
    return host


def _by_code(what: str, code: int, text: bytes | str) -> PermanentError | TransientError:
    """5xx means the server will keep saying no; anything else may pass on a later try."""
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    error = PermanentError if 500 <= code < 600 else TransientError
    return error(f"{what}: {code} {reply}")
