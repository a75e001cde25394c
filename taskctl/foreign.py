"""Workers on taskctl's Redis that are not taskctl's, and the jobs they could not read.

A stock ``rq worker`` (started from another environment, an old deployment, a
colleague's laptop) listens on the same queue keys. It reads jobs as pickle, so
it fails every taskctl job it takes (each one spending a retry), and it would run
whatever function a job written by someone else names. taskctl's workers say
what they are with one more field in RQ's own worker hash (``WORKER_MARK``,
which RQ's tools ignore); a worker without it is named by ``taskctl doctor``,
``taskctl workers`` and the dashboard, and logged once by taskctl's workers.

What such a worker did to a job is undone from evidence, never from guesses: a
job in a failed registry is put back only when its failure is RQ's
DeserializationError (the worker could not read the data, so the job never ran)
and taskctl can read it; the retries other workers spent are given back when a
taskctl worker starts the job (``rqclasses.retries_owed``).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from base64 import b64decode
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.exceptions import InvalidJobOperation
from rq.registry import FailedJobRegistry
from rq.results import Result

from taskctl.catalog import get_catalog
from taskctl.rqclasses import CatalogJob, retries_owed

#: The field of RQ's worker hash in which a taskctl worker names its class and version.
WORKER_MARK = "taskctl"
#: What a worker that is not taskctl's does wrong, in one sentence for people.
WHAT_IT_DOES_WRONG = (
    "it reads jobs as pickle, so it fails every taskctl job it takes, and it would run "
    "any function that a job written into Redis names"
)
HOW_TO_START_ONE = (
    "stop it, and start workers where taskctl is installed: `rq worker high default low` "
    "(or, elsewhere, add -w taskctl.worker.Worker -c taskctl.rqconfig)"
)
#: One pass of these checks per interval for the whole fleet, whichever worker takes it.
FLEET_LOCK_KEY = "taskctl:maintenance:fleet"
#: A foreign worker already logged; kept while it lives, so it is logged once.
_LOGGED_KEY = "taskctl:foreign-worker:{}"
_LOGGED_SECONDS = 86_400
#: Where the last pass stopped in each failed registry (its score: the failure's expiry time).
_CURSOR_KEY = "taskctl:reclaim-cursor:{}"
#: Failed jobs looked at per queue per pass: a pass stays short however many have failed.
RECLAIM_BATCH = 500


@dataclass(frozen=True)
class ForeignWorker:
    name: str
    hostname: str
    pid: int | None
    queues: tuple[str, ...]
    rq_version: str

    def describe(self) -> str:
        return (
            f"worker {self.name} on host {self.hostname}, pid {self.pid or '?'}, "
            f"queues {','.join(self.queues) or '?'} (rq {self.rq_version or '?'}) is not a taskctl worker"
        )


def foreign_workers(connection: Redis) -> list[ForeignWorker]:
    """The live workers registered on this Redis that are not taskctl's, by name."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in connection.smembers("rq:workers"))
    fields = ("birth", "death", WORKER_MARK, "hostname", "pid", "queues", "version")
    with connection.pipeline(transaction=False) as pipeline:
        for name in names:
            pipeline.hmget(name, fields)
        rows = pipeline.execute()
    found = []
    for key, row in zip(names, rows, strict=True):
        birth, death, mark, hostname, pid, queues, version = (v.decode() if v else "" for v in row)
        # A hash without its birth is a worker mid-registration or already expired: nothing to judge.
        if not birth or death or mark:
            continue
        found.append(
            ForeignWorker(
                name=key.removeprefix("rq:worker:"),
                hostname=hostname or "?",
                pid=int(pid) if pid.isdigit() else None,
                queues=tuple(q for q in queues.split(",") if q),
                rq_version=version,
            )
        )
    return found


def taskctl_worker_names(connection: Redis, names: list[str]) -> set[str]:
    """Of these worker names, the ones whose worker says it is taskctl's."""
    with connection.pipeline(transaction=False) as pipeline:
        for name in names:
            pipeline.hexists(f"rq:worker:{name}", WORKER_MARK)
        marked = pipeline.execute()
    return {name for name, mark in zip(names, marked, strict=True) if mark}


def fleet_pass(
    connection: Redis, queue_names: list[str], interval: float, failure_ttl: int, log: logging.Logger
) -> None:
    """Name new foreign workers and put back the jobs they could not read.

    Each is done once per interval for the whole fleet, whichever worker comes first:
    the workers check, and each queue is looked at, under a lock that lasts the interval.
    """
    lock_ms = max(500, int(interval * 900))
    if connection.set(FLEET_LOCK_KEY, 1, nx=True, px=lock_ms):
        for worker in foreign_workers(connection):
            key = _LOGGED_KEY.format(worker.name)
            if connection.set(key, 1, nx=True, ex=_LOGGED_SECONDS):
                log.warning("*** %s: %s; %s", worker.describe(), WHAT_IT_DOES_WRONG, HOW_TO_START_ONE)
            else:
                connection.expire(key, _LOGGED_SECONDS)
    for queue_name in queue_names:
        if not connection.set(f"{FLEET_LOCK_KEY}:{queue_name}", 1, nx=True, px=lock_ms):
            continue
        for job_id, retries in reclaim_unread(connection, queue_name, failure_ttl):
            log.warning(
                "job %s: a worker that is not taskctl's could not read it and failed it; back on queue %s, %s",
                job_id,
                queue_name,
                "without retries" if retries is None else f"{retries} retries left",
            )


def reclaim_unread(connection: Redis, queue_name: str, failure_ttl: int) -> list[tuple[str, int | None]]:
    """Put back on its queue each job failed only because its worker could not read it; (id, retries left).

    Looks at the failures added since the last pass (the registry is ordered by
    expiry, so by failure time), at most ``RECLAIM_BATCH`` a pass.
    """
    registry = FailedJobRegistry(queue_name, connection=connection, job_class=CatalogJob)
    cursor_key = _CURSOR_KEY.format(queue_name)
    cursor = float(connection.get(cursor_key) or 0)
    if cursor > time.time() + failure_ttl:  # scores are expiry times: the setting was lowered since
        cursor = time.time() + failure_ttl - 60
    batch: Any = connection.zrangebyscore(registry.key, cursor, "+inf", start=0, num=RECLAIM_BATCH, withscores=True)
    if not batch:
        return []
    if len(batch) == RECLAIM_BATCH and batch[-1][1] == batch[0][1]:
        # More failures in one second than a batch: take that second whole, then go past it.
        batch = connection.zrangebyscore(registry.key, batch[0][1], batch[0][1], withscores=True)
        next_cursor = batch[-1][1] + 0.001
    else:
        # Inclusive next time: failures later in the batch's last second may not be in it yet.
        next_cursor = batch[-1][1]
    ids = [job_id.decode() for job_id, _ in batch]
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in ids:
            pipeline.xrevrange(Result.get_key(job_id), count=1)  # type: ignore[no-untyped-call]  # the failure
            pipeline.hget(CatalogJob.key_for(job_id), "data")
        rows = pipeline.execute()
    reclaimed = []
    for job_id, latest, data in zip(ids, rows[::2], rows[1::2], strict=True):
        exc_string = latest[0][1].get(b"exc_string") if latest else None
        if not (_unread_by_its_worker(exc_string) and _readable_catalog_call(data)):
            continue
        job = CatalogJob(job_id, connection=connection)
        job.refresh()  # type: ignore[no-untyped-call]
        job.retries_left = None if job.retries_left is None else job.retries_left + retries_owed(job)
        try:
            registry.requeue(job)
        except InvalidJobOperation:  # requeued or deleted by someone else meanwhile
            continue
        reclaimed.append((job_id, job.retries_left))
    connection.set(cursor_key, next_cursor)
    return reclaimed


def _unread_by_its_worker(exc_string: bytes | None) -> bool:
    """The failure is RQ's DeserializationError from reading the job's data: the job never ran."""
    if not exc_string:
        return False
    try:  # as RQ's Result stores it
        text = zlib.decompress(b64decode(exc_string)).decode("utf-8", "replace")
    except (ValueError, zlib.error):
        return False
    lines = text.strip().splitlines()
    # A job's own code runs inside Job.perform; a failure there is a real one, whatever it raised.
    return bool(lines) and lines[-1].startswith("rq.exceptions.DeserializationError") and ", in perform\n" not in text


def _readable_catalog_call(data: bytes | None) -> bool:
    """The job's data is taskctl's JSON and names a job taskctl's workers run."""
    if not data:
        return False
    try:
        decoded: Any = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError):
        return False
    if not (isinstance(decoded, list) and len(decoded) == 4 and isinstance(decoded[0], str)):
        return False
    return get_catalog().by_path(decoded[0]) is not None
