"""The RQ classes taskctl plugs into RQ's seams.

A job in Redis is data anyone with Redis access can write. ``CatalogJob`` makes
sure that data can never name code to run: it reads and writes JSON only (never
pickle) and resolves its function through the job catalog, refusing anything
else before it is imported. ``Queue`` pins that job class, and dequeues without
a loss window (see ``Queue.dequeue_any``); the worker is in ``taskctl.worker``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import rq
import rq.utils
from redis import Redis
from rq.exceptions import DequeueTimeout, DeserializationError
from rq.intermediate_queue import IntermediateQueue
from rq.serializers import JSONSerializer
from rq.utils import as_text

from taskctl import rates
from taskctl.catalog import get_catalog
from taskctl.connection import lua
from taskctl.exceptions import JobNotAllowedError, LeaseLostError, PermanentError, UnreadableJobError
from taskctl.lease import TASKCTL_RUNS, LeaseRegistry, held
from taskctl.settings import get_settings

#: Failures that another try cannot fix: they go straight to the failed jobs.
NOT_RETRIED = (PermanentError, JobNotAllowedError, UnreadableJobError)
#: Job meta key counting the runs that raised (RQ keeps no count across retries).
FAILED_RUNS = "failed_runs"
#: Job meta key of a chord's callback: the group members whose results it receives first.
CHORD_SOURCES = "chord_sources"
#: Why a job whose data is not JSON is refused, wherever that is found.
UNREADABLE_DATA = "unreadable job data (not JSON): something other than taskctl wrote this job; it is never run"
#: What a job's meta reads as when it is not JSON (someone other than taskctl wrote it).
UNREADABLE_META = {"unreadable": "meta is not JSON: something other than taskctl wrote it"}
#: Job meta key saying why a job was canceled by taskctl (a step before it failed).
CANCELED_BECAUSE = "canceled_because"
#: Job meta key set when a failure spent all the job's retries at once (a permanent error).
RETRIES_WAIVED = "retries_waived"


#: The job hash's times, as RQ names them: (attribute, field) for a hash read with bytes keys.
_TIME_FIELDS = [(name, name.encode()) for name in ("created_at", "enqueued_at", "started_at", "ended_at",
                                                    "last_heartbeat")]  # fmt: skip


def parse_time(value: bytes) -> datetime:
    """What RQ's str_to_date gives, faster: RQ's own when fromisoformat cannot read it (an older format)."""
    try:
        return datetime.fromisoformat(value.decode()).replace(tzinfo=UTC)
    except ValueError:
        return rq.utils.str_to_date(value)


class CatalogJob(rq.job.Job):
    """A Job that speaks JSON and runs only catalog functions."""

    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        # Whatever serializer the caller passes (stock `rq worker` passes pickle),
        # job data is JSON: unpickling data from Redis would run code. Set after RQ's
        # __init__, whose check of a serializer against its Protocol costs 7 µs a job.
        super().__init__(id, connection=connection)
        self.serializer = JSONSerializer
        #: The runs taskctl's workers had started when the job was read (``retries_owed``).
        self.taskctl_runs = 0
        #: This run's fencing token (taskctl.fencing), once a taskctl worker started it.
        self.fencing_token = 0
        #: The execution (RQ's record of this run) whose lease every write of its outcome must hold.
        self.fenced_by: Any = None
        #: The job's rate limit as its hash holds it (taskctl.rates), or None.
        self.taskctl_rate: str | None = None

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        fields: dict[str, Any] = super().to_dict(include_meta, include_result)
        if self.taskctl_rate:
            fields[rates.RATE_FIELD] = self.taskctl_rate
        return fields

    @property
    def started_job_registry(self) -> LeaseRegistry:
        return LeaseRegistry(self.origin, connection=self.connection, job_class=type(self), serializer=self.serializer)

    def restore(self, raw_data: Any) -> Any:
        # RQ parses each time with strptime (5 µs each, two to five per job read); its
        # format is ISO 8601, which fromisoformat reads in a fortieth of that.
        times = [(name, key, raw_data.pop(key)) for name, key in _TIME_FIELDS if raw_data.get(key)]
        restored = super().restore(raw_data)
        for name, key, value in times:
            raw_data[key] = value  # the caller's hash as it was
            setattr(self, name, parse_time(value))
        if self._unreadable_meta is not None:
            # RQ keeps meta it cannot read as a placeholder holding the raw bytes, which it
            # writes back as they were; once taskctl adds to meta (a failed run's count),
            # that write fails and takes the worker down. Meta is JSON, or replaced by JSON.
            self.meta, self._unreadable_meta = dict(UNREADABLE_META), None
        runs = raw_data.get(TASKCTL_RUNS.encode(), raw_data.get(TASKCTL_RUNS))
        self.taskctl_runs = int(runs) if runs else 0
        rate = raw_data.get(rates.RATE_FIELD.encode(), raw_data.get(rates.RATE_FIELD))
        self.taskctl_rate = as_text(rate) if rate else None
        return restored

    def prepare_for_execution(self, worker_name: str, pipeline: Any) -> None:
        # In RQ's start-of-job pipeline: no round trip of its own.
        owed = retries_owed(self)
        if owed:
            self.retries_left = (self.retries_left or 0) + owed
            pipeline.hset(self.key, "retries_left", self.retries_left)
        super().prepare_for_execution(worker_name, pipeline)

    @property
    def func_name(self) -> str:
        # RQ reads the function's name from the job data wherever it needs it (even in
        # log lines); data that is not JSON is refused there, with a reason, and not retried.
        try:
            return str(super().func_name)
        except DeserializationError:
            raise UnreadableJobError(UNREADABLE_DATA) from None

    @func_name.setter
    def func_name(self, value: str) -> None:
        rq.job.Job.func_name.fset(self, value)  # type: ignore[attr-defined]

    # RQ imports callbacks by the names stored in the job hash: names anyone with Redis
    # access can write. taskctl sets none, so none is ever imported or called.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def get_meta(self, refresh: bool = True) -> dict[str, Any]:
        # RQ's restore tolerates meta that is not JSON; its get_meta(refresh=True) does not.
        try:
            return dict(super().get_meta(refresh))
        except (ValueError, TypeError):
            self.meta = dict(UNREADABLE_META)
            return self.meta

    @property
    def readable(self) -> bool:
        try:
            self.func_name  # noqa: B018  (reading it is the check)
        except UnreadableJobError:
            return False
        return True

    @property
    def func(self) -> Callable[..., Any]:
        name = self.func_name
        entry = get_catalog().by_path(name) if name and self.instance is None else None
        if entry is None:
            raise JobNotAllowedError(f"{name!r} is not an allowed job: workers run only functions from the job catalog")
        sources = self.meta.get(CHORD_SOURCES)
        if sources:
            # A chord's callback: the group's results, in order, come first.
            return functools.partial(entry.func, self._results_of(list(sources)))
        return entry.func

    def _results_of(self, job_ids: list[str]) -> list[Any]:
        jobs = self.fetch_many(job_ids, connection=self.connection)
        return [job.return_value() if job is not None else None for job in jobs]


def retries_owed(job: CatalogJob) -> int:
    """Retries the job spent on runs that no taskctl worker started: a worker that could not read it.

    Each retry is spent by a run that ended (or was abandoned), and every run of
    taskctl's is counted when it starts, so the retries spent beyond that count
    were spent by other workers. Never more than that: a run taskctl started, and
    a permanent error that spent every retry at once, are never given back.
    """
    if job.retries_left is None or not job.retry_intervals or job.meta.get(RETRIES_WAIVED):
        return 0
    spent = len(job.retry_intervals) - job.retries_left
    return max(0, spent - job.taskctl_runs)


#: Take the first job of the first non-empty queue, moving it into that queue's
#: intermediate list in the same step: a worker killed right after this has lost
#: nothing, the maintenance pass gives the job back (ClaimedJobs). The job's hash
#: comes back with it, which saves the worker a round trip per job.
CLAIM_SCRIPT = (
    rates.lua_functions(rq.job.Job.redis_job_namespace_prefix, rq.Queue.redis_queue_namespace_prefix)
    + f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
release_due(now, 16)
for _, key in ipairs(KEYS) do
    while true do
        local job_id = redis.call('LMOVE', key, key .. ':intermediate', 'LEFT', 'RIGHT')
        if not job_id then break end
        local h = redis.call('HMGET', ARGV[1] .. job_id, 'status', '{rates.RATE_FIELD}')
        if not (h[1] == 'queued' and h[2] and rate_check(job_id, h[2], now) > 0) then
            return {{key, job_id, redis.call('HGETALL', ARGV[1] .. job_id)}}
        end
        redis.call('RPOP', key .. ':intermediate')  -- set aside by its rate limit (taskctl.rates)
    end
end
local due = redis.call('ZRANGE', '{rates.DUE_KEY}', 0, 0, 'WITHSCORES')
if due[2] then return tostring(tonumber(due[2]) - now) end
return false
"""
)
#: Seconds a job may sit claimed (in an intermediate list) but not started before it is
#: given back: a live worker starts its claim within milliseconds.
CLAIM_GRACE_SECONDS = 5
#: Give a claimed job back to the front of its queue, if it is still claimed and still not started.
GIVE_BACK_SCRIPT = """
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' then return 0 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[4], 1)
return 1
"""


class ClaimedJobs(IntermediateQueue):
    """A queue's intermediate list: jobs claimed by a worker that has not started them yet.

    RQ gives such a job back only after two maintenance passes a minute apart, and
    then as a failure (it spends a retry, or fails a job that never ran). Here it
    goes back to the front of its queue, untouched, once it has been seen claimed
    and not started for CLAIM_GRACE_SECONDS. The sighting is kept with the job's
    enqueue time, so that one from an earlier claim never counts for a later one.
    """

    def cleanup(self, worker: Any, queue: rq.Queue) -> list[str]:  # type: ignore[override]
        """Give back what a dead worker claimed; return the ids given back."""
        given_back = []
        connection = self.connection
        for job_id in self.get_job_ids():
            job_key = CatalogJob.key_for(job_id)
            status, enqueued_at = (as_text(v or b"") for v in connection.hmget(job_key, ("status", "enqueued_at")))
            if status != "queued":  # started (the start takes it out of here too), deleted, canceled
                if status != "started":
                    self.remove(job_id)
                continue
            sighting_key = f"{self.key}:claimed:{job_id}"
            now = time.time()
            seen_at, _, seen_enqueued = as_text(connection.get(sighting_key) or b"").partition(" ")
            if not seen_at or seen_enqueued != enqueued_at:
                connection.set(sighting_key, f"{now} {enqueued_at}", ex=3600)
                continue
            if now - float(seen_at) < CLAIM_GRACE_SECONDS:
                continue
            keys = [self.key, queue.key, job_key, wakeup_key(queue.key)]
            if lua(connection, GIVE_BACK_SCRIPT)(keys=keys, args=[job_id], client=connection):
                given_back.append(job_id)
            connection.delete(sighting_key)
        return given_back


#: Tokens kept per queue to wake idle workers; they are hints, not jobs, so a lost one costs nothing.
WAKEUP_TOKENS_KEPT = 100
#: An idle worker looks at its queues at least this often, for jobs pushed without a token.
IDLE_POLL_SECONDS = 1
#: The shortest wait an idle worker asks Redis for (see Queue.dequeue_any).
SHORTEST_BLOCK_SECONDS = 0.01


def wakeup_key(queue_key: str) -> str:
    return f"{queue_key}:wakeup"


class Queue(rq.Queue):
    job_class = CatalogJob

    def __init__(self, name: str = "default", connection: Redis | None = None, **kwargs: Any) -> None:
        kwargs["job_class"] = CatalogJob
        kwargs["serializer"] = JSONSerializer
        super().__init__(name, connection=connection, **kwargs)

    def acquire_maintenance_lock(self, seconds: float | None = None) -> bool:
        """Take the queue's cleaning lock for ``seconds`` (the maintenance interval by default).

        RQ holds it 15 minutes: a worker killed while cleaning stopped every recovery of
        abandoned jobs for that long (and, with a minute, past the stated 30 s). For one
        interval, a cleaner that dies mid-pass delays recovery by one pass. A pass takes
        milliseconds; one that outlasts the lock may overlap the next, which costs at worst a
        retry counted twice: a job pushed back twice still starts once (the start script
        needs it queued).
        """
        ttl = max(1, int(seconds or get_settings().maintenance_interval))
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=ttl))

    @property
    def wakeup_key(self) -> str:
        return wakeup_key(self.key)

    @property
    def started_job_registry(self) -> LeaseRegistry:
        return LeaseRegistry(queue=self, job_class=self.job_class, serializer=self.serializer)

    def move_dependents_to_ready(self, job: rq.job.Job, pipeline: Any = None, *args: Any, **kwargs: Any) -> Any:
        # RQ calls this first in the transaction that records a job's success, with the
        # pipeline WATCHing: the seam where the record is made to depend on the run's lease.
        execution = getattr(job, "fenced_by", None)
        if pipeline is not None and execution is not None:
            pipeline.watch(job.key)
            if not held(pipeline, job, execution):
                raise LeaseLostError(
                    f"job {job.id}: run {getattr(job, 'fencing_token', '?')} no longer holds its lease"
                )
        return super().move_dependents_to_ready(job, pipeline, *args, **kwargs)

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        # In the same round trip as the push itself: a token that wakes an idle worker.
        connection = pipeline if pipeline is not None else self.connection.pipeline()
        super().push_job_id(job_id, pipeline=connection, at_front=at_front)
        self.wake(connection, 1)
        if pipeline is None:
            connection.execute()

    def wake(self, pipeline: Any, jobs: int) -> None:
        """Queue wake-up tokens for ``jobs`` new jobs (at most as many as idle workers could use)."""
        pipeline.rpush(self.wakeup_key, *[1] * min(jobs, WAKEUP_TOKENS_KEPT))
        pipeline.ltrim(self.wakeup_key, -WAKEUP_TOKENS_KEPT, -1)

    @classmethod
    def dequeue_any(
        cls,
        queues: Iterable[rq.Queue],
        timeout: int | None,
        connection: Redis,
        job_class: Any = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[rq.job.Job, rq.Queue] | None:
        """Dequeue in priority order without RQ's multi-queue loss window.

        RQ moves a job atomically into an intermediate list only for one-queue
        workers; with several queues it BLPOPs, and a worker killed between the
        pop and the job's registration loses the job (rq issue 1716). Here every
        worker claims atomically (a Lua LMOVE over the queues in order), and an
        idle worker blocks on per-queue wake-up tokens instead of on the jobs.
        """
        keys = [queue.key for queue in queues]
        wakeup_keys = [wakeup_key(key) for key in keys]
        waited = 0.0
        while True:
            claimed = lua(connection, CLAIM_SCRIPT)(
                keys=keys, args=[CatalogJob.redis_job_namespace_prefix], client=connection
            )
            if isinstance(claimed, list):
                queue_key, job_id = (part.decode() if isinstance(part, bytes) else part for part in claimed[:2])
                if not claimed[2]:  # the job hash is gone
                    connection.lrem(IntermediateQueue.get_intermediate_queue_key(queue_key), 1, job_id)
                    continue
                job = CatalogJob(job_id, connection=connection)
                job.restore(dict(zip(claimed[2][::2], claimed[2][1::2], strict=True)))
                queue = cls.from_queue_key(queue_key, connection=connection, death_penalty_class=death_penalty_class)
                return job, queue
            if timeout is None:
                return None
            wait = min(IDLE_POLL_SECONDS, timeout - waited)
            if wait <= 0:
                raise DequeueTimeout(timeout, keys)
            if claimed:  # seconds until a job set aside by its rate limit is due: be there then
                wait = min(wait, float(claimed))
            # Redis reads a timeout in whole milliseconds, rounding down, and takes 0 for "block
            # forever": a worker asked to wait 1 ms slept until the next token, 15 s once.
            wait = max(wait, SHORTEST_BLOCK_SECONDS)
            connection.blpop(wakeup_keys, wait)
            waited += wait


def cancel_dependents(job: rq.job.Job, reason: str) -> None:
    """Cancel what waits on a job that failed for good, and what waits on those: they can never run.

    RQ would leave them deferred forever; canceled, with the reason in their meta,
    they show why in `taskctl status` and the dashboard.
    """
    pending = list(job.dependent_ids)
    while pending:
        dependent = CatalogJob.fetch_many([pending.pop()], connection=job.connection)[0]
        if dependent is None or dependent.get_status(refresh=False) != rq.job.JobStatus.DEFERRED:
            continue
        dependent.meta[CANCELED_BECAUSE] = reason
        dependent.save_meta()  # type: ignore[no-untyped-call]
        dependent.cancel()
        pending.extend(dependent.dependent_ids)
