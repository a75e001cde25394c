"""A failure's cause: its exception and message, with what differs from job to job folded away.

After an outage thousands of jobs fail with messages that differ only by an id, a
number, an address or a time ("mail-3 closed the connection", "order 4711 timed out
after 5.0 s"). Folded, they are one cause per kind of failure: what an operator
counts, filters on and requeues. The exception's type is kept as it is.
"""

from __future__ import annotations

import re

#: What is folded, in this order (a time before its numbers, a UUID before its hex parts), each pattern
#: skipped where a character it needs is absent: a summary folds 100,000 messages.
_FOLDS = [
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>", "-"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE), "<id>", "-"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>", "@"),
    # Hex ids (job ids, hashes): eight or more hex digits, letters and digits both among them.
    (re.compile(r"\b(?=\d*[a-f])(?=[a-f]*\d)[0-9a-f]{8,}\b", re.IGNORECASE), "<id>", ""),
    # Numbers, addresses and versions, but not the digits of a word ("utf8", "http2").
    (re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)*"), "<n>", ""),
]
#: An exception's name as a traceback's last line gives it: ``ValueError``, ``smtplib.SMTPException``.
_TYPE = re.compile(r"[A-Za-z_][\w.]*")
#: Messages longer than this are one cause when they agree this far (a response body in a message).
LONGEST = 160
#: The cause of a failed job with no error recorded (its result expired, or it failed before RQ kept results).
NO_ERROR = "(no error recorded)"


def fold(error: str) -> str:
    """``OSError: [Errno 111] mail-3 refused`` -> ``OSError: [Errno <n>] mail-<n> refused``."""
    error = error.strip()
    if not error:
        return NO_ERROR
    kind, colon, message = error.partition(": ")
    if not (colon and _TYPE.fullmatch(kind)):
        kind, colon, message = "", "", error
    for pattern, placeholder, needs in _FOLDS:
        if needs in message:
            message = pattern.sub(placeholder, message)
    folded = f"{kind}{colon}{message}"
    return folded if len(folded) <= LONGEST else folded[: LONGEST - 1] + "…"


def matches(text: str, error: str, cause: str) -> bool:
    """Whether ``text`` (a type, words of a message, or a cause as listed) names this failure."""
    needle = text.strip().lower()
    return needle in error.lower() or needle in cause.lower()
