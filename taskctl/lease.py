"""Leases on runs: a run goes on only while its worker holds the job's lease.

RQ's started registry already is a table of leases: one entry per run, scored
with the time it expires, pushed forward by each heartbeat; once it is past, any
worker's maintenance pass takes the run for abandoned and runs the job again.
What RQ lacks is the other half, the holder's: a worker that cannot renew (cut
off from Redis) or that wakes up past its lease (a frozen VM or container) went
on running the job beside the new run, and then recorded its outcome over it.

Here:

- the entries are scored with Redis's own clock (TIME, in the scripts below),
  and taken for expired by that same clock (``LeaseRegistry``), so no host's
  clock has to agree with another's: only the rate at which clocks advance;
- the holder counts its lease from the moment it *sent* the registration or
  renewal, on its monotonic clock, and stops the run ``margin`` seconds before
  that can have run out (``Lease``, ``LeaseGuard``): by then no other worker
  can have started the job;
- a renewal is refused once the run is not the job's current one (recovered,
  superseded, deleted), and so is the record of an outcome (``held``): a run
  that lost its lease never writes a status or a result over the newer run.

What no lease can stop is a side effect already under way when the holder froze;
for that, each run has a fencing token (``taskctl.fencing``).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import rq
from redis import Redis
from rq.executions import Execution, ExecutionRegistry
from rq.registry import StartedJobRegistry
from rq.utils import as_text, parse_composite_key

#: Job hash field naming the execution (RQ's id of one run) that holds the job's lease now.
CURRENT_RUN = "taskctl_execution"
#: Job hash field counting the runs taskctl's workers started: each run's count is its fencing
#: token (taskctl.fencing). RQ and its tools ignore fields they do not know.
TASKCTL_RUNS = "taskctl_runs"
#: The exit code of a process that ended its run because it no longer held the lease.
LEASE_LOST_EXIT = 75

#: Start a run (ARGV[1] its entry, ARGV[2] the lease in seconds, ARGV[3] its execution id, ARGV[4]
#: the job id): only while the job is queued and no other run holds its lease. The run becomes
#: the job's current one and takes the next fencing token, which is returned; 0 when refused.
#: A worker frozen between its claim and this step finds its claim given back (ClaimedJobs) and
#: perhaps started elsewhere: then it starts nothing.
START_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local current = redis.call('HGET', KEYS[2], '{CURRENT_RUN}')
if current then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[4] .. ':' .. current)
    if score and tonumber(score) >= now then return 0 end
end
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[2], '{CURRENT_RUN}', ARGV[3])
local token = redis.call('HINCRBY', KEYS[2], '{TASKCTL_RUNS}', 1)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return token
"""
#: Register (ARGV[3] == '') or renew a run's lease: its started-registry entry, expiring
#: ARGV[2] seconds from now by Redis's clock. A renewal holds only while the entry is there
#: and unexpired and the run is still the job's current one; it returns 0 otherwise.
LEASE_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[3] ~= '' then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
    if not score or tonumber(score) < now or redis.call('HGET', KEYS[2], '{CURRENT_RUN}') ~= ARGV[3] then return 0 end
    redis.call('HSET', KEYS[2], 'last_heartbeat', ARGV[4])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
#: 1 while the run (ARGV[1] its entry, ARGV[2] its execution id) holds the job's lease.
HELD_SCRIPT = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) < now then return 0 end
if redis.call('HGET', KEYS[2], '{CURRENT_RUN}') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'started' then return 0 end
return 1
"""


def redis_now(connection: Redis) -> float:
    seconds, micros = connection.time()
    return float(seconds) + micros / 1_000_000


class LeaseRegistry(StartedJobRegistry):
    """RQ's started registry, on Redis's clock, recovering only a job's current run.

    An expired entry of a run that is no longer the job's current one (a newer run
    started, and holds an entry of its own) is dropped; RQ's cleanup would take the
    job, running again elsewhere, for abandoned, and retry it beside itself.
    """

    def add_execution(self, execution: Any, pipeline: Any, ttl: int = 0, xx: bool = False) -> Any:
        if ttl < 0:  # RQ's "never expires"
            return super().add_execution(execution, pipeline, ttl, xx)
        return renew(pipeline, self.key, execution, ttl, renewal=xx)

    def get_expired_job_ids(self, timestamp: float | None = None) -> list[str]:
        expired: list[str] = super().get_expired_job_ids(redis_now(self.connection) if timestamp is None else timestamp)
        return expired

    def cleanup(self, timestamp: float | None = None, exception_handlers: list[Any] | None = None) -> None:
        score = redis_now(self.connection) if timestamp is None else timestamp
        self.drop_superseded(score)
        self.recover_expired(score, exception_handlers)

    def recover_expired(self, score: float, exception_handlers: list[Any] | None = None) -> None:
        """RQ's cleanup: the runs expired by ``score`` retried or failed as abandoned (drop_superseded first).

        Their execution records go too: a run the worker's step started has them without a
        TTL until its first heartbeat (taskctl.hotpath).
        """
        entries = [as_text(e) for e in self.connection.zrangebyscore(self.key, 0, score)]  # type: ignore[arg-type]
        super().cleanup(score, exception_handlers)
        forget_runs(self.connection, entries)

    def drop_superseded(self, score: float) -> list[str]:
        """Remove the expired entries of runs a newer run replaced; return the ids of the jobs still expired."""
        entries = [as_text(e) for e in self.connection.zrangebyscore(self.key, 0, score)]  # type: ignore[arg-type]
        if not entries:
            return []
        runs = [parse_composite_key(entry) for entry in entries]
        with self.connection.pipeline(transaction=False) as pipeline:
            for job_id, _ in runs:
                pipeline.hget(self.job_class.key_for(job_id), CURRENT_RUN)
            current = [as_text(c) if c is not None else None for c in pipeline.execute()]
            # Replaced only by a run that has an entry itself. A run that no taskctl worker
            # started does not name itself; the run still named has none: it is recovered as RQ would.
            others = [(job_id, c) for (job_id, run), c in zip(runs, current, strict=True) if c not in (None, run)]
            for job_id, other in others:
                pipeline.zscore(self.key, f"{job_id}:{other}")
            present = {other for (_, other), score in zip(others, pipeline.execute(), strict=True) if score is not None}
        superseded = [e for e, (_, run), c in zip(entries, runs, current, strict=True) if c != run and c in present]
        if superseded:
            self.connection.zrem(self.key, *superseded)
            forget_runs(self.connection, superseded)
        return [job_id for (job_id, _), entry in zip(runs, entries, strict=True) if entry not in superseded]


def forget_runs(connection: Redis, entries: list[str]) -> None:
    """Delete the execution records (RQ's hash and per-job index) of runs that are over, by registry entry."""
    if not entries:
        return
    with connection.pipeline(transaction=False) as pipeline:
        for entry in entries:
            execution = Execution.from_composite_key(entry, connection)
            pipeline.delete(execution.key)
            ExecutionRegistry(execution.job_id, connection).remove(execution, pipeline)
        pipeline.execute()


# EVAL with the source, not EVALSHA: in a pipeline, redis-py's script objects cost a round
# trip of their own (SCRIPT EXISTS) at every execute; Redis caches what EVAL compiles.


def renew(client: Any, registry_key: str, execution: Any, ttl: float, renewal: bool = True) -> Any:
    """Queue (in a pipeline) or send the lease script: a renewal, or the registration of a new run."""
    stamp = rq.utils.utcformat(rq.utils.now())
    job_key = rq.job.Job.key_for(execution.job_id)
    check = execution.id if renewal else ""
    return client.eval(LEASE_SCRIPT, 2, registry_key, job_key, execution.composite_key, ttl, check, stamp)


def start(client: Any, job: rq.job.Job, execution: Any, ttl: float) -> Any:
    """Queue (in a pipeline) the start of a run: its result is the run's fencing token, or 0 if refused."""
    registry_key = job.started_job_registry.key
    return client.eval(START_SCRIPT, 2, registry_key, job.key, execution.composite_key, ttl, execution.id, job.id)


def held(client: Any, job: rq.job.Job, execution: Any) -> bool:
    """Whether this run still holds the job's lease (in a WATCHing pipeline: the check the transaction relies on)."""
    registry_key = job.started_job_registry.key
    return bool(client.eval(HELD_SCRIPT, 2, registry_key, job.key, execution.composite_key, execution.id))


class Lease:
    """The holder's side: until when, on this host's monotonic clock, the current run may go on.

    Kept in memory shared with forked work-horses, so that a horse stops when its
    worker could not renew, whichever process notices.
    """

    def __init__(self, margin: float) -> None:
        self.margin = margin
        self._shared = mmap.mmap(-1, 8)  # anonymous and MAP_SHARED: fork keeps it shared
        self._set(0.0)

    def _set(self, deadline: float) -> None:
        self._shared[:8] = struct.pack("d", deadline)

    @property
    def deadline(self) -> float:
        """Monotonic time by which the run must have stopped; 0 when no run holds a lease."""
        return float(struct.unpack("d", self._shared[:8])[0])

    def granted(self, sent_at: float, ttl: float) -> None:
        """The registration or renewal sent at ``sent_at`` (monotonic) holds for ``ttl`` s from when Redis ran it."""
        self._set(sent_at + ttl - self.margin)

    def lost(self) -> None:
        self._set(time.monotonic() - 1)

    def end(self) -> None:
        self._set(0.0)


class LeaseGuard(threading.Thread):
    """Stops the process running a job once its lease may have run out: after a freeze, at once.

    It does no I/O, so nothing it waits on (a cut network, a stalled Redis) can hold it up.
    """

    #: Seconds between looks at the deadline: also how late, at most, a thawed process stops.
    TICK = 0.05

    def __init__(self, lease: Lease, describe: Callable[[], str]) -> None:
        super().__init__(name="taskctl-lease-guard", daemon=True)
        self.lease, self.describe = lease, describe

    def run(self) -> None:
        while True:
            deadline = self.lease.deadline
            if deadline and time.monotonic() >= deadline:
                stop_run(self.describe())
            time.sleep(self.TICK)


def stop_run(what: str) -> None:
    """End this process now: its run may already have been given to another worker."""
    os.write(2, f"taskctl: {what}: lost its lease (Redis unreachable, or this process was frozen); "
                "stopping it here, another worker runs the job\n".encode())  # fmt: skip
    os._exit(LEASE_LOST_EXIT)
