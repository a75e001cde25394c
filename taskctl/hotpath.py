"""A busy worker's way through its jobs: two Redis round trips per batch of jobs, one script.

RQ's worker spends about 50 commands in a dozen round trips on each job (claim,
register the run, mark it started, heartbeat, record the result, clean up), and
Redis's time per job is the ceiling of a whole fleet. Here a busy worker sends
one script, ``STEP``, which records the runs that ended since the last one and
starts the next jobs in priority order, server-side and atomically; then it reads
the started jobs' hashes in one pipeline (``SentStep`` says why not in the script):

- the ends: each only while its run is still the job's current one and still
  ``started`` (the lease check of taskctl.lease, no WATCH needed inside a
  script), RQ's own records of a success: status and end time in the job hash,
  the result in RQ's results stream, the finished registry and the job's TTL,
  or, for a job that keeps no result (``result_ttl=0``), the job deleted as RQ
  deletes it; and the runs' records gone from the started registry, the
  execution indexes and the worker's;
- the starts: up to as many queued jobs as the worker asks for, popped from the
  first non-empty queues (one ``LPOP`` with a count, Redis 6.2) and in the same
  step registered as runs, as taskctl.lease's start script does it (a lease
  scored on Redis's clock, the next fencing token, the run named in the job
  hash), with RQ's execution records: there is no moment when a job is neither
  in its queue nor started, so no intermediate list to recover. A job over its rate
  limit is set aside there instead of started, and the jobs set aside whose time has
  come go back to the front of their queues first (taskctl.rates).

The worker asks for several jobs only while its jobs are short (taskctl.worker):
a round trip is then a large share of each job, and the jobs started with the
first one wait for it a few milliseconds at most. A job started with others that
has not begun when the one before it runs long goes back to the front of its
queue (``GIVE_BACK``), for any worker; a worker that dies holding such jobs holds
them as it holds its running one, under a lease, and they are recovered with it.
While a batch's last two jobs run, the worker's next step is on its way
(``send_step``, whose replies are read as the worker gets to them: ``SentStep``),
so that a busy worker seldom waits for Redis; it then holds one batch more.

What tools read is RQ's data model, field for field (rq-dashboard, ``rq info``,
``Job.fetch``, ``job.results()``, ``taskctl status``), with one difference of
timing: a run's execution hash and index carry no TTL until the job's first
heartbeat, a few seconds in; a run whose worker dies before that has them
deleted when its lease is recovered (``LeaseRegistry``). And a job started with
others shows as started (by its worker, which holds it) a few milliseconds
before it begins.

Whatever is not a plain success (a failure, a retry, a job with dependents or
dependencies, a repeat, a concurrency limit (RQ's rate_limit) or a group) goes RQ's way, and
so does an idle worker, which blocks until a job arrives (``Queue.dequeue_any``).
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hiredis
import rq.executions
import rq.job
import rq.queue
import rq.results
from redis import Redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError
from rq.defaults import RQ_KEY_PREFIX
from rq.utils import as_text

from taskctl import rates
from taskctl.connection import lua
from taskctl.lease import CURRENT_RUN, TASKCTL_RUNS

#: Outcomes of the end of a run, as STEP reports them.
RECORDED, RECORDED_BEFORE, LEASE_LOST, JOB_GONE, NOT_PLAIN = 1, 2, -1, -2, 3

# RQ's key names, from RQ (RQ_KEY_PREFIX may be set in the environment); each is followed by an id.
_JOB = rq.job.Job.redis_job_namespace_prefix
_EXECUTION = f"{RQ_KEY_PREFIX}:execution:"  # as rq.executions.Execution.key has it
_EXECUTIONS = rq.executions.ExecutionRegistry.key_template.format("")
_RESULTS = rq.results.Result.get_key("")  # type: ignore[no-untyped-call,unused-ignore]

#: KEYS: the worker's hash, the worker's execution index, then for each queue in priority
#: order the queue and its started registry. ARGV: see ``send_step``. Returns the outcome of
#: each ended run, and the jobs started.
STEP = (
    rates.lua_functions(_JOB, rq.queue.Queue.redis_queue_namespace_prefix)
    + f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local A = ARGV
local claim, n_ended = tonumber(A[8]), tonumber(A[9])
local E = 9 + claim
local outcomes, at = {{}}, {{}}
-- Each ended run's arguments: 4 for a run whose job keeps no result, 10 for one that does.
local b = E
for e = 1, n_ended do
    at[e] = b
    b = b + (A[b + 4] == '0' and 4 or 10)
end
-- A run with dependents is recorded RQ's way (it enqueues them): then nothing is done here.
-- One EXISTS for all the runs (a set without members does not exist), each looked at only if one has them.
if n_ended > 0 then
    local sets = {{}}
    for e = 1, n_ended do sets[e] = '{_JOB}' .. A[at[e] + 1] .. ':dependents' end
    if redis.call('EXISTS', unpack(sets)) > 0 then
        for e = 1, n_ended do outcomes[e] = redis.call('EXISTS', sets[e]) * {NOT_PLAIN} end
        return {{outcomes, {{}}}}
    end
end
local function add(t, k, v) local l = t[k]; if not l then l = {{}}; t[k] = l end; table.insert(l, v) end
local unregister, doomed, ended_runs = {{}}, {{}}, {{}}
for e = 0, n_ended - 1 do
    local b = at[e + 1]
    local job_id, execution_id = A[b + 1], A[b + 2]
    local job_key = '{_JOB}' .. job_id
    local run = job_id .. ':' .. execution_id
    table.insert(ended_runs, run)
    local h = redis.call('HMGET', job_key, '{CURRENT_RUN}', 'status')
    if h[1] ~= execution_id or h[2] ~= 'started' then
        if h[1] == execution_id and h[2] == 'finished' then outcomes[e + 1] = {RECORDED_BEFORE}
        elseif h[2] then outcomes[e + 1] = {LEASE_LOST} else outcomes[e + 1] = {JOB_GONE} end
    else
        outcomes[e + 1] = {RECORDED}
        add(unregister, A[b + 3], run)
        local ttl = tonumber(A[b + 4])
        if ttl == 0 then  -- the job and everything of it, this run's records included
            for _, k in ipairs({{job_key, '{_EXECUTION}' .. run, '{_EXECUTIONS}' .. job_id, '{_RESULTS}' .. job_id}}) do
                table.insert(doomed, k)
            end
            run = nil
        else
            redis.call('HSET', job_key, 'status', 'finished', 'ended_at', A[b + 10])
            local results = '{_RESULTS}' .. job_id
            local entry = {{'type', '1', 'worker_name', A[4]}}
            if A[b + 7] ~= '' then table.insert(entry, 'return_value'); table.insert(entry, A[b + 7]) end
            for _, v in ipairs({{'execution_id', execution_id, 'execution_started_at', A[b + 8],
                                 'execution_ended_at', A[b + 9]}}) do
                table.insert(entry, v)
            end
            redis.call('XADD', results, 'MAXLEN', '~', '10', '*', unpack(entry))
            redis.call('ZADD', A[b + 5], A[b + 6], job_id)
            if ttl > 0 then
                redis.call('EXPIRE', results, ttl)
                redis.call('EXPIRE', job_key, ttl)
            else
                redis.call('PERSIST', results)
            end
        end
    end
    if run then  -- this run's own records: it is over, whatever became of the job
        table.insert(doomed, '{_EXECUTION}' .. run)
        redis.call('ZREM', '{_EXECUTIONS}' .. job_id, execution_id)
    end
end
for key, runs in pairs(unregister) do redis.call('ZREM', key, unpack(runs)) end
if #doomed > 0 then redis.call('DEL', unpack(doomed)) end
if A[6] ~= '' then
    redis.call('HINCRBY', KEYS[1], 'successful_job_count', A[6])
    redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', A[7])
end
local started, leases, runs, blocked = {{}}, {{}}, {{}}, false
local ttl = tonumber(A[3])
-- Scores as strings once per step: Lua formats a number each time it passes one to Redis.
local lease_at, index_at = string.format('%.6f', now + ttl), string.format('%.6f', now + ttl + 60)
if claim > 0 then release_due(now, claim) end
for i = 3, #KEYS, 2 do
    while #started < claim and not blocked do
        local want = claim - #started
        local ids
        if want == 1 then
            ids = redis.call('LPOP', KEYS[i])
            if ids then ids = {{ids}} end
        else
            ids = redis.call('LPOP', KEYS[i], want)  -- a count needs Redis 6.2
        end
        if not ids then break end
        for k, job_id in ipairs(ids) do
            local job_key = '{_JOB}' .. job_id
            -- Five fields, not the whole hash: the worker reads that itself, after the step (see SentStep).
            local h = redis.call('HMGET', job_key, 'status', '{CURRENT_RUN}', '{TASKCTL_RUNS}', 'ttl',
                '{rates.RATE_FIELD}')
            local status, current, spent, expires = h[1], h[2], h[3], h[4]
            -- Not queued (deleted, canceled): RQ would not run it either; the next one is looked at.
            if status == 'queued' then
                local live = current and redis.call('ZSCORE', KEYS[i + 1], job_id .. ':' .. current)
                if live and tonumber(live) >= now then
                    -- Another run holds its lease: left where it was with those behind it, for RQ's way to sort out.
                    local back = {{}}
                    for j = #ids, k, -1 do table.insert(back, ids[j]) end
                    redis.call('LPUSH', KEYS[i], unpack(back))
                    blocked = true
                    break
                end
            end
            -- Over its rate limit: set aside until it may start (taskctl.rates), and the next one looked at.
            if status == 'queued' and not (h[5] and rate_check(job_id, h[5], now) > 0) then
                local token = tonumber(spent or '0') + 1
                local execution_id = A[9 + #started + 1]
                local run = job_id .. ':' .. execution_id
                redis.call('HSET', job_key, 'status', 'started', 'started_at', A[1], 'last_heartbeat', A[1],
                    'worker_name', A[4], '{CURRENT_RUN}', execution_id, '{TASKCTL_RUNS}', token)
                if expires then redis.call('PERSIST', job_key) end
                add(leases, KEYS[i + 1], lease_at)
                add(leases, KEYS[i + 1], run)
                redis.call('HSET', '{_EXECUTION}' .. run, 'id', execution_id, 'job_id', job_id, 'created_at', A[2],
                    'last_heartbeat', A[2], 'worker_name', A[4])
                redis.call('ZADD', '{_EXECUTIONS}' .. job_id, index_at, execution_id)
                table.insert(runs, run)
                table.insert(started, {{KEYS[i], job_id, token, execution_id}})
            end
        end
        if #ids < want then break end
    end
    if #started == claim or blocked then break end
end
for key, entries in pairs(leases) do redis.call('ZADD', key, unpack(entries)) end
if #runs > 0 then
    redis.call('SADD', KEYS[2], unpack(runs))
    if n_ended == 0 then redis.call('EXPIRE', KEYS[2], ttl + 60) end
    if A[5] == '1' then redis.call('HSET', KEYS[1], 'state', 'busy') end
end
if #ended_runs > 0 then redis.call('SREM', KEYS[2], unpack(ended_runs)) end
return {{outcomes, started}}
"""
)

#: Give back runs started by a step that never began (ARGV: job id, execution id, queue key and
#: started registry of each, in queue order): each one still the job's current run goes back to
#: the front of its queue, queued again, as if it had never been claimed; its token stays spent.
#: KEYS[1]: the worker's execution index. Returns how many went back.
GIVE_BACK = f"""
local back = 0
for b = #ARGV - 3, 1, -4 do
    local job_id, execution_id, queue, registry = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local job_key = '{_JOB}' .. job_id
    local run = job_id .. ':' .. execution_id
    local h = redis.call('HMGET', job_key, '{CURRENT_RUN}', 'status')
    if h[1] == execution_id and h[2] == 'started' then
        redis.call('HSET', job_key, 'status', 'queued')
        redis.call('LPUSH', queue, job_id)
        back = back + 1
    end
    redis.call('ZREM', registry, run)
    redis.call('DEL', '{_EXECUTION}' .. run)
    redis.call('ZREM', '{_EXECUTIONS}' .. job_id, execution_id)
    redis.call('SREM', KEYS[1], run)
end
return back
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
    """A job a step started: its queue, its hash as the step left it (started), its fencing token and its run."""

    queue_key: str
    job_id: str
    job_hash: dict[bytes, bytes]
    token: int
    execution_id: str


def encode_result(serializer: Any, value: Any) -> str:
    """A return value as RQ's ``Result`` stores it (``b64encode`` of the serialized value); '' for None."""
    return "" if value is None else b64encode(serializer.dumps(value)).decode()


def send_step(
    connection: Redis,
    worker_key: str,
    worker_executions_key: str,
    queues: list[tuple[str, str]],
    worker_name: str,
    *,
    ended: list[Ended],
    execution_ids: list[str],
    started_at_text: str,
    started_at: float,
    lease_seconds: int,
    set_busy: bool,
    successes: int,
    working_seconds: float,
) -> SentStep:
    """Send a step: record the ``ended`` runs and start up to one job per execution id, from ``queues`` in order.

    ``queues`` are (queue, started registry) keys, in priority order. The step's replies
    are read as the worker gets to them (``SentStep``: the worker runs a job meanwhile);
    ``collect`` returns the outcome of each ended run (RECORDED and the others) and the
    jobs started, in queue order. When one ended run has dependents, its outcome is
    NOT_PLAIN, nothing at all is done and every other outcome is 0: that run is to be
    recorded RQ's way, then the rest again.
    """
    args: list[Any] = [
        started_at_text, repr(started_at), lease_seconds, worker_name, "1" if set_busy else "",
        successes or "", repr(working_seconds) if successes else "", len(execution_ids), len(ended), *execution_ids,
    ]  # fmt: skip
    for run in ended:
        args += [run.job_id, run.execution_id, run.started_registry, run.result_ttl]
        if run.result_ttl != 0:  # a job deleted with its run needs none of the rest
            args += [run.finished_registry, run.finished_score, run.return_value, repr(run.started_at),
                     repr(run.ended_at), run.ended_at_text]  # fmt: skip
    keys = [worker_key, worker_executions_key, *(key for pair in queues for key in pair)]
    sent = SentStep(connection, lua(connection, STEP), keys, args, dict(queues))
    sent.send()
    return sent


class SentStep:
    """A step on its way: its two round trips, each read when the worker gets to it.

    The script's reply is read first (``advance``), and the started jobs' hashes are
    asked for in the same go; ``collect`` reads them. The hashes are read in a round trip of
    their own, a pipeline of HGETALLs: read inside the script, each hash became a Lua
    table and then a reply again, which cost Redis about 8 µs a job, a fifth of all it
    spends on one. A job deleted between the two (its hash gone) is not run: its run's
    records go as a given-back run's do.

    The connection is the step's alone until it is collected; whatever fails drops it
    (redis-py's way) and reaches the caller, for whom the step may or may not have run.
    """

    def __init__(
        self, connection: Redis, script: Script, keys: list[str], args: list[Any], registries: dict[str, str]
    ) -> None:
        self.connection, self._script, self._keys, self._args, self._registries = (
            connection, script, keys, args, registries,
        )  # fmt: skip
        self._pool = connection.connection_pool
        self._link: Connection | None = None
        self.outcomes: list[int] | None = None
        self.jobs: list[Started] = []

    def send(self) -> None:
        self._link = self._pool.get_connection()
        with self._failing():
            _send(self._link, self._evalsha())

    def advance(self) -> None:
        """Read the script's reply, and ask for the started jobs' hashes."""
        if self.outcomes is not None:
            return
        assert self._link is not None
        with self._failing():
            try:
                outcomes, started = self._link.read_response()
            except NoScriptError:  # a restart, a failover: loaded, and the step sent again
                _send(self._link, (b"SCRIPT", b"LOAD", self._script.script), self._evalsha())
                self._link.read_response()
                outcomes, started = self._link.read_response()
            self.outcomes = [int(outcome) for outcome in outcomes]
            self.jobs = [Started(as_text(queue), as_text(job_id), {}, int(n), as_text(run))
                         for queue, job_id, n, run in started]  # fmt: skip
            if self.jobs:
                _ask_hashes(self._link, self.jobs)
            else:
                self._release()

    def collect(self) -> tuple[list[int], list[Started]]:
        """The outcome of each ended run, and the jobs started (their hashes read)."""
        self.advance()
        if self._link is not None:
            with self._failing():
                _read_hashes(self._link, self.jobs)
            self._release()
        gone = [job for job in self.jobs if not job.job_hash]
        if gone:
            give_back(self.connection, self._keys[1], [(job, self._registries[job.queue_key]) for job in gone])
            self.jobs = [job for job in self.jobs if job.job_hash]
        assert self.outcomes is not None
        return self.outcomes, self.jobs

    def _evalsha(self) -> tuple[Any, ...]:
        return (b"EVALSHA", self._script.sha, len(self._keys), *self._keys, *self._args)

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """A failure drops the connection, as redis-py does, and reaches the caller."""
        try:
            yield
        except BaseException:
            if self._link is not None:
                self._link.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
                self._release()
            raise

    def _release(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            self._pool.release(link)


def _ask_hashes(link: Connection, jobs: list[Started]) -> None:
    """Ask for each started job's hash, as the step left it: a pipeline of HGETALLs, read by ``_read_hashes``."""
    _send(link, *((b"HGETALL", _JOB + job.job_id) for job in jobs))


def _read_hashes(link: Connection, jobs: list[Started]) -> None:
    """Each started job's hash, as the step left it, from the replies to the pipeline of HGETALLs."""
    for job in jobs:
        job.job_hash = _as_dict(link.read_response())


def _send(link: Connection, *commands: tuple[Any, ...]) -> None:
    """Commands in one write, packed by hiredis from their arguments as they are (str, bytes, int)."""
    packed = b"".join(hiredis.pack_command(command) for command in commands)
    link.send_packed_command([packed])  # type: ignore[no-untyped-call,unused-ignore]


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    """A hash as RESP3 returns it (a map), or as RESP2 does (a flat list of fields and values)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def give_back(connection: Redis, worker_executions_key: str, runs: list[tuple[Started, str]]) -> int:
    """Put back at the front of their queues the started jobs that never began ((job, started registry) pairs)."""
    if not runs:
        return 0
    args = [value for started, registry in runs
            for value in (started.job_id, started.execution_id, started.queue_key, registry)]  # fmt: skip
    return int(lua(connection, GIVE_BACK)(keys=[worker_executions_key], args=args, client=connection))
