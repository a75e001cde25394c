"""A busy worker's way through its jobs: one Redis round trip per job, one script.

RQ's worker spends about 50 commands in a dozen round trips on each job (claim,
register the run, mark it started, heartbeat, record the result, clean up), and
Redis's time per job is the ceiling of a whole fleet. Here a busy worker sends
one script per job, ``STEP``, which records the run that just ended and starts
the next job in priority order, server-side and atomically:

- the end: only while the run is still the job's current one and still
  ``started`` (the lease check of taskctl.lease, no WATCH needed inside a
  script), RQ's own records of a success: status and end time in the job hash,
  the result in RQ's results stream, the finished registry and the job's TTL,
  or, for a job that keeps no result (``result_ttl=0``), the job deleted as RQ
  deletes it; and the run's records gone from the started registry, the
  execution indexes and the worker's;
- the start: the first queued job of the first non-empty queue popped, and in
  the same step registered as a run, as taskctl.lease's start script does it (a
  lease scored on Redis's clock, the next fencing token, the run named in the
  job hash), with RQ's execution records: there is no moment when the job is
  neither in its queue nor started, so no intermediate list to recover.

What tools read is RQ's data model, field for field (rq-dashboard, ``rq info``,
``Job.fetch``, ``job.results()``, ``taskctl status``), with one difference of
timing: a run's execution hash and index carry no TTL until the job's first
heartbeat, a few seconds in; a run whose worker dies before that has them
deleted when its lease is recovered (``LeaseRegistry``).

Whatever is not a plain success (a failure, a retry, a job with dependents or
dependencies, a repeat, a rate limit or a group) goes RQ's way, as before, and
so does an idle worker, which blocks until a job arrives (``Queue.dequeue_any``).
"""

from __future__ import annotations

from base64 import b64encode
from dataclasses import dataclass
from typing import Any

import rq.executions
import rq.job
import rq.results
from redis import Redis
from rq.defaults import RQ_KEY_PREFIX
from rq.utils import as_text

from taskctl.connection import lua
from taskctl.lease import CURRENT_RUN, TASKCTL_RUNS

#: Outcomes of the end of a run, as STEP reports them.
RECORDED, RECORDED_BEFORE, LEASE_LOST, JOB_GONE, NOT_PLAIN = 1, 2, -1, -2, 3

# RQ's key names, from RQ (RQ_KEY_PREFIX may be set in the environment); each is followed by an id.
_JOB = rq.job.Job.redis_job_namespace_prefix
_EXECUTION = f"{RQ_KEY_PREFIX}:execution:"  # as rq.executions.Execution.key has it
_EXECUTIONS = rq.executions.ExecutionRegistry.key_template.format("")
_RESULTS = rq.results.Result.get_key("")  # type: ignore[no-untyped-call]

#: KEYS: the worker's hash, the worker's execution index, then for each queue in priority
#: order the queue and its started registry. ARGV: see ``step`` (the names of the fields).
STEP = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local A = ARGV
local ended = 0
local ended_run = nil
if A[9] ~= '' then
    local job_key = '{_JOB}' .. A[9]
    ended_run = A[9] .. ':' .. A[10]
    local h = redis.call('HMGET', job_key, '{CURRENT_RUN}', 'status')
    if h[1] ~= A[10] or h[2] ~= 'started' then
        if h[1] == A[10] and h[2] == 'finished' then ended = {RECORDED_BEFORE}
        elseif h[2] then ended = {LEASE_LOST} else ended = {JOB_GONE} end
        -- This run's own records: it is over, whatever became of the job.
        redis.call('DEL', '{_EXECUTION}' .. ended_run)
        redis.call('ZREM', '{_EXECUTIONS}' .. A[9], A[10])
    elseif redis.call('SCARD', job_key .. ':dependents') > 0 then
        return {{{NOT_PLAIN}}}
    else
        ended = {RECORDED}
        redis.call('ZREM', A[11], ended_run)
        local ttl = tonumber(A[13])
        if ttl == 0 then
            redis.call('DEL', job_key, '{_EXECUTION}' .. ended_run, '{_EXECUTIONS}' .. A[9], '{_RESULTS}' .. A[9])
        else
            redis.call('HSET', job_key, 'status', 'finished', 'ended_at', A[18])
            local results = '{_RESULTS}' .. A[9]
            local entry = {{'type', '1', 'worker_name', A[5]}}
            if A[15] ~= '' then table.insert(entry, 'return_value'); table.insert(entry, A[15]) end
            for _, v in ipairs({{'execution_id', A[10], 'execution_started_at', A[16], 'execution_ended_at', A[17]}}) do
                table.insert(entry, v)
            end
            redis.call('XADD', results, 'MAXLEN', '~', '10', '*', unpack(entry))
            redis.call('ZADD', A[12], A[14], A[9])
            if ttl > 0 then
                redis.call('EXPIRE', results, ttl)
                redis.call('EXPIRE', job_key, ttl)
            else
                redis.call('PERSIST', results)
            end
            redis.call('DEL', '{_EXECUTION}' .. ended_run)
            redis.call('ZREM', '{_EXECUTIONS}' .. A[9], A[10])
        end
    end
end
if A[7] ~= '' then
    redis.call('HINCRBY', KEYS[1], 'successful_job_count', A[7])
    redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', A[8])
end
local started, blocked = false, false
if A[19] == '1' then
    for i = 3, #KEYS, 2 do
        while not (started or blocked) do
            local job_id = redis.call('LPOP', KEYS[i])
            if not job_id then break end
            local job_key = '{_JOB}' .. job_id
            local h = redis.call('HGETALL', job_key)
            local f = {{}}
            for j = 1, #h, 2 do f[h[j]] = h[j + 1] end
            -- Not queued (deleted, canceled): RQ would not run it either; the next one is looked at.
            if f['status'] == 'queued' then
                local current = f['{CURRENT_RUN}']
                local live = current and redis.call('ZSCORE', KEYS[i + 1], job_id .. ':' .. current)
                if live and tonumber(live) >= now then
                    -- Another run holds its lease: left where it was, for RQ's way to sort out.
                    redis.call('LPUSH', KEYS[i], job_id)
                    blocked = true
                else
                    local token = tonumber(f['{TASKCTL_RUNS}'] or '0') + 1
                    local run = job_id .. ':' .. A[4]
                    local ttl = tonumber(A[3])
                    redis.call('HSET', job_key, 'status', 'started', 'started_at', A[1], 'last_heartbeat', A[1],
                        'worker_name', A[5], '{CURRENT_RUN}', A[4], '{TASKCTL_RUNS}', token)
                    if f['ttl'] then redis.call('PERSIST', job_key) end
                    redis.call('ZADD', KEYS[i + 1], now + ttl, run)
                    redis.call('HSET', '{_EXECUTION}' .. run, 'id', A[4], 'job_id', job_id, 'created_at', A[2],
                        'last_heartbeat', A[2], 'worker_name', A[5])
                    redis.call('ZADD', '{_EXECUTIONS}' .. job_id, now + ttl + 60, A[4])
                    redis.call('SADD', KEYS[2], run)
                    if not ended_run then redis.call('EXPIRE', KEYS[2], ttl + 60) end
                    if A[6] == '1' then redis.call('HSET', KEYS[1], 'state', 'busy') end
                    started = {{ended, KEYS[i], job_id, h, token}}
                end
            end
        end
        if started or blocked then break end
    end
end
if ended_run then redis.call('SREM', KEYS[2], ended_run) end
return started or {{ended}}
"""


@dataclass
class Ended:
    """A run whose job returned, to be recorded by the worker's next step."""

    job_id: str
    execution_id: str
    started_registry: str
    finished_registry: str
    result_ttl: int
    finished_score: str
    return_value: str
    started_at: float
    ended_at: float
    ended_at_text: str
    working_seconds: float


@dataclass
class Started:
    """The job a step started: its hash as it was before the start, its queue and its fencing token."""

    queue_key: str
    job_id: str
    job_hash: dict[bytes, bytes]
    token: int


def encode_result(serializer: Any, value: Any) -> str:
    """A return value as RQ's ``Result`` stores it (``b64encode`` of the serialized value); '' for None."""
    return "" if value is None else b64encode(serializer.dumps(value)).decode()


def step(
    connection: Redis,
    worker_key: str,
    worker_executions_key: str,
    queues: list[tuple[str, str]],
    worker_name: str,
    *,
    ended: Ended | None,
    claim: bool,
    execution_id: str,
    started_at_text: str,
    started_at: float,
    lease_seconds: int,
    set_busy: bool,
    successes: int,
    working_seconds: float,
) -> tuple[int, Started | None]:
    """Record ``ended`` (if any) and, with ``claim``, start the next job of ``queues`` ((queue, started registry) keys).

    Returns the outcome of the end (0 when there was none: see RECORDED and the
    others) and the job started, if any. NOT_PLAIN means nothing was done: the
    ended run has dependents and must be recorded RQ's way.
    """
    args: list[Any] = [
        started_at_text, repr(started_at), lease_seconds, execution_id, worker_name, "1" if set_busy else "",
        successes or "", repr(working_seconds) if successes else "",
    ]  # fmt: skip
    if ended is None:
        args += [""] * 10
    else:
        args += [ended.job_id, ended.execution_id, ended.started_registry, ended.finished_registry,
                 ended.result_ttl, ended.finished_score, ended.return_value, repr(ended.started_at),
                 repr(ended.ended_at), ended.ended_at_text]  # fmt: skip
    args.append("1" if claim else "")
    keys = [worker_key, worker_executions_key, *(key for pair in queues for key in pair)]
    reply = lua(connection, STEP)(keys=keys, args=args, client=connection)
    outcome = int(reply[0])
    if len(reply) == 1:
        return outcome, None
    queue_key, job_id, flat, token = reply[1:]
    job_hash = dict(zip(flat[::2], flat[1::2], strict=True))
    return outcome, Started(as_text(queue_key), as_text(job_id), job_hash, int(token))
