"""A job's state as people ask about it: where is it, when did it run, what came of it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError as RQNoSuchJobError
from rq.job import JobStatus
from rq.results import Result

from taskctl.catalog import get_catalog
from taskctl.exceptions import JobFailedError, NoResultError, NoSuchJobError, UnreadableJobError, WaitTimeoutError
from taskctl.limits import waiting_for
from taskctl.rqclasses import CANCELED_BECAUSE, FAILED_RUNS, CatalogJob, Queue

#: What is shown for a job whose data is not JSON (written into Redis by something else).
UNREADABLE = "(unreadable job data: not JSON)"
#: States a job does not leave by itself.
FINAL_STATES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})
#: States whose current run has not been counted as a failed run.
SUCCESS_OR_RUNNING = frozenset({JobStatus.STARTED, JobStatus.FINISHED})


def fetch_job(job_id: str, connection: Redis) -> CatalogJob:
    try:
        job = CatalogJob.fetch(job_id, connection=connection)
    except RQNoSuchJobError:
        raise NoSuchJobError(f"no job with id {job_id!r} (never enqueued, or expired after its TTL)") from None
    assert isinstance(job, CatalogJob)
    return job


def job_name(job: CatalogJob) -> str:
    """The catalog name of the job's function, or its raw path when it is not a catalog job."""
    try:
        path = job.func_name or "?"
    except UnreadableJobError:
        return UNREADABLE
    entry = get_catalog().by_path(path)
    return entry.name if entry else path


@dataclass(frozen=True)
class JobReport:
    id: str
    name: str
    description: str
    queue: str
    status: str
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    worker: str | None
    attempts: int
    """Runs so far (a retry waiting to run is not counted yet)."""
    run: int
    """The fencing token of the latest run a taskctl worker started (0: none yet); see taskctl.fencing."""
    retries_left: int
    scheduled_for: datetime | None
    """When a scheduled job (delayed, periodic, or a retry waiting out its backoff) is due."""
    progress: dict[str, Any] | None
    """What a long job last said of its progress: done, total, message."""
    error: str | None
    """The last line of the last failure's traceback: the exception and its message."""
    waiting_for: str | None = None
    """For a job held back by its concurrency limit: the limit, and its place in line."""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES


def report(job: CatalogJob) -> JobReport:
    job.refresh()  # type: ignore[no-untyped-call]  # one HGETALL: status, timestamps, meta as they are now
    status = job.get_status(refresh=False)
    error = last_line(full_error(job)) or None
    if error is None and status == JobStatus.CANCELED and job.meta.get(CANCELED_BECAUSE):
        error = f"canceled: {job.meta[CANCELED_BECAUSE]}"
    return JobReport(
        id=job.id,
        name=job_name(job),
        description=job.description or "",
        queue=job.origin,
        status=str(status.value if status else "unknown"),
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        worker=job.worker_name,
        attempts=int(job.meta.get(FAILED_RUNS, 0)) + (1 if status in SUCCESS_OR_RUNNING else 0),
        run=job.taskctl_runs,
        retries_left=job.retries_left or 0,
        scheduled_for=scheduled_for(job) if status == JobStatus.SCHEDULED else None,
        progress=job.meta.get("progress") if isinstance(job.meta.get("progress"), dict) else None,
        error=error,
        waiting_for=waiting_for(job) if status == JobStatus.RATE_LIMITED else None,
    )


def full_error(job: CatalogJob) -> str:
    """The traceback of the job's last failure, as the worker recorded it ("" when it has none)."""
    latest = job.latest_result()
    if latest is None or latest.type != Result.Type.FAILED or not latest.exc_string:
        return ""
    return str(latest.exc_string).rstrip()


def last_line(traceback: str) -> str:
    """The exception and its message: the line a person reads first."""
    return traceback.strip().splitlines()[-1] if traceback.strip() else ""


def scheduled_for(job: CatalogJob) -> datetime | None:
    """When rq-scheduler (delays, periodic jobs) or RQ's scheduler (retry backoff) will enqueue the job."""
    from taskctl.rqscheduler import Scheduler

    score: float | None = job.connection.zscore(Scheduler.scheduled_jobs_key, job.id)
    if score is not None:
        return datetime.fromtimestamp(score, UTC)
    try:
        due: datetime = Queue(job.origin, connection=job.connection).scheduled_job_registry.get_scheduled_time(job)
    except RQNoSuchJobError:
        return None
    return due


def result_of(job: CatalogJob) -> Any:
    """The return value of a finished job; NoResultError (or JobFailedError) says why there is none."""
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return job.return_value(refresh=True)
    if status == JobStatus.FAILED:
        raise JobFailedError(f"job {job.id} failed: {last_line(full_error(job)) or 'no error recorded'}")
    raise NoResultError(f"job {job.id} is {status.value if status else 'in an unknown state'}; it has no result yet")


def wait_for(job: CatalogJob, timeout: float, poll_interval: float = 0.1) -> JobReport:
    """Block until the job reaches a final state, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current = report(job)
        if current.is_final:
            return current
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"job {job.id} is still {current.status} after {timeout:g}s; "
                f"it goes on in the background (check it with: taskctl status {job.id})"
            )
        time.sleep(poll_interval)
