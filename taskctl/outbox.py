"""Enqueue inside the application's database transaction: a job is a row of the outbox until it commits.

``enqueue`` writes to Redis at once, so a web request that saves an order and
enqueues its jobs can lose them (Redis down after the commit: the order exists,
its jobs never will) or run them for nothing (the transaction rolls back after
the enqueue). Here the call is checked exactly as :func:`taskctl.enqueue.prepare`
checks it, before anything is written, then stored as a row of ``taskctl_outbox``
by the application's own connection: it commits or rolls back with the order.
The relay (:mod:`taskctl.relay`) turns committed rows into jobs, each row into
the one job id chosen here, so ``taskctl status ID`` answers from the start.

    with conn:  # sqlite3, psycopg, a SQLAlchemy Connection or Session
        order_id = create_order(conn, ...)
        handle = outbox.enqueue(conn, "process_order", order_id)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from taskctl.enqueue import JobRef, Prepared, prepare
from taskctl.exceptions import DuplicateJobError
from taskctl.outbox_db import TABLE, Db, wrap
from taskctl.settings import Settings, get_settings

#: PostgreSQL databases known to have the table (by connection string): checked once per process.
_has_table: set[str] = set()


@dataclass(frozen=True)
class OutboxHandle:
    """What the caller keeps: the id the job will have in Redis once the relay has moved its row."""

    id: str
    name: str
    queue: str

    def __repr__(self) -> str:
        return f"<OutboxHandle {self.id} ({self.name} on {self.queue})>"


def enqueue(db: Any, job: JobRef, *args: Any, **kwargs: Any) -> OutboxHandle:
    """``outbox.enqueue(conn, "send_email", to, subject, body)``: ``taskctl.enqueue.enqueue`` in conn's transaction.

    Every keyword goes to the job; use :func:`enqueue_call` for options.
    """
    return enqueue_call(db, job, args, kwargs)


def enqueue_call(
    db: Any,
    job: JobRef,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    job_timeout: int | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    job_id: str | None = None,
    unique: bool = False,
    at: datetime | None = None,
    delay: timedelta | None = None,
    settings: Settings | None = None,
) -> OutboxHandle:
    """Check a call as :func:`taskctl.enqueue.enqueue_call` does, then write it as an outbox row through ``db``.

    ``db`` is the application's sqlite3 or psycopg connection, or a SQLAlchemy
    Connection or Session; the row is part of its current transaction and is
    committed (or rolled back) by the application. Raises the errors of
    :func:`taskctl.enqueue.prepare` before writing anything, and TypeError for
    another kind of connection.
    """
    settings = settings or get_settings()
    prepared = prepare(
        job, args, kwargs, queue=queue, job_timeout=job_timeout, retries=retries, backoff=backoff,
        job_id=job_id, unique=unique, at=at, delay=delay, settings=settings,
    )  # fmt: skip
    target = wrap(db)
    _ensure_table(target)
    row_id = prepared.job_id or str(uuid4())
    # DO NOTHING, not an error: on PostgreSQL a failed INSERT would abort the caller's whole transaction.
    written = target.execute(
        f"INSERT INTO {TABLE} (job_id, job, call, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
        (row_id, prepared.entry.name, encode(prepared, job_timeout, retries, backoff), time.time()),
    )
    if written.rowcount == 0:
        raise DuplicateJobError(f"a row for job id {row_id!r} waits in the outbox already; not written")
    return OutboxHandle(row_id, prepared.entry.name, prepared.queue)


def encode(prepared: Prepared, job_timeout: int | None, retries: int | None, backoff: float | None) -> str:
    """The call as the row keeps it: what the caller gave, with the queue and the due time resolved.

    Timeout and retries stay as given (None: the job's declaration when the row
    becomes a job), so a row written before a deploy gets the declarations of the
    code that runs it, as a queued job would.
    """
    due = prepared.due.timestamp() if prepared.due is not None else None
    return json.dumps(
        {
            "args": prepared.args, "kwargs": prepared.kwargs, "queue": prepared.queue,
            "job_timeout": job_timeout, "retries": retries, "backoff": backoff,
            "unique": prepared.unique, "due": due,
        },
        separators=(",", ":"),
    )  # fmt: skip


def decode(name: str, job_id: str, call: str, settings: Settings) -> Prepared:
    """A row as the call it was, checked again against today's catalog and settings (the errors of ``prepare``).

    A due time that passed while the row waited (an outage) means "now".
    """
    data = json.loads(call)
    prepared = prepare(
        name, data["args"], data["kwargs"], queue=data["queue"], job_timeout=data["job_timeout"],
        retries=data["retries"], backoff=data["backoff"], job_id=job_id, unique=data["unique"], settings=settings,
    )  # fmt: skip
    if data["due"] is not None and data["due"] > time.time():
        return replace(prepared, due=datetime.fromtimestamp(data["due"], UTC))
    return prepared


def _ensure_table(db: Db) -> None:
    """Create the table on first use, inside the caller's transaction.

    SQLite answers "is it there" from memory; PostgreSQL is asked once per
    process and database. A table created here exists once the caller commits,
    so only one found by the check is remembered, and not one this very
    transaction created (by an earlier call): it is gone if the caller rolls back.
    """
    if db.dialect == "postgresql":
        key = _dsn(db)
        if key in _has_table:
            return
        found, created_here = db.table_here()
        if found:
            if not created_here:
                _has_table.add(key)
            return
    elif db.has_table():
        return
    db.create_table()


def _dsn(db: Db) -> str:
    """Which database: psycopg's ``info.dsn`` is rebuilt on each read (0.6 ms), its parts are not."""
    raw = db.raw
    if hasattr(raw, "pgconn"):
        info = raw.info
        return f"{info.host}:{info.port}/{info.dbname}"
    bind = raw.get_bind() if hasattr(raw, "get_bind") else raw
    return str(getattr(bind, "engine", bind).url)
