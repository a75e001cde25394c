"""Acting on failed jobs by the thousand: requeue or delete them in atomic batches, paced; cancel a job.

RQ's requeue takes a job out of the failed jobs in one round trip and pushes it on
its queue in another: a process killed between the two loses the job (neither
failed nor queued), and a selection of 20,000 jobs costs 60,000 round trips. Here a
batch is one transaction: its job hashes are WATCHed, read again after the WATCH,
and those still failed, and failed within the selection's window, are moved by RQ's
own enqueue or delete, queued in one MULTI/EXEC. So an interrupted run has moved
whole batches only; a job another client changed meanwhile is read again; a job no
longer failed is left alone. A selection's window ends when it was made (``until``):
run again with that ``until``, an interrupted requeue puts back what it had not, and
no job twice, not even one that failed again after it was put back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq.job import JobStatus

from taskctl.connection import connect
from taskctl.exceptions import InvalidArgumentsError, JobStateError
from taskctl.failures import FailedJob, FailureFilter, failure_filter, find_failed
from taskctl.rates import Rate, parse_rate
from taskctl.rqclasses import CatalogJob, Queue
from taskctl.settings import Settings, get_settings
from taskctl.status import fetch_job

#: States from which a job can still be cancelled: it has not started.
CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
#: Jobs moved per transaction (fewer when paced: ten transactions a second at most).
BATCH = 500
#: Transactions of one batch that may find its jobs changed by another client before giving up.
ATTEMPTS = 10
#: What the filters are called where the user typed them; said when none was given.
FILTERS = "--job, --queue, --cause, --since, --until"

Progress = Callable[[int, int], None]
"""Called after each batch with the jobs handled so far and the jobs selected."""


@dataclass(frozen=True)
class Selection:
    """The failed jobs an action is to take, oldest failure first, and the end of their window."""

    job_ids: list[str]
    failed: list[FailedJob] = field(default_factory=list)
    """The jobs as read, when they were selected by filters (for a preview)."""
    until: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    selection: Selection
    done: list[str]
    left: list[str]
    """Selected jobs found no longer failed (requeued or deleted meanwhile, or failed again after ``until``)."""


def select(
    connection: Redis,
    settings: Settings,
    job_ids: Sequence[str] = (),
    all_jobs: bool = False,
    job: str | None = None,
    queue: str | None = None,
    cause: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> Selection:
    """Job ids, or ``all_jobs`` and/or filters; the filters' window ends now unless ``until`` says otherwise."""
    filtered = any(value is not None for value in (job, queue, cause, since, until))
    if job_ids and (all_jobs or filtered):
        raise InvalidArgumentsError(f"give job ids, or --all and filters ({FILTERS}), not both")
    if not (job_ids or all_jobs or filtered):
        raise InvalidArgumentsError(f"say which failed jobs: give job ids, --all, or filters ({FILTERS})")
    if job_ids:
        for job_id in job_ids:
            _failed(job_id, connection)
        return Selection(list(dict.fromkeys(job_ids)))
    now = datetime.now(UTC)
    which: FailureFilter = failure_filter(settings, job, queue, cause, since, until or now, now)
    found = find_failed(connection, settings, which).matched[::-1]
    return Selection([failed.id for failed in found], found, which.until)


def requeue_failed(
    job_ids: Sequence[str] = (),
    all_jobs: bool = False,
    job: str | None = None,
    queue: str | None = None,
    cause: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    rate: str | Rate | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    connection: Redis | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """``taskctl failed requeue``: put the selected failed jobs back on their queues, one more try each.

    ``rate`` ("50/s") paces it, so that a service that has just come back is not flooded.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    pace = _rate(rate)
    chosen = select(connection, settings, job_ids, all_jobs, job, queue, cause, since, until)
    if dry_run:
        return Outcome(chosen, [], [])
    queues: dict[str, Queue] = {}

    def put_back(failed: CatalogJob, pipe: Any) -> None:
        target = queues.setdefault(failed.origin, Queue(failed.origin, connection=connection))
        # What RQ's FailedJobRegistry.requeue does, in our transaction instead of two round trips.
        pipe.zrem(target.failed_job_registry.key, failed.id)
        failed.started_at = failed.ended_at = None
        if failed.has_rate_limit:
            target._enqueue_rate_limited_job(failed, pipeline=pipe)  # its concurrency limit: a slot first
        else:
            target._enqueue_job(failed, pipeline=pipe)

    return _in_batches(connection, chosen, put_back, pace, progress)


def delete_failed(
    job_ids: Sequence[str] = (),
    all_jobs: bool = False,
    job: str | None = None,
    queue: str | None = None,
    cause: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    connection: Redis | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """``taskctl failed delete``: remove the selected failed jobs for good (hash, results, registry entry)."""
    settings = settings or get_settings()
    connection = connection or connect(settings)
    chosen = select(connection, settings, job_ids, all_jobs, job, queue, cause, since, until)
    if dry_run:
        return Outcome(chosen, [], [])

    def remove(failed: CatalogJob, pipe: Any) -> None:
        # RQ's own delete (it reads the job's status and executions first, outside the transaction).
        failed.delete(pipeline=pipe, remove_from_queue=False)

    return _in_batches(connection, chosen, remove, None, progress)


def _rate(rate: str | Rate | None) -> Rate | None:
    if rate is None or isinstance(rate, Rate):
        return rate
    try:
        return parse_rate(rate)
    except ValueError as error:
        raise InvalidArgumentsError(f"--rate: {error}") from None


def _in_batches(
    connection: Redis,
    chosen: Selection,
    act: Callable[[CatalogJob, Any], None],
    rate: Rate | None,
    progress: Progress | None,
) -> Outcome:
    per_second = rate.starts / rate.period if rate else None
    size = BATCH if per_second is None else max(1, min(BATCH, int(per_second / 10)))
    done: list[str] = []
    left: list[str] = []
    began = time.monotonic()
    total = len(chosen.job_ids)
    for start in range(0, total, size):
        moved, stayed = _transaction(connection, chosen.job_ids[start : start + size], chosen.until, act)
        done.extend(moved)
        left.extend(stayed)
        if progress is not None:
            progress(len(done) + len(left), total)
        if per_second is not None and start + size < total:
            time.sleep(max(0.0, began + len(done) / per_second - time.monotonic()))
    return Outcome(chosen, done, left)


def _transaction(
    connection: Redis, job_ids: list[str], until: datetime | None, act: Callable[[CatalogJob, Any], None]
) -> tuple[list[str], list[str]]:
    keys = [CatalogJob.key_for(job_id) for job_id in job_ids]
    with connection.pipeline() as pipe:
        for _ in range(ATTEMPTS):
            try:
                pipe.watch(*keys)  # type: ignore[no-untyped-call]
                # Read after the WATCH (on another connection): EXEC finds the jobs as read, or fails.
                ready = [job for job in _fetch(connection, job_ids) if job is not None and _still_failed(job, until)]
                pipe.multi()
                for job in ready:
                    act(job, pipe)
                pipe.execute()
            except WatchError:
                continue
            moved = {job.id for job in ready}
            return [i for i in job_ids if i in moved], [i for i in job_ids if i not in moved]
    raise JobStateError(
        f"{len(job_ids)} failed jobs from {job_ids[0]} on changed under {ATTEMPTS} tries in a row "
        "(another client is acting on them); this batch was left as it was"
    )


def _fetch(connection: Redis, job_ids: list[str]) -> list[CatalogJob | None]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(CatalogJob.key_for(job_id))
        hashes = pipe.execute()
    jobs: list[CatalogJob | None] = []
    for job_id, raw in zip(job_ids, hashes, strict=True):
        if not raw:
            jobs.append(None)
            continue
        job = CatalogJob(job_id, connection=connection)
        job.restore(raw)
        jobs.append(job)
    return jobs


def _still_failed(job: CatalogJob, until: datetime | None) -> bool:
    if job.get_status(refresh=False) != JobStatus.FAILED:
        return False
    return until is None or (job.ended_at is not None and job.ended_at <= until)


def _failed(job_id: str, connection: Redis) -> CatalogJob:
    job = fetch_job(job_id, connection)
    if job.get_status(refresh=False) != JobStatus.FAILED:
        raise JobStateError(f"job {job_id} is {job.get_status(refresh=False).value}, not failed")
    return job


def cancel(job_id: str, connection: Redis) -> CatalogJob:
    """Cancel a job that has not started; it stays visible in the canceled jobs."""
    job = fetch_job(job_id, connection)
    status = job.get_status(refresh=False)
    if status not in CANCELLABLE:
        raise JobStateError(f"job {job_id} is {status.value}; only queued, scheduled or deferred jobs can be cancelled")
    from taskctl.rqscheduler import Scheduler

    # A delayed job also sits in rq-scheduler's set, which would enqueue it regardless.
    connection.zrem(Scheduler.scheduled_jobs_key, job.id)
    job.cancel()
    return job
