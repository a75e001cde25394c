"""Push notification jobs. The settings are read when a job runs, so one worker process follows its environment."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from taskctl.declare import job
from taskctl.exceptions import PermanentError, TransientError
from taskctl.fencing import Run, current_run
from taskctl.settings import Settings, get_settings, mask_url

MAX_MESSAGE_LENGTH = 4000
# How much of an error reply goes into the message: enough to read the server's reason.
_BODY_EXCERPT = 200
# Replies that say "not now" rather than "never": Request Timeout and Too Many Requests.
_TRANSIENT_4XX = frozenset({408, 429})


@job(queue="high", timeout=30, retries=5, backoff=10)
def push_notification(user_id: int, message: str) -> dict[str, Any]:
    """Send a push notification: POST to PUSH_URL when set, else append to a local JSON Lines file.

    The file lets a laptop or a test run the whole flow without a push service. Jobs
    run at least once, so every delivery carries an idempotency key derived from the
    user and the message: a retried job sends the same key and the receiver can drop
    the duplicate. Failures are sorted into permanent and transient so that retries
    are spent only where the server may later say yes.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise PermanentError(f"invalid user_id {user_id!r}: expected a positive integer")
    if not isinstance(message, str) or not message.strip():
        raise PermanentError("invalid message: it is empty (or only whitespace)")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise PermanentError(
            f"invalid message: {len(message)} characters, more than the {MAX_MESSAGE_LENGTH} a notification may have"
        )
    settings = get_settings()
    key = idempotency_key(user_id, message)
    payload = {"user_id": user_id, "message": message, "sent_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if not settings.push_url:
        path = _append_line(settings.push_log, {**payload, "idempotency_key": key})
        return {"user_id": user_id, "delivered_via": "file", "path": str(path)}
    return {"user_id": user_id, "delivered_via": "http", "status": _post(settings, payload, key, current_run())}


def idempotency_key(user_id: int, message: str) -> str:
    """The same user and message always give the same key, on every retry and in every process.

    Hashing a JSON list (not a plain concatenation) keeps (1, "23") and (12, "3") apart.
    """
    canonical = json.dumps([user_id, message], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _append_line(path: Path, record: dict[str, Any]) -> Path:
    """Append one line with one write(2) on an O_APPEND descriptor, so lines from concurrent workers never interleave.

    ASCII-only JSON: a U+2028 in a message cannot split the line for a reader that
    splits on more than LF.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):  # disk full mid-line; a retry appends a whole line
        raise TransientError(f"wrote only {written} of {len(data)} bytes to {path} (disk full?)")
    return path.resolve()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a GET without a body and call that a success."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(settings: Settings, payload: dict[str, Any], key: str, run: Run | None) -> int:
    """POST the payload; return the 2xx status. The exception type tells the worker whether a retry can help.

    Inside a worker, the run's fencing token goes with the idempotency key: a receiver
    that keeps the highest token per key can refuse a stale run's request.
    """
    url = settings.push_url
    shown = mask_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"PUSH_URL={shown!r} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # urllib would send them nowhere, and http.client puts them in its own errors.
        raise PermanentError(f"PUSH_URL={shown!r} contains credentials; put the token in PUSH_TOKEN instead")
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    if run is not None:
        headers["Fencing-Token"] = str(run.token)
    token = settings.push_token
    if token:
        # http.client quotes an invalid header value in its error, which would print the token.
        if not all("!" <= c <= "~" for c in token):
            raise PermanentError("PUSH_TOKEN contains spaces, control or non-ASCII characters; check its value")
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=settings.push_timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:  # a reply, but not a 2xx
        raise _by_status(shown, exc, token) from exc
    except urllib.error.URLError as exc:  # no reply: refused, unknown host, TLS, connect timeout
        if isinstance(exc.reason, TimeoutError):
            raise TransientError(f"push server {shown} did not answer within {settings.push_timeout:g}s") from exc
        raise TransientError(f"could not reach push server {shown}: {exc.reason}") from exc
    except TimeoutError as exc:  # connected, but the reply did not come in time
        raise TransientError(f"push server {shown} did not answer within {settings.push_timeout:g}s") from exc
    except (OSError, http.client.HTTPException) as exc:  # reset, closed without a reply, garbled status line
        raise TransientError(f"push server {shown} broke off the exchange: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # http.client.InvalidURL and the like: a URL that cannot work
        raise PermanentError(f"PUSH_URL={shown!r} cannot be used: {exc}") from exc
    if not 200 <= status < 300:
        raise PermanentError(f"push server {shown} replied {status}, expected a 2xx status")
    return status


def _by_status(shown: str, exc: urllib.error.HTTPError, token: str) -> PermanentError | TransientError:
    """5xx, 408 and 429 may pass on a later try; other 4xx (and a redirect) will keep failing."""
    where = f"push server {shown} replied {exc.code} {exc.reason}"
    if exc.code >= 500 or exc.code in _TRANSIENT_4XX:
        return TransientError(where)
    try:
        body = exc.read(4 * _BODY_EXCERPT).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        body = ""
    if token:  # a server that echoes the request must not put the token into our error
        body = body.replace(token, "***")
    return PermanentError(f"{where}: {body[:_BODY_EXCERPT]!r}")
