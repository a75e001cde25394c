"""Failed jobs as something to operate on: list them, read why, requeue or delete them, cancel.

Built on RQ's FailedJobRegistry of each configured queue; every operation names
the jobs it could not act on instead of skipping them silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from rq.exceptions import InvalidJobOperation
from rq.job import JobStatus

from taskctl.exceptions import InvalidQueueError, JobStateError, NoSuchJobError
from taskctl.rqclasses import FAILED_RUNS, CatalogJob, Queue
from taskctl.settings import Settings
from taskctl.status import fetch_job, full_error, job_name, last_line

#: States from which a job can still be cancelled: it has not started.
CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})


@dataclass(frozen=True)
class FailedJob:
    id: str
    queue: str
    name: str
    description: str
    error: str
    attempts: int
    failed_at: datetime | None


def _queues(settings: Settings, queue: str | None) -> list[str]:
    if queue is None:
        return list(settings.queues)
    if queue not in settings.queues:
        raise InvalidQueueError(f"unknown queue {queue!r}; expected one of: {', '.join(settings.queues)}")
    return [queue]


def failed_job_ids(connection: Redis, settings: Settings, queue: str | None = None) -> list[tuple[str, str]]:
    """(queue, job id) of every failed job, newest first within each queue."""
    return [
        (name, job_id)
        for name in _queues(settings, queue)
        for job_id in Queue(name, connection=connection).failed_job_registry.get_job_ids(desc=True)
    ]


def list_failed(connection: Redis, settings: Settings, queue: str | None = None) -> list[FailedJob]:
    found = []
    for queue_name, job_id in failed_job_ids(connection, settings, queue):
        try:
            job = fetch_job(job_id, connection)
        except NoSuchJobError:
            continue  # expired between the registry read and the fetch
        found.append(
            FailedJob(
                id=job.id,
                queue=queue_name,
                name=job_name(job),
                description=job.description or "",
                error=last_line(full_error(job)),
                attempts=int(job.meta.get(FAILED_RUNS, 1)),
                failed_at=job.ended_at,
            )
        )
    return found


def _failed(job_id: str, connection: Redis) -> CatalogJob:
    job = fetch_job(job_id, connection)
    if job.get_status(refresh=False) != JobStatus.FAILED:
        raise JobStateError(f"job {job_id} is {job.get_status(refresh=False).value}, not failed")
    return job


def requeue(job_ids: Iterable[str], connection: Redis) -> list[str]:
    """Put failed jobs back on their queues, with their retry policy spent: one more try each."""
    requeued = []
    for job_id in job_ids:
        job = _failed(job_id, connection)
        try:
            Queue(job.origin, connection=connection).failed_job_registry.requeue(job)
        except InvalidJobOperation:
            raise JobStateError(f"job {job_id} is no longer in the failed jobs of queue {job.origin}") from None
        requeued.append(job_id)
    return requeued


def delete(job_ids: Iterable[str], connection: Redis) -> list[str]:
    deleted = []
    for job_id in job_ids:
        _failed(job_id, connection).delete()
        deleted.append(job_id)
    return deleted


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
