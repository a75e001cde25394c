"""The one path from (job name, arguments) to a job in Redis.

The CLI, the Python API, workflows and web applications all come through here,
so a job is validated, routed and stored the same way whichever door it came in
by. A call is first *prepared* (every check, no Redis), then *submitted*: a
refused call leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from redis import Redis
from rq import Retry
from rq.exceptions import DuplicateJobError as RQDuplicateJobError
from rq.job import JOB_ID_PATTERN

from taskctl.catalog import CatalogEntry, get_catalog
from taskctl.connection import REDIS_DOWN_ERRORS, connect, unavailable
from taskctl.exceptions import DuplicateJobError, InvalidArgumentsError, InvalidQueueError, RedisUnavailableError
from taskctl.handle import JobHandle
from taskctl.retry import make_retry
from taskctl.rqclasses import CatalogJob, Queue
from taskctl.settings import Settings, get_settings
from taskctl.when import due_time

JobRef = str | Callable[..., Any]


@dataclass(frozen=True)
class Prepared:
    """A call that passed every check, with every option resolved: ready for Redis."""

    entry: CatalogEntry
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    timeout: int
    retry: Retry | None
    job_id: str | None = None
    unique: bool = False
    due: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return describe(self.entry, self.args, self.kwargs)


def prepare(
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
) -> Prepared:
    """Check a call and resolve its options, without Redis.

    Unset options come from the job's declaration, then from the settings.
    Raises UnknownJobError, InvalidArgumentsError or InvalidQueueError.
    """
    settings = settings or get_settings()
    entry = get_catalog().get(job)
    kwargs = dict(kwargs or {})
    entry.bind(args, kwargs)
    if unique and not job_id:
        raise InvalidArgumentsError("unique needs a job id: the id is what makes the job unique")
    if job_id is not None and not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidArgumentsError(f"job id {job_id!r} may use only letters, digits, '_' and '-'")
    return Prepared(
        entry=entry,
        args=list(args),
        kwargs=kwargs,
        queue=resolve_queue(entry, queue, settings),
        timeout=resolve_timeout(entry, job_timeout, settings),
        retry=make_retry(entry, retries, backoff, settings),
        job_id=job_id,
        unique=unique,
        due=due_time(at, delay, settings.tz, settings.past_tolerance),
    )


def enqueue(job: JobRef, *args: Any, **kwargs: Any) -> JobHandle:
    """Enqueue a catalog job with its declared options: ``enqueue("send_email", to, subject, body)``.

    Every keyword goes to the job; use :func:`enqueue_call` for options.
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
) -> JobHandle:
    """Validate a call to a catalog job and put it on its queue.

    With ``unique``, a job whose ``job_id`` exists already is refused
    (DuplicateJobError); without it, RQ replaces the existing job. With ``at``
    (a time; without an offset, in the configured zone) or ``delay``, the job is
    handed to rq-scheduler, which puts it on its queue when it is due. Raises
    the errors of :func:`prepare` before touching Redis, and
    RedisUnavailableError when Redis does not answer.
    """
    settings = settings or get_settings()
    prepared = prepare(
        job, args, kwargs, queue=queue, job_timeout=job_timeout, retries=retries, backoff=backoff,
        job_id=job_id, unique=unique, at=at, delay=delay, settings=settings,
    )  # fmt: skip
    return submit(prepared, connection or connect(settings), settings)


def submit(
    prepared: Prepared,
    connection: Redis,
    settings: Settings | None = None,
    depends_on: Sequence[str] | None = None,
) -> JobHandle:
    """Put a prepared call into Redis: on its queue, deferred behind ``depends_on``, or with rq-scheduler."""
    settings = settings or get_settings()
    try:
        if prepared.due is not None:
            return JobHandle(_schedule(prepared, connection, settings))
        job = Queue(prepared.queue, connection=connection).enqueue_call(
            prepared.entry.func,
            args=prepared.args,
            kwargs=prepared.kwargs,
            timeout=prepared.timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            description=prepared.description,
            job_id=prepared.job_id,
            retry=prepared.retry,
            unique=prepared.unique,
            depends_on=list(depends_on) if depends_on else None,
            meta=prepared.meta or None,
        )
        confirm_replicated(connection, settings)
    except RQDuplicateJobError:
        raise DuplicateJobError(f"a job with id {prepared.job_id!r} exists already; not enqueued (unique)") from None
    except REDIS_DOWN_ERRORS as exc:
        raise unavailable(settings.redis_url, exc) from None
    assert isinstance(job, CatalogJob)
    return JobHandle(job)


def confirm_replicated(connection: Redis, settings: Settings, timeout_ms: int = 5000) -> None:
    """With TASKCTL_REPLICA_ACKS, an enqueue counts only once that many replicas have it.

    A failover promotes a replica; what the old master had not passed on yet is lost.
    Waiting for the replicas turns that silent loss into an error the caller sees.
    """
    if settings.replica_acks <= 0:
        return
    acked = int(connection.wait(settings.replica_acks, timeout_ms))
    if acked < settings.replica_acks:
        raise RedisUnavailableError(
            f"only {acked} of {settings.replica_acks} replicas of {settings.redis_url_masked} confirmed the "
            "enqueue; it may be lost in a failover: retry it"
        )


def enqueue_many(
    calls: Iterable[Prepared],
    connection: Redis | None = None,
    settings: Settings | None = None,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Enqueue prepared calls in pipelined batches: one round trip per batch instead of two per job.

    The calls are checked already (see :func:`prepare`); a delay, a dependency or
    ``unique`` is not batched here. Returns the job ids, in order; ``progress``
    is told how many were enqueued after each batch.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    ids: list[str] = []
    try:
        for batch in _batches(iter(calls), batch_size):
            with connection.pipeline() as pipeline:
                for name in sorted({call.queue for call in batch}):
                    queue = Queue(name, connection=connection)
                    queue.wake_on_push = False
                    datas = [rq_data(call, settings) for call in batch if call.queue == name]
                    queue.enqueue_many(datas, pipeline=pipeline)
                    queue.wake(pipeline, len(datas))
                pipeline.execute()
            confirm_replicated(connection, settings)
            ids.extend(call.job_id or "" for call in batch)
            if progress:
                progress(len(batch))
    except REDIS_DOWN_ERRORS as exc:
        raise unavailable(settings.redis_url, exc) from None
    return ids


def _batches(calls: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    while batch := list(islice(calls, size)):
        for call in batch:
            if call.due is not None or call.unique:
                raise InvalidArgumentsError("bulk enqueue takes neither delays nor unique jobs")
        yield [with_id(c) for c in batch]


def with_id(call: Prepared) -> Prepared:
    """Give the call its id now, so that jobs can be matched to calls (and returned in their order)."""
    from uuid import uuid4

    return call if call.job_id else replace(call, job_id=str(uuid4()))


def rq_data(call: Prepared, settings: Settings) -> Any:
    """RQ's EnqueueData for a prepared call (for Queue.enqueue_many and Group.enqueue_many)."""
    return Queue.prepare_data(
        call.entry.func,
        args=call.args,
        kwargs=call.kwargs,
        timeout=call.timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        description=call.description,
        job_id=call.job_id,
        retry=call.retry,
        meta=call.meta or None,
    )


def _schedule(prepared: Prepared, connection: Redis, settings: Settings) -> CatalogJob:
    from taskctl.scheduler import make_scheduler

    assert prepared.due is not None
    job_id = prepared.job_id
    if prepared.unique and job_id and connection.exists(CatalogJob.redis_job_namespace_prefix + job_id):
        raise RQDuplicateJobError(job_id)
    # rq-scheduler keeps whole seconds, rounding down: round up, so a job never runs early.
    due = prepared.due
    due = due.replace(microsecond=0) + timedelta(seconds=1) if due.microsecond else due
    job: CatalogJob = make_scheduler(settings, connection).schedule(
        due,
        prepared.entry.func,
        args=prepared.args,
        kwargs=prepared.kwargs,
        result_ttl=settings.result_ttl,
        timeout=prepared.timeout,
        id=job_id,
        description=prepared.description,
        queue_name=prepared.queue,
    )
    # rq-scheduler knows nothing of these; the job is not due yet, so saving again is safe.
    job.failure_ttl = settings.failure_ttl
    if prepared.retry is not None:
        job.retries_left, job.retry_intervals = prepared.retry.max, prepared.retry.intervals
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
