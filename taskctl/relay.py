"""The relay: committed outbox rows become jobs in Redis, each exactly once (``python -m taskctl.relay``).

One pass (:func:`relay_once`) takes a batch of waiting rows in one database
transaction, checks each again (:func:`taskctl.outbox.decode`), writes the jobs
of the batch in one Redis transaction, deletes their rows and commits.

Exactly one job per row, whatever is killed when: the transaction writes a
row's job only if the row (:func:`mark`) is not in ``taskctl:outbox:relayed``,
and adds it there in the same EXEC. A relay killed after EXEC and before its commit
leaves rows that the next pass finds already relayed: it deletes them and
writes nothing. A row leaves that set only after it is deleted, and a
minute later (:data:`FORGET_AFTER`), so that a relay stalled between reading
rows and writing them still finds it. Several relays at once: on PostgreSQL
each takes rows with ``FOR UPDATE SKIP LOCKED`` (they share the work); on
SQLite the pass holds the write lock (they take turns).

A row that can no longer become a job (its job left the catalog, its
arguments no longer fit, its queue is gone, a unique id is taken) is never
dropped: it is marked stuck with the reason, skipped, and shown until an
operator retries or deletes it (``taskctl outbox``).

It outlives outages of either side: it logs once, waits with backoff, and
carries on. With PostgreSQL it wakes on each commit (LISTEN/NOTIFY, from the
table's trigger); with SQLite it looks every ``TASKCTL_OUTBOX_POLL`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from taskctl.connection import NO_REDIS_ERRORS, get_redis, unavailable
from taskctl.enqueue import Prepared, batch_pipeline, confirm_replicated, queue_writes
from taskctl.exceptions import RedisUnavailableError, TaskctlError
from taskctl.outbox import decode
from taskctl.outbox_db import CHANNEL, TABLE, Db, down_errors, one_line, open_url, placeholders
from taskctl.rqclasses import CatalogJob
from taskctl.settings import Settings, get_settings, mask_url

log = logging.getLogger("taskctl.relay")

RELAYED = "taskctl:outbox:relayed"
#: Seconds an id stays in RELAYED after its row is deleted (see the module's docstring).
FORGET_AFTER = 60.0
#: Ids in RELAYED older than this were left by a relay killed between its commit and forgetting them.
STALE_AFTER = 7 * 86_400


@dataclass
class Pass:
    """What one pass did."""

    moved: int = 0
    """Rows that became jobs."""
    already: int = 0
    """Rows whose job a killed relay had written: deleted, nothing written."""
    stuck: int = 0
    """Rows marked stuck, with their reason."""

    @property
    def rows(self) -> int:
        return self.moved + self.already + self.stuck


class Relay:
    def __init__(self, settings: Settings | None = None, redis: Redis | None = None) -> None:
        self.settings = settings or get_settings()
        self.url = self.settings.outbox_database
        self.redis = redis or get_redis(self.settings)
        self.db: Db | None = None
        self._forget: deque[tuple[float, list[str]]] = deque()
        self._trimmed_at = 0.0

    def database(self) -> Db:
        if self.db is None:
            db = open_url(self.url)
            with db.transaction():
                db.create_table()
            self.db = db
            if db.dialect == "postgresql":
                self._listener()  # before the first pass: a commit during it wakes the next wait
        return self.db

    def close(self) -> None:
        """Close the database connections; the ids waiting to be forgotten are kept (see :meth:`forget`)."""
        for connection in (self.db.raw if self.db is not None else None, self._listening):
            if connection is not None:
                with contextlib.suppress(Exception):  # a dead connection may refuse even that
                    connection.close()
        self.db = self._listening = None

    def relay_once(self, limit: int | None = None) -> Pass:
        """Move one batch of waiting rows; the database's and Redis's errors reach the caller, nothing half-done."""
        db = self.database()
        limit = limit or self.settings.outbox_batch
        done = Pass()
        # SQLite: a plain read first, as an idle relay must not take the write lock the application's writers need.
        if (
            db.dialect == "sqlite"
            and not db.rows(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE stuck_reason IS NULL)")[0][0]
        ):
            self.forget()
            return done
        # PostgreSQL: several relays share the rows; SQLite: the transaction holds the write lock already.
        lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
        with db.transaction():
            rows = db.rows(
                f"SELECT id, job_id, job, call FROM {TABLE} WHERE stuck_reason IS NULL ORDER BY id LIMIT ?{lock}",
                (limit,),
            )
            deleted = self._move(db, rows, done)
        if deleted:
            self._forget.append((time.monotonic(), deleted))
        self.forget()
        return done

    def _move(self, db: Db, rows: list[tuple[Any, ...]], done: Pass) -> list[str]:
        """In the pass's transaction: write the rows' jobs, mark the stuck, delete the rest; the deleted rows' marks."""
        if not rows:
            return []
        calls: dict[int, Prepared] = {}
        stuck: list[tuple[str, int]] = []
        for row_id, job_id, name, call in rows:
            try:
                calls[row_id] = decode(name, job_id, call, self.settings)
            except (TaskctlError, ValueError, KeyError, TypeError) as exc:
                stuck.append((_reason(exc), row_id))
        written, taken = self._write(calls) if calls else (set(), set())
        done.moved += len(written)
        done.already += len(calls) - len(written) - len(taken)
        for row_id in taken:
            job_id = calls[row_id].job_id
            stuck.append((f"a job with id {job_id!r} exists already (unique): not enqueued", row_id))
        now = time.time()
        for reason, row_id in stuck:
            db.execute(f"UPDATE {TABLE} SET stuck_reason = ?, stuck_at = ? WHERE id = ?", (reason, now, row_id))
        done.stuck += len(stuck)
        gone = [row_id for row_id in calls if row_id not in taken]
        if gone:
            db.execute(f"DELETE FROM {TABLE} WHERE id IN ({placeholders(gone)})", gone)
        return [mark(row_id, str(calls[row_id].job_id)) for row_id in gone]

    def _write(self, calls: dict[int, Prepared]) -> tuple[set[int], set[int]]:
        """Write the jobs of the calls not relayed before, in one transaction; the rows written, and the unique taken.

        The transaction WATCHes the jobs' keys: a job written by another relay between
        the check of RELAYED and EXEC (one that lost its rows' locks while stalled)
        aborts it, and the check runs again. Calls without a delay or ``unique`` are
        written as ``enqueue_many`` writes them (a template per shape, one push per
        queue), at a fraction of the cost of one job at a time.
        """
        ids = {row_id: str(call.job_id) for row_id, call in calls.items()}
        keys = {row_id: CatalogJob.key_for(job_id) for row_id, job_id in ids.items()}
        marks = {row_id: mark(row_id, job_id) for row_id, job_id in ids.items()}
        try:
            with self.redis.pipeline() as pipeline:
                while True:
                    try:
                        pipeline.watch(*keys.values())  # type: ignore[no-untyped-call]
                        relayed = pipeline.zmscore(RELAYED, list(marks.values()))
                        fresh = [row_id for row_id, score in zip(ids, relayed, strict=True) if score is None]
                        taken = {r for r in fresh if calls[r].unique and pipeline.exists(keys[r])}
                        fresh = [row_id for row_id in fresh if row_id not in taken]
                        pipeline.multi()
                        plain = [row_id for row_id in fresh if calls[row_id].due is None and not calls[row_id].unique]
                        if plain:
                            batch_pipeline(self.redis, [calls[r] for r in plain], [ids[r] for r in plain],
                                           self.settings, pipeline)  # fmt: skip
                        for row_id in fresh:
                            if row_id not in plain:
                                queue_writes(calls[row_id], self.redis, self.settings, pipeline)
                        if fresh:
                            pipeline.zadd(RELAYED, dict.fromkeys((marks[r] for r in fresh), time.time()))
                        pipeline.execute()
                        break
                    except WatchError:
                        continue
            confirm_replicated(self.redis, self.settings)
        except NO_REDIS_ERRORS as exc:
            raise unavailable(self.settings.redis_url, exc) from None
        return set(fresh), taken

    def forget(self, everything: bool = False) -> None:
        """Take the ids of deleted rows out of RELAYED once FORGET_AFTER has passed; the stale ones too, daily."""
        try:
            while self._forget and (everything or time.monotonic() - self._forget[0][0] >= FORGET_AFTER):
                self.redis.zrem(RELAYED, *self._forget[0][1])
                self._forget.popleft()
            if time.time() - self._trimmed_at > 3600:
                self.redis.zremrangebyscore(RELAYED, "-inf", time.time() - STALE_AFTER)
                self._trimmed_at = time.time()
        except NO_REDIS_ERRORS:
            pass  # kept for the next pass: an id a minute late out of the set costs nothing

    def wait(self, timeout: float) -> None:
        """Until a commit wakes us (PostgreSQL) or ``timeout`` seconds have passed."""
        if self.db is None or self.db.dialect != "postgresql":
            time.sleep(timeout)
            return
        listener = self._listener()
        for _ in listener.notifies(timeout=timeout, stop_after=1):
            pass

    _listening: Any = None

    def _listener(self) -> Any:
        if self._listening is None or self._listening.closed:
            self._listening = open_url(self.url, autocommit=True).raw
            self._listening.execute(f"LISTEN {CHANNEL}")
        return self._listening


def mark(row_id: int, job_id: str) -> str:
    """A row's member of RELAYED: its job id alone would take a later row of the same id for this one."""
    return f"{job_id}@{row_id}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run(settings: Settings | None = None, stopping: Callable[[], bool] = lambda: False) -> None:
    """Relay until ``stopping()``: back to the table at once while rows wait, else on a commit or the poll interval."""
    relay = Relay(settings)
    settings = relay.settings
    down: str | None = None
    delay = 0.5
    outage: tuple[type[Exception], ...] = (*down_errors(), RedisUnavailableError)
    log.info("relay: outbox %s to Redis %s", mask_url(relay.url), settings.redis_url_masked)
    try:
        while not stopping():
            try:
                done = relay.relay_once()
            except outage as exc:
                side = "Redis" if isinstance(exc, RedisUnavailableError) else "the outbox database"
                if down != side:
                    log.error("relay: %s unavailable (%s); retrying", side, one_line(exc))
                    down = side
                if side != "Redis":
                    relay.close()
                _sleep(delay, stopping)
                delay = min(delay * 2, 5.0)  # back within 5 s of an outage's end
                continue
            if down:
                log.info("relay: %s answers again", down)
                down, delay = None, 0.5
            if done.rows:
                log.info("relay: %d rows moved, %d already relayed, %d stuck", done.moved, done.already, done.stuck)
            if done.rows < settings.outbox_batch:
                try:
                    # PostgreSQL wakes it on commit; it looks every second as well, and sees a stop request.
                    relay.wait(settings.outbox_poll if relay.db and relay.db.dialect == "sqlite" else 1.0)
                except outage:
                    relay._listening = None
    finally:
        relay.forget(everything=True)  # stopping: a relay restarted would not know them
        relay.close()


def _sleep(seconds: float, stopping: Callable[[], bool]) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until and not stopping():
        time.sleep(min(0.1, seconds))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    stop = {"asked": False}

    def ask(signum: int, frame: FrameType | None) -> None:
        stop["asked"] = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ask)
    try:
        run(get_settings(), stopping=lambda: stop["asked"])
    except TaskctlError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
