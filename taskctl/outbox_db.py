"""The outbox table, in whichever database and driver the application uses.

The application hands :mod:`taskctl.outbox` its own connection (sqlite3, psycopg 3,
or a SQLAlchemy Connection or Session), so the row is written by that connection,
inside its transaction; :class:`Db` hides the four drivers' differences
(placeholders, how a statement is run) behind one ``execute``. The relay and the
operator commands open their own connection from ``TASKCTL_OUTBOX_URL``
(:func:`open_url`).

The schema (:func:`schema`) is created on first use and by ``taskctl outbox
init``; teams that own their migrations take it from ``taskctl outbox schema``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from taskctl.exceptions import OutboxUnavailableError
from taskctl.settings import mask_url

TABLE = "taskctl_outbox"
#: The PostgreSQL channel a commit of new rows notifies (a trigger of the table), which the relay listens on.
CHANNEL = "taskctl_outbox"

_SQLITE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the relay moves rows in this order
    job_id TEXT NOT NULL UNIQUE,            -- the id the job has in Redis, chosen when the row is written
    job TEXT NOT NULL,                      -- the catalog name (send_email)
    call TEXT NOT NULL,                     -- JSON: args, kwargs, queue and options, as checked by enqueue
    created_at REAL NOT NULL,               -- Unix time the row was written
    stuck_reason TEXT,                      -- why the relay could not make it a job; NULL while it waits
    stuck_at REAL
)
"""

_POSTGRES = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    job TEXT NOT NULL,
    call TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    stuck_reason TEXT,
    stuck_at DOUBLE PRECISION
);
-- Wakes the relay (LISTEN {CHANNEL}) when a transaction that wrote rows commits.
CREATE OR REPLACE FUNCTION {TABLE}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER {TABLE}_notify AFTER INSERT ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_notify()
"""


def schema(dialect: str) -> str:
    """The DDL of the outbox for ``sqlite`` or ``postgresql``, as ``taskctl outbox schema`` prints it."""
    return (_POSTGRES if dialect == "postgresql" else _SQLITE).strip() + ";\n"


@dataclass
class Db:
    """One database connection of any supported driver, with ``?`` placeholders everywhere."""

    raw: Any
    dialect: str  # "sqlite" or "postgresql"
    style: str  # "qmark" (sqlite3), "format" (psycopg) or "named" (SQLAlchemy)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.style == "qmark":
            return self.raw.execute(sql, tuple(params))
        if self.style == "format":
            return self.raw.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
        from sqlalchemy import text

        names = iter(range(len(params)))
        named = re.sub(r"\?", lambda _: f":p{next(names)}", sql)
        return self.raw.execute(text(named), {f"p{i}": value for i, value in enumerate(params)})

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.execute(sql, params).fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for a read and the writes that depend on it, committed when the block ends.

        SQLite takes its write lock up front (BEGIN IMMEDIATE), so that nobody (a relay,
        an operator) changes a row between the read and the write. An application's
        sqlite3 connection already in a transaction, or a SQLAlchemy Connection or
        Session, keeps the caller's transaction: the writes are the caller's to commit.
        """
        if self.style == "format":
            with self.raw.transaction():
                yield
        elif self.style == "qmark" and not self.raw.in_transaction:
            self.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.raw.in_transaction:  # SQLite rolls back by itself after some errors
                    self.execute("ROLLBACK")
                raise
            self.execute("COMMIT")
        else:
            yield

    def create_table(self) -> None:
        """Create the outbox if it is missing, inside the connection's current transaction."""
        if self.dialect == "postgresql":
            # Two first writers at once would both CREATE; the lock makes the second see the first's table.
            self.execute(f"SELECT pg_advisory_xact_lock(hashtext('{TABLE}'))")
            for statement in _split(_POSTGRES):
                self.execute(statement)
        else:
            self.execute(_SQLITE)

    def table_here(self) -> tuple[bool, bool]:
        """PostgreSQL: whether the table exists for this connection, and whether this transaction created it.

        A table this transaction created is gone if it rolls back: the transaction
        holds the ACCESS EXCLUSIVE lock CREATE TABLE took until it ends (a savepoint
        rolled back releases it along with the table).
        """
        found, created_here = self.rows(
            f"SELECT to_regclass('{TABLE}') IS NOT NULL, EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'relation'"
            f" AND relation = to_regclass('{TABLE}') AND pid = pg_backend_pid() AND mode = 'AccessExclusiveLock'"
            " AND granted)"
        )[0]
        return bool(found), bool(created_here)

    def has_table(self) -> bool:
        if self.dialect == "postgresql":
            return bool(self.rows(f"SELECT to_regclass('{TABLE}') IS NOT NULL")[0][0])
        return bool(self.rows("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))[0][0])


def placeholders(values: Sequence[Any]) -> str:
    """``?,?,?``: one per value, for ``IN (...)``."""
    return ",".join("?" * len(values))


def one_line(exc: BaseException) -> str:
    """A driver's message on one line: libpq's span several (a hint, a CONTEXT); a log line or a cell is one."""
    return " ".join(str(exc).split())


def _split(ddl: str) -> list[str]:
    """Statements of our own DDL: split on the semicolons that end a line outside a $$ body."""
    statements, current, in_body = [], [], False
    for line in ddl.strip().splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if line.rstrip().endswith(";") and not in_body:
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if current:
        statements.append("\n".join(current))
    return [s for s in statements if s.strip()]


def wrap(connection: Any) -> Db:
    """The application's connection as a :class:`Db`; TypeError for a driver the outbox does not know."""
    if isinstance(connection, sqlite3.Connection):
        return Db(connection, "sqlite", "qmark")
    module = type(connection).__module__
    if module.startswith("psycopg.") or module == "psycopg":
        return Db(connection, "postgresql", "format")
    if module.startswith("sqlalchemy."):
        bind = connection.get_bind() if hasattr(connection, "get_bind") else connection
        name = bind.dialect.name
        if name not in ("sqlite", "postgresql"):
            raise TypeError(f"the outbox works on SQLite and PostgreSQL; this SQLAlchemy connection is {name}")
        return Db(connection, name, "named")
    raise TypeError(
        "the outbox takes the application's sqlite3 or psycopg (3) connection, or a SQLAlchemy Connection "
        f"or Session; got {type(connection).__module__}.{type(connection).__qualname__}"
    )


def dialect_of(url: str) -> str:
    scheme = urlsplit(url).scheme.split("+")[0]
    return "postgresql" if scheme in ("postgresql", "postgres") else "sqlite"


def sqlite_path(url: str) -> Path:
    """sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy reads them."""
    return Path(unquote(url.split(":///", 1)[1])) if ":///" in url else Path(url)


def open_url(url: str, *, autocommit: bool = False, create: bool = True, timeout: float = 5.0) -> Db:
    """A connection of the relay or of an operator command. OutboxUnavailableError when the database does not answer.

    ``create=False`` opens an SQLite file only if it exists (an inspection must not make one).
    SQLite connections are in autocommit mode; transactions are opened with BEGIN IMMEDIATE by the caller.
    """
    if dialect_of(url) == "postgresql":
        import psycopg

        try:
            conn = psycopg.connect(re.sub(r"^[a-z]+(\+[a-z0-9]+)?://", "postgresql://", url),
                                   autocommit=autocommit, connect_timeout=max(1, round(timeout)))  # fmt: skip
        except psycopg.Error as exc:
            raise OutboxUnavailableError(f"cannot reach the outbox database {mask_url(url)}: {exc}") from None
        return Db(conn, "postgresql", "format")
    path = sqlite_path(url)
    if not create and not path.exists():
        raise OutboxUnavailableError(f"the outbox database {path} does not exist (no row was ever written)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lite = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        lite.execute("PRAGMA journal_mode=WAL")
    except (sqlite3.Error, OSError) as exc:
        raise OutboxUnavailableError(f"cannot open the outbox database {path}: {exc}") from None
    return Db(lite, "sqlite", "qmark")


def down_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "the database is not answering" (as opposed to a bug in a statement)."""
    errors: list[type[Exception]] = [sqlite3.OperationalError, OutboxUnavailableError]
    try:
        import psycopg

        errors += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:
        pass
    return tuple(errors)
