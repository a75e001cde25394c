"""The operator's view of the outbox table: how much waits, what is stuck, and the two ways out of stuck.

The relay (:mod:`taskctl.relay`) never drops a row: one it cannot make a job
stays, with its reason, until a person decides. Everything here works on one
connection (:func:`opened` for the configured database, or the application's
own) and touches the table only; Redis is the relay's business. Each function
is a bounded number of statements, whatever the number of rows or ids.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from taskctl.exceptions import InvalidArgumentsError, NoSuchOutboxRowError, OutboxUnavailableError
from taskctl.outbox_db import TABLE, Db, dialect_of, down_errors, one_line, open_url, placeholders, sqlite_path, wrap
from taskctl.settings import Settings, get_settings, mask_url

#: Ids per statement: far below SQLite's (and PostgreSQL's) limit on parameters.
CHUNK = 500


@dataclass(frozen=True)
class OutboxStats:
    waiting: int
    """Rows the relay has yet to move."""
    stuck: int
    """Rows the relay gave up on: each waits for an operator's retry or delete."""
    oldest_age: float
    """Seconds the oldest waiting row has waited (0 when none): above a few seconds for long, no relay runs."""
    has_table: bool = True
    """False when no row was ever written (no table, or no SQLite file): the outbox is not in use."""


#: What a database without the table shows: nothing waits, nothing is stuck.
NOT_IN_USE = OutboxStats(0, 0, 0.0, has_table=False)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    job_id: str
    job: str
    created_at: float
    stuck_reason: str | None
    stuck_at: float | None
    call: str = "{}"
    """The call as the row keeps it (JSON: args, kwargs, queue, options); see :func:`taskctl.outbox.encode`."""

    @property
    def stuck(self) -> bool:
        return self.stuck_reason is not None

    @property
    def queue(self) -> str:
        return str(self._call().get("queue") or "?")

    @property
    def due(self) -> float | None:
        """The Unix time a delayed call is due, if it was given one."""
        due = self._call().get("due")
        return float(due) if isinstance(due, int | float) else None

    @property
    def description(self) -> str:
        """The call as ``taskctl status`` shows a job's, built from the row alone: its job may have left the catalog."""
        data = self._call()
        args, kwargs = data.get("args"), data.get("kwargs")
        words = [repr(a) for a in args or []] if isinstance(args, list) else ["?"]
        if isinstance(kwargs, dict):
            words += [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{self.job}({', '.join(words)})"

    def _call(self) -> dict[str, Any]:
        try:
            data = json.loads(self.call)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


_COLUMNS = "id, job_id, job, created_at, stuck_reason, stuck_at, call"


@contextlib.contextmanager
def opened(settings: Settings | None = None, *, create: bool = False, timeout: float = 5.0) -> Iterator[Db]:
    """The configured outbox database for one inspection or operation, closed afterwards.

    An absent SQLite file means no row was ever written; an inspection must
    not create it (the application owns that file), so unless ``create`` it
    gets an empty in-memory database instead, and every function answers "no
    table". A database that does not answer, at connect time or later, raises
    OutboxUnavailableError naming it (password masked).
    """
    settings = settings or get_settings()
    url = settings.outbox_database
    if not create and dialect_of(url) == "sqlite" and not sqlite_path(url).exists():
        db = Db(sqlite3.connect(":memory:", isolation_level=None), "sqlite", "qmark")
    else:
        try:
            # Autocommit: a read must not leave PostgreSQL a transaction open; writes open theirs (Db.transaction).
            db = open_url(url, autocommit=True, create=create, timeout=timeout)
        except OutboxUnavailableError as exc:
            raise OutboxUnavailableError(one_line(exc)) from None
    try:
        yield db
    except OutboxUnavailableError as exc:
        raise OutboxUnavailableError(one_line(exc)) from None
    except down_errors() as exc:
        raise OutboxUnavailableError(
            f"the outbox database {mask_url(url)} stopped answering: {one_line(exc)}"
        ) from None
    finally:
        with contextlib.suppress(Exception):  # a dead connection may refuse even that
            db.raw.close()


def outbox_stats(db: Db | Any) -> OutboxStats:
    """Waiting and stuck rows and the oldest wait, in one statement; a database without the table is empty."""
    db = _db(db)
    if not db.has_table():
        return NOT_IN_USE
    ((waiting, stuck, oldest),) = db.rows(
        "SELECT COALESCE(SUM(CASE WHEN stuck_reason IS NULL THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN stuck_reason IS NULL THEN 0 ELSE 1 END), 0),"
        f" MIN(CASE WHEN stuck_reason IS NULL THEN created_at END) FROM {TABLE}"
    )
    age = max(0.0, time.time() - float(oldest)) if oldest is not None else 0.0
    return OutboxStats(int(waiting), int(stuck), age)


def stuck_rows(db: Db | Any, limit: int | None = None) -> list[OutboxRow]:
    """The stuck rows, oldest first (the order the relay would have moved them), at most ``limit``."""
    db = _db(db)
    if not db.has_table():
        return []
    sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE stuck_reason IS NOT NULL ORDER BY id"
    rows = db.rows(sql + " LIMIT ?", (limit,)) if limit is not None else db.rows(sql)
    return [_row(row) for row in rows]


def find_row(db: Db | Any, job_id: str) -> OutboxRow | None:
    """The row that will become (or could not become) job ``job_id``; None when the outbox holds none."""
    db = _db(db)
    if not db.has_table():
        return None
    found = db.rows(f"SELECT {_COLUMNS} FROM {TABLE} WHERE job_id = ?", (job_id,))
    return _row(found[0]) if found else None


def retry(db: Db | Any, job_ids: Sequence[str] = (), all_rows: bool = False) -> int:
    """Clear the reason of stuck rows, so that the relay tries them again; the number of rows cleared.

    Only stuck rows change: a named row that is not stuck waits for the relay
    already, and "try again" asks for nothing more (it is not counted). A named
    id no row holds raises NoSuchOutboxRowError and nothing changes: an
    operator who typed a wrong id, or whose row the relay moved meanwhile, must
    hear it rather than see a smaller count.
    """
    db = _db(db)
    ids = chosen(job_ids, all_rows)
    with db.transaction():
        if all_rows:
            return _count(db.execute(f"UPDATE {TABLE} SET stuck_reason = NULL, stuck_at = NULL"
                                     " WHERE stuck_reason IS NOT NULL"))  # fmt: skip
        found = _lock(db, ids)
        stuck = [job_id for job_id in ids if found[job_id]]
        for part in _chunks(stuck):
            db.execute(
                f"UPDATE {TABLE} SET stuck_reason = NULL, stuck_at = NULL WHERE job_id IN ({placeholders(part)})", part
            )
        return len(stuck)


def delete(db: Db | Any, job_ids: Sequence[str] = (), all_rows: bool = False) -> int:
    """Delete rows for good; the number deleted. ``all_rows``: every stuck row, and never a waiting one.

    A waiting row is a committed call the relay is about to make a job: the
    outbox exists so that such a call is never lost, so a blanket delete
    (``--all``, typed to clear what is stuck) must not take them with it. A
    waiting row named by its id is deleted: the operator means that very call
    (one written by mistake, to be stopped before it runs). If the relay has
    moved it meanwhile, its id is no longer in the table: NoSuchOutboxRowError,
    nothing deleted, and the job is for ``taskctl cancel``. Unknown ids raise
    that error too, with nothing changed.
    """
    db = _db(db)
    ids = chosen(job_ids, all_rows)
    with db.transaction():
        if all_rows:
            return _count(db.execute(f"DELETE FROM {TABLE} WHERE stuck_reason IS NOT NULL"))
        _lock(db, ids)
        for part in _chunks(ids):
            db.execute(f"DELETE FROM {TABLE} WHERE job_id IN ({placeholders(part)})", part)
        return len(ids)


def init(db: Db | Any) -> bool:
    """Create the table (and on PostgreSQL its trigger), committed; False when the table was there already.

    Run even when it exists: on PostgreSQL that puts back a missing trigger
    (a table made by hand from an older schema) without touching the rows.
    """
    db = _db(db)
    with db.transaction():
        existed = db.has_table()
        db.create_table()
    return not existed


def _db(db: Db | Any) -> Db:
    return db if isinstance(db, Db) else wrap(db)


def chosen(job_ids: Sequence[str], all_rows: bool) -> list[str]:
    if bool(job_ids) == all_rows:
        raise InvalidArgumentsError("give job ids or --all (not both)")
    return list(dict.fromkeys(job_ids))  # each id once, in the order given


def _lock(db: Db, ids: list[str]) -> dict[str, bool]:
    """Inside the write's transaction: each named id -> whether its row is stuck; NoSuchOutboxRowError for the rest.

    On PostgreSQL the rows are locked (a relay moving them now is waited for,
    and its deleted rows are then not found); on SQLite the transaction holds
    the write lock already.
    """
    if not db.has_table():
        raise _unknown(ids)
    lock = " FOR UPDATE" if db.dialect == "postgresql" else ""
    found: dict[str, bool] = {}
    for part in _chunks(ids):
        sql = f"SELECT job_id, stuck_reason IS NOT NULL FROM {TABLE} WHERE job_id IN ({placeholders(part)}){lock}"
        found.update((str(job_id), bool(stuck)) for job_id, stuck in db.rows(sql, part))
    missing = [job_id for job_id in ids if job_id not in found]
    if missing:
        raise _unknown(missing)
    return found


def _unknown(ids: list[str]) -> NoSuchOutboxRowError:
    shown = ", ".join(repr(job_id) for job_id in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return NoSuchOutboxRowError(
        f"no outbox row holds job id {shown}; nothing changed "
        "(the relay may have moved it to Redis meanwhile: see `taskctl status JOB_ID`)"
    )


def _row(row: Sequence[Any]) -> OutboxRow:
    row_id, job_id, job, created_at, reason, stuck_at, call = row
    return OutboxRow(int(row_id), str(job_id), str(job), float(created_at), reason,
                     float(stuck_at) if stuck_at is not None else None, str(call))  # fmt: skip


def _count(cursor: Any) -> int:
    return max(0, int(cursor.rowcount))


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]
