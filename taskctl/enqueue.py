"""The one path from (job name, arguments) to a job in Redis.

The CLI, the Python API, workflows and web applications all come through here,
so a job is validated, routed and stored the same way whichever door it came in
by. A call is first *prepared* (every check, no Redis), then *submitted*: a
refused call leaves nothing behind.

A job goes into Redis in one round trip, unless it waits on others. RQ builds
it (``Queue.create_job``, rq-scheduler's ``_create_job``) and decides every field
of its hash (``Job.to_dict``, written by ``Job.save``); the writes around it are
queued on one pipeline (see :func:`_enqueue_now`) where RQ's own
``Queue.enqueue_call`` would spend three round trips on them: the queue's
registration in a pipeline of its own, INFO once per client (its answer is not
stored), then the job. With ``unique`` the same writes run in one Lua script
that first checks that the id is free (RQ's own unique script pushes the job
without a wake-up token and after a separate registration). Jobs with
dependencies go through RQ's ``enqueue_call``: it WATCHes the dependencies and
retries, which no single write can replace.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any
from uuid import uuid4

from redis import Redis
from redis.client import Pipeline
from rq import RateLimit, Retry
from rq.exceptions import DuplicateJobError as RQDuplicateJobError
from rq.job import JOB_ID_PATTERN, Job
from rq.utils import now

from taskctl.catalog import CatalogEntry, get_catalog
from taskctl.connection import NO_REDIS_ERRORS, REDIS_DOWN_ERRORS, connect, lua, unavailable
from taskctl.exceptions import DuplicateJobError, InvalidArgumentsError, InvalidQueueError, RedisUnavailableError
from taskctl.handle import JobHandle
from taskctl.limits import concurrency_limit, rate_limit
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
    rate_limit: RateLimit | None = None
    rate: str | None = None
    """The job's rate limit as its hash holds it (taskctl.rates)."""

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
    concurrency: int | None = None,
    rate: str | None = None,
    settings: Settings | None = None,
) -> Prepared:
    """Check a call and resolve its options, without Redis.

    Unset options come from the job's declaration, then from the settings
    (``concurrency``: the settings' TASKCTL_CONCURRENCY first, then the declaration).
    Raises UnknownJobError, InvalidArgumentsError or InvalidQueueError.
    """
    settings = settings or get_settings()
    entry = get_catalog().get(job)
    kwargs = dict(kwargs or {})
    bound = entry.bind(args, kwargs)
    limit = concurrency_limit(entry, bound, concurrency, settings)
    rate_field = rate_limit(entry, bound, rate, settings)
    if limit is not None and rate_field is not None:
        raise InvalidArgumentsError(f"{entry.name}: a job takes a concurrency limit or a rate limit, not both (yet)")
    if unique and not job_id:
        raise InvalidArgumentsError("unique needs a job id: the id is what makes the job unique")
    if unique and limit is not None:
        raise InvalidArgumentsError(
            f"{entry.name}: unique and a concurrency limit do not go together (RQ refuses them); drop one"
        )
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
        rate_limit=limit,
        rate=rate_field,
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
    concurrency: int | None = None,
    rate: str | None = None,
    connection: Redis | None = None,
    settings: Settings | None = None,
) -> JobHandle:
    """Validate a call to a catalog job and put it on its queue.

    With ``unique``, a job whose ``job_id`` exists already is refused
    (DuplicateJobError); without it, RQ replaces the existing job. With ``at``
    (a time; without an offset, in the configured zone) or ``delay``, the job is
    handed to rq-scheduler, which puts it on its queue when it is due. With
    ``concurrency``, at most that many of the job (per its ``concurrency_key``)
    are queued or running at once; the others wait their turn. With ``rate``
    (``"20/s"``), at most that many start per period. Raises
    the errors of :func:`prepare` before touching Redis, and
    RedisUnavailableError when Redis does not answer.
    """
    settings = settings or get_settings()
    prepared = prepare(
        job, args, kwargs, queue=queue, job_timeout=job_timeout, retries=retries, backoff=backoff,
        job_id=job_id, unique=unique, at=at, delay=delay, concurrency=concurrency, rate=rate,
        settings=settings,
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
    job: Job
    if depends_on and prepared.rate is not None:
        raise InvalidArgumentsError(f"{prepared.entry.name}: a job with a rate limit cannot wait on other jobs (yet)")
    try:
        if depends_on and prepared.due is None:
            job = Queue(prepared.queue, connection=connection).enqueue_call(
                prepared.entry.func,
                job_id=prepared.job_id,
                unique=prepared.unique,
                depends_on=list(depends_on),
                **rq_options(prepared, settings),
            )
        else:
            pipeline = connection.pipeline()
            job = queue_writes(prepared, connection, settings, pipeline)
            _write(pipeline, job, prepared.unique)
        confirm_replicated(connection, settings)
    except RQDuplicateJobError:
        raise DuplicateJobError(f"a job with id {prepared.job_id!r} exists already; not enqueued (unique)") from None
    except NO_REDIS_ERRORS as exc:
        # Nothing may have checked the server before this (see one_command_client).
        raise unavailable(settings.redis_url, exc) from None
    assert isinstance(job, CatalogJob)
    return JobHandle(job)


def queue_writes(prepared: Prepared, connection: Redis, settings: Settings, pipeline: Pipeline) -> CatalogJob:
    """Queue on ``pipeline`` the writes of a job without dependencies: on its queue, or to rq-scheduler if due later.

    Sent by :func:`submit` in one round trip; the outbox relay queues its delayed and unique rows' on its own.
    """
    if prepared.due is not None:
        return _schedule(prepared, connection, settings, pipeline)
    return _enqueue_now(prepared, connection, settings, pipeline)


def _enqueue_now(prepared: Prepared, connection: Redis, settings: Settings, pipeline: Pipeline) -> CatalogJob:
    """Queue a job's writes for its queue, as RQ's ``Queue.enqueue_call`` writes them.

    Those writes, in RQ's order: the queue's registration (``rq:queues``, which
    `rq info` and the dashboard list), the job's hash with its status and expiry
    (``Job.save``, ``Job.cleanup``), the push with its wake-up token
    (``Queue.push_job_id``). RQ's ``enqueue_call`` takes a pipeline for them, but
    still asks the server its version (INFO) first, for an attribute of the job
    object that no field of the hash holds, once per client: once per
    `taskctl enqueue`. So RQ's ``_prepare_for_queue`` is replaced by the one
    thing it adds to what ``create_job`` made, the enqueue time; and its HSET of
    the status alone is left out, as the save that follows it writes the status.
    """
    queue = Queue(prepared.queue, connection=connection)
    job = queue.create_job(prepared.entry.func, job_id=prepared.job_id, **rq_options(prepared, settings))
    job.enqueued_at = now()
    assert isinstance(job, CatalogJob)
    job.taskctl_rate = prepared.rate
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    if job.has_rate_limit:
        # RQ's writes of a limited job, in the same round trip: saved as waiting, then let
        # into its queue at once if its limit has room (a script); RQ asks INFO first.
        queue._enqueue_rate_limited_job(job, pipeline=pipeline)
        queue.wake(pipeline, 1)
        assert isinstance(job, CatalogJob)
        return job
    job.save(pipeline=pipeline)
    job.cleanup(ttl=job.ttl, pipeline=pipeline)
    queue.push_job_id(job.id, pipeline=pipeline)
    assert isinstance(job, CatalogJob)
    return job


#: Run the writes given, unless KEYS[1] (a job's hash) exists: ``unique`` in one step. ARGV: each
#: write as its number of words, then the words, as a pipeline would have sent them.
WRITE_IF_NEW_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local at = 1
while at <= #ARGV do
    local words = tonumber(ARGV[at])
    redis.call(unpack(ARGV, at + 1, at + words))
    at = at + words + 1
end
return 1
"""


def _write(pipeline: Pipeline, job: Job, unique: bool) -> None:
    """Send the writes queued on ``pipeline`` in one round trip; with ``unique``, only if the job's id is free.

    The unique case replays the very commands queued, so that a unique job is
    written exactly as any other; a transaction cannot refuse on a condition it
    reads, and WATCH would cost two more round trips. RQDuplicateJobError when
    the id is taken: nothing was written.
    """
    if not unique:
        pipeline.execute()
        return
    words: list[Any] = []
    for command, _options in pipeline.command_stack:
        words += [len(command), *command]
    pipeline.reset()
    connection = job.connection
    if not lua(connection, WRITE_IF_NEW_SCRIPT)(keys=[job.key], args=words, client=connection):
        raise RQDuplicateJobError(job.id)


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
    """Enqueue prepared calls in batches, one transaction each: the jobs RQ's ``Queue.enqueue_many`` would write.

    Building each job with RQ costs more than storing it, and most of a job's
    hash is the same for every call of a job: see :func:`_save_jobs`. The calls
    are checked already (see :func:`prepare`); a delay, a dependency or
    ``unique`` is not batched here. Returns the job ids, in order; ``progress``
    is told how many were enqueued after each batch.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    ids: list[str] = []

    try:
        for batch in _batches(iter(calls), batch_size):
            batch_ids = [call.job_id or str(uuid4()) for call in batch]
            with batch_pipeline(connection, batch, batch_ids, settings) as pipeline:
                pipeline.execute()
            confirm_replicated(connection, settings)
            ids.extend(batch_ids)
            if progress:
                progress(len(batch_ids))
    except REDIS_DOWN_ERRORS as exc:
        raise unavailable(settings.redis_url, exc) from None
    return ids


def batch_pipeline(
    connection: Redis, batch: list[Prepared], batch_ids: list[str], settings: Settings, pipeline: Pipeline | None = None
) -> Pipeline:
    """One transaction with a batch's jobs, as RQ's enqueue_many writes them, and one push per queue.

    Queued on ``pipeline`` when one is given (the outbox relay's, which adds its own writes).
    """
    pipeline = pipeline if pipeline is not None else connection.pipeline()
    for name in sorted({call.queue for call in batch}):
        queue = Queue(name, connection=connection)
        mine = [(job_id, call) for job_id, call in zip(batch_ids, batch, strict=True) if call.queue == name]
        # A limited job is written one by one, in the same transaction: a concurrency limit lets it into its
        # queue (RQ's script), and a rate limit's field is its own (per key).
        for job_id, call in mine:
            if call.rate_limit is not None or call.rate is not None:
                _enqueue_now(replace(call, job_id=job_id), connection, settings, pipeline)
        mine = [(job_id, call) for job_id, call in mine if call.rate_limit is None and call.rate is None]
        if not mine:
            continue
        shapes: dict[tuple[Any, ...], list[tuple[str, Prepared]]] = {}
        for job_id, call in mine:
            shapes.setdefault(_shape(call), []).append((job_id, call))
        for members in shapes.values():
            _save_jobs(queue, members, settings, pipeline)
        pipeline.sadd(queue.redis_queues_keys, queue.key)
        pipeline.rpush(queue.key, *(job_id for job_id, _ in mine))
        queue.wake(pipeline, len(mine))
    return pipeline


def _batches(calls: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    while batch := list(islice(calls, size)):
        given: set[str] = set()
        for call in batch:
            if call.due is not None or call.unique:
                raise InvalidArgumentsError("bulk enqueue takes neither delays nor unique jobs")
            if call.job_id is not None:
                # As RQ's enqueue_many: the second would overwrite the first.
                if call.job_id in given:
                    raise ValueError(f"Job ID '{call.job_id}' appears more than once in enqueue_many()")
                given.add(call.job_id)
        yield batch


#: Sets the fields of many job hashes; those all the jobs share are sent once, not once per job.
#: KEYS[1]: a scratch key for those shared fields, deleted before the script ends; KEYS[2..]: the
#: job hashes. ARGV: n, then n items (the shared field/value pairs), m, then the m names of the
#: fields each job has its own value of, then those m values for each job, in KEYS order.
#: Each job hash starts as a COPY of the scratch hash (Redis 6.2+; a third of the work of
#: setting every field); where COPY is refused (older Redis, or the job's key exists, which
#: a given job id may), every field is set, as RQ's HSET would.
SAVE_JOBS_SCRIPT = """
local shared = tonumber(ARGV[1])
local own = tonumber(ARGV[shared + 2])
local template = {}
for i = 1, shared do template[i] = ARGV[i + 1] end
local fields = {}
for j = 1, own do fields[2 * j - 1] = ARGV[shared + 2 + j] end
redis.call('HSET', KEYS[1], unpack(template))
local at = shared + 2 + own
for i = 2, #KEYS do
    local key = KEYS[i]
    for j = 1, own do fields[2 * j] = ARGV[at + j] end
    at = at + own
    if redis.pcall('COPY', KEYS[1], key) ~= 1 then redis.call('HSET', key, unpack(template)) end
    redis.call('HSET', key, unpack(fields))
end
redis.call('DEL', KEYS[1])
return #KEYS - 1
"""
#: Redis 6.2 takes at most 1M arguments per command, and blocks other clients while a script runs.
JOBS_PER_SCRIPT = 1000


def _shape(call: Prepared) -> tuple[Any, ...]:
    """Whatever decides a job's hash besides its own fields (see :func:`_own_fields`): calls alike share a template."""
    retry = call.retry and (call.retry.max, call.retry.enqueue_at_front)
    return call.entry.func, call.timeout, retry, json.dumps(call.meta) if call.meta else ""


def _own_fields(job: Job, call: Prepared) -> dict[str, Any]:
    """The fields of a call's job hash that differ between calls of one shape, as RQ's ``Job.to_dict`` has them."""
    job.args, job.kwargs = call.args, call.kwargs  # RQ builds the job's data from these
    own = {"data": zlib.compress(job.data), "description": call.description}
    if call.retry is not None:
        # Drawn anew for each call; whole seconds, written as json.dumps writes them, at a third of its cost.
        own["retry_intervals"] = f"[{', '.join(map(str, call.retry.intervals))}]"
    return own


def _save_jobs(queue: Queue, members: list[tuple[str, Prepared]], settings: Settings, pipeline: Pipeline) -> None:
    """Queue the writes of the hashes of calls of one shape, as ``Queue.enqueue_many`` would write them.

    RQ stays the authority on the hash: it builds the first call's job, the
    way its enqueue_many does, and every field but the calls' own comes from
    that job (so the jobs of a batch share their created_at and enqueued_at).
    """
    first = members[0][1]
    job = queue.create_job(first.entry.func, **rq_options(first, settings))
    queue._prepare_for_queue(job)
    template = job.to_dict()
    names = list(_own_fields(job, first))
    shared = [item for name, value in template.items() if name not in names for item in (name, value)]
    save_jobs = lua(queue.connection, SAVE_JOBS_SCRIPT)
    for start in range(0, len(members), JOBS_PER_SCRIPT):
        chunk = members[start : start + JOBS_PER_SCRIPT]
        values = [value for _, call in chunk for value in _own_fields(job, call).values()]
        save_jobs(
            keys=[f"{queue.key}:bulk:{uuid4().hex}", *(CatalogJob.key_for(job_id) for job_id, _ in chunk)],
            args=[len(shared), *shared, len(names), *names, *values],
            client=pipeline,
        )


def with_id(call: Prepared) -> Prepared:
    """Give the call its id now, so that jobs can be matched to calls (and returned in their order)."""
    return call if call.job_id else replace(call, job_id=str(uuid4()))


def rq_data(call: Prepared, settings: Settings) -> Any:
    """RQ's EnqueueData for a prepared call (for Queue.enqueue_many and Group.enqueue_many).

    RQ's EnqueueData carries no rate limit: a limited job in a group is refused, not run unlimited.
    """
    if call.rate_limit is not None or call.rate is not None:
        raise InvalidArgumentsError(f"{call.entry.name}: a job with a limit cannot be part of a group (yet)")
    options = rq_options(call, settings)
    del options["rate_limit"]
    return Queue.prepare_data(call.entry.func, job_id=call.job_id, **options)


def rq_options(call: Prepared, settings: Settings) -> dict[str, Any]:
    """A prepared call as the keyword arguments every RQ door takes (enqueue_call, create_job, prepare_data)."""
    return {
        "args": call.args, "kwargs": call.kwargs, "timeout": call.timeout,
        "result_ttl": resolve_result_ttl(call.entry, settings),
        "failure_ttl": settings.failure_ttl, "description": call.description, "retry": call.retry,
        "meta": call.meta or None, "rate_limit": call.rate_limit,
    }  # fmt: skip


def _schedule(prepared: Prepared, connection: Redis, settings: Settings, pipeline: Pipeline) -> CatalogJob:
    """Queue the writes that hand a job to rq-scheduler: the job's hash and its place in the schedule.

    rq-scheduler's ``schedule()`` is its ``_create_job`` (no Redis), ``Job.save``
    and a ZADD, each its own round trip; and it knows nothing of a failure TTL
    or retries, which would take another save. Its same steps, on one pipeline.
    """
    from rq_scheduler.utils import to_unix

    from taskctl.rqscheduler import make_scheduler

    assert prepared.due is not None
    scheduler = make_scheduler(settings, connection)
    job: CatalogJob = scheduler._create_job(
        prepared.entry.func,
        args=prepared.args,
        kwargs=prepared.kwargs,
        commit=False,
        result_ttl=resolve_result_ttl(prepared.entry, settings),
        id=prepared.job_id,
        description=prepared.description,
        queue_name=prepared.queue,
        timeout=prepared.timeout,
    )
    job.failure_ttl = settings.failure_ttl
    job.taskctl_rate = prepared.rate
    if prepared.rate_limit is not None:  # rq-scheduler's queue.enqueue_job then enqueues it RQ's limited way
        job.rate_limit_key, job.rate_limit_concurrency = prepared.rate_limit.key, prepared.rate_limit.concurrency
    if prepared.retry is not None:
        job.retries_left, job.retry_intervals = prepared.retry.max, prepared.retry.intervals
    # rq-scheduler keeps whole seconds, rounding down: round up, so a job never runs early.
    due = prepared.due
    due = due.replace(microsecond=0) + timedelta(seconds=1) if due.microsecond else due
    job.save(pipeline=pipeline)
    pipeline.zadd(scheduler.scheduled_jobs_key, {job.id: to_unix(due)})
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


def resolve_result_ttl(entry: CatalogEntry, settings: Settings) -> int:
    """The job's own declaration (``@job(result_ttl=0)`` keeps no result), else the settings'."""
    return settings.result_ttl if entry.spec.result_ttl is None else entry.spec.result_ttl


def describe(entry: CatalogEntry, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The call as a person would write it, with the catalog name: shown by the dashboard and `rq info`."""
    words = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{entry.name}({', '.join(words)})"
