"""The one path from (job name, arguments) to a job in Redis.

The CLI, the Python API and web applications all come through here, so a job is
validated, routed and stored the same way whichever door it came in by. Every
check runs before the first Redis command: a refused call leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from rq import Retry
from rq.exceptions import DuplicateJobError as RQDuplicateJobError
from rq.job import JOB_ID_PATTERN

from taskctl.catalog import CatalogEntry, get_catalog
from taskctl.connection import REDIS_DOWN_ERRORS, connect, unavailable
from taskctl.exceptions import DuplicateJobError, InvalidArgumentsError, InvalidQueueError
from taskctl.retry import make_retry
from taskctl.rqclasses import CatalogJob, Queue
from taskctl.settings import Settings, get_settings
from taskctl.when import due_time

JobRef = str | Callable[..., Any]


def enqueue(job: JobRef, *args: Any, **kwargs: Any) -> CatalogJob:
    """Enqueue a catalog job with its declared queue and timeout: ``enqueue("send_email", to, subject, body)``.

    Every keyword goes to the job; use :func:`enqueue_call` to choose a queue or a timeout.
    """
    return enqueue_call(job, args, kwargs)


def enqueue_call(
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
    connection: Redis | None = None,
    settings: Settings | None = None,
) -> CatalogJob:
    """Validate a call to a catalog job and put it on its queue.

    Unset options come from the job's declaration, then from the settings.
    With ``unique``, a job whose ``job_id`` exists already is refused
    (DuplicateJobError); without it, RQ replaces the existing job. With ``at``
    (a time; without an offset, in the configured zone) or ``delay``, the job is
    handed to rq-scheduler, which puts it on its queue when it is due.
    Raises UnknownJobError, InvalidArgumentsError or InvalidQueueError before
    touching Redis, and RedisUnavailableError when Redis does not answer.
    """
    settings = settings or get_settings()
    entry = get_catalog().get(job)
    kwargs = dict(kwargs or {})
    entry.bind(args, kwargs)
    queue_name = resolve_queue(entry, queue, settings)
    timeout = resolve_timeout(entry, job_timeout, settings)
    retry = make_retry(entry, retries, backoff, settings)
    if unique and not job_id:
        raise InvalidArgumentsError("unique needs a job id: the id is what makes the job unique")
    if job_id is not None and not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidArgumentsError(f"job id {job_id!r} may use only letters, digits, '_' and '-'")
    due = due_time(at, delay, settings.tz, settings.past_tolerance)
    connection = connection or connect(settings)
    try:
        if due is not None:
            return _schedule(entry, args, kwargs, due, queue_name, timeout, retry, job_id, unique, connection, settings)
        return Queue(queue_name, connection=connection).enqueue_call(  # type: ignore[return-value]
            entry.func,
            args=list(args),
            kwargs=kwargs,
            timeout=timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            description=describe(entry, args, kwargs),
            job_id=job_id,
            retry=retry,
            unique=unique,
        )
    except RQDuplicateJobError:
        raise DuplicateJobError(f"a job with id {job_id!r} exists already; not enqueued (unique)") from None
    except REDIS_DOWN_ERRORS as exc:
        raise unavailable(settings.redis_url, exc) from None


def _schedule(
    entry: CatalogEntry,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    due: datetime,
    queue_name: str,
    timeout: int,
    retry: Retry | None,
    job_id: str | None,
    unique: bool,
    connection: Redis,
    settings: Settings,
) -> CatalogJob:
    from taskctl.scheduler import make_scheduler

    if unique and job_id and connection.exists(CatalogJob.redis_job_namespace_prefix + job_id):
        raise RQDuplicateJobError(job_id)
    # rq-scheduler keeps whole seconds, rounding down: round up, so a job never runs early.
    due = due.replace(microsecond=0) + timedelta(seconds=1) if due.microsecond else due
    job: CatalogJob = make_scheduler(settings, connection).schedule(
        due,
        entry.func,
        args=list(args),
        kwargs=kwargs,
        result_ttl=settings.result_ttl,
        timeout=timeout,
        id=job_id,
        description=describe(entry, args, kwargs),
        queue_name=queue_name,
    )
    # rq-scheduler knows nothing of these; the job is not due yet, so saving again is safe.
    job.failure_ttl = settings.failure_ttl
    if retry is not None:
        job.retries_left, job.retry_intervals = retry.max, retry.intervals
    job.save()
    return job


def resolve_queue(entry: CatalogEntry, queue: str | None, settings: Settings) -> str:
    name = queue or entry.spec.queue or settings.default_queue
    if name not in settings.queues:
        source = "" if queue else f" (declared by {entry.name})"
        raise InvalidQueueError(f"unknown queue {name!r}{source}; expected one of: {', '.join(settings.queues)}")
    return name


def resolve_timeout(entry: CatalogEntry, job_timeout: int | None, settings: Settings) -> int:
    if job_timeout is not None and job_timeout <= 0:
        raise InvalidArgumentsError(f"job_timeout must be a positive number of seconds, got {job_timeout}")
    return job_timeout or entry.spec.timeout or settings.job_timeout


def describe(entry: CatalogEntry, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The call as a person would write it, with the catalog name: shown by the dashboard and `rq info`."""
    words = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{entry.name}({', '.join(words)})"
