"""Rate limits: at most N starts of a job (or of one key of it) in any window of a period, fleet-wide.

RQ has no rate limiter (its ``rate_limit`` is a concurrency limit, taskctl.limits).
A rate is about starts, so it is checked where a worker takes a job, inside the
same Lua script that takes it (the busy worker's step, taskctl.hotpath, and the
idle worker's claim, taskctl.rqclasses): a job that would pass its limit is not
started but set aside, status ``rate_limited``, scored with the moment it may
start. The next claim or step of any worker at or after that moment puts it back
at the front of its queue, and the check is made again at its start. So a job
over its limit takes no retry, no worker spins on it (an idle worker sleeps until
the first one is due), and the jobs behind it on its queue go on.

Each limit keeps a log of its starts in the last period (a sorted set): a start
is allowed while fewer than N are in it, and, with a burst B below N, while
fewer than B are in the last B/N of the period. Jobs set aside are spaced by
period/N behind the last one waiting (or from the first moment one could start), so
that they come back one by one. Keys: ``taskctl:rate:<limit>`` (the log),
``<log>:waiting`` (the jobs set aside, by due time), ``taskctl:rate:due`` (all of
them, for the claims) and ``taskctl:rates`` (the limits' names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Job hash field holding a job's rate limit, written at enqueue: "N PERIOD BURST_WINDOW BURST NAME".
RATE_FIELD = "taskctl_rate"
RATE_PREFIX = "taskctl:rate:"
DUE_KEY = "taskctl:rate:due"
RATES_KEY = "taskctl:rates"

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    """At most ``starts`` per ``period`` seconds, at most ``burst`` of them at once."""

    starts: int
    period: float
    burst: int

    @property
    def text(self) -> str:
        shown = f"{self.starts}/{self.period:g}s"
        return shown if self.burst == self.starts else f"{shown}, burst {self.burst}"

    def field(self, name: str) -> str:
        """The job hash's value for a job under this rate, limit ``name``."""
        window = self.period * self.burst / self.starts
        return f"{self.starts} {self.period!r} {window!r} {self.burst} {name}"


def parse_rate(text: str, burst: int | None = None) -> Rate:
    """``20/s``, ``100/m``, ``5/30s``: a whole number of starts per period; ValueError saying what is expected."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) < 1 or (match.group(2) is not None and float(match.group(2)) <= 0):
        raise ValueError(f"rate {text!r} is not starts per period; expected e.g. 20/s, 100/m, 5/30s")
    starts = int(match.group(1))
    period = float(match.group(2) or 1) * _UNITS[match.group(3)]
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= starts):
        raise ValueError(f"burst must be a whole number from 1 to the rate's {starts}, got {burst!r}")
    return Rate(starts, period, burst or starts)


def lua_functions(job_prefix: str, queue_prefix: str) -> str:
    """Lua functions for the claim and the step scripts to begin with (RQ's key prefixes given: this
    module, which job declarations import, imports nothing of RQ's).

    ``rate_check`` returns 0 when the job may start now (and logs its start), else the
    time it is set aside until (and sets it aside). ``release_due`` puts back at the
    front of their queues the jobs set aside whose time has come.
    """
    return f"""
local function rate_parts(spec)
    local n, p, w, b, name = string.match(spec, '^(%S+) (%S+) (%S+) (%S+) (.*)$')
    return tonumber(n), tonumber(p), tonumber(w), tonumber(b), name
end
local function rate_check(job_id, spec, now)
    local n, p, w, b, name = rate_parts(spec)
    local log = '{RATE_PREFIX}' .. name
    redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. string.format('%.6f', now - p))
    local count = redis.call('ZCARD', log)
    local due = 0
    if count >= n then
        due = tonumber(redis.call('ZRANGE', log, count - n, count - n, 'WITHSCORES')[2]) + p
    end
    if b < n and redis.call('ZCOUNT', log, '(' .. string.format('%.6f', now - w), '+inf') >= b then
        due = math.max(due, tonumber(redis.call('ZRANGE', log, count - b, count - b, 'WITHSCORES')[2]) + w)
    end
    if due <= now then
        redis.call('ZADD', log, string.format('%.6f', now), job_id .. ':' .. string.format('%.6f', now))
        redis.call('PEXPIRE', log, math.ceil(p * 1000) + 1000)
        return 0
    end
    -- Behind the last one set aside, one interval (period/N) later: they come back one by one.
    local last = redis.call('ZRANGE', log .. ':waiting', -1, -1, 'WITHSCORES')[2]
    local at = last and math.max(due, tonumber(last) + p / n) or due
    local at_text = string.format('%.6f', at)
    redis.call('HSET', '{job_prefix}' .. job_id, 'status', 'rate_limited')
    redis.call('ZADD', '{DUE_KEY}', at_text, job_id)
    redis.call('ZADD', log .. ':waiting', at_text, job_id)
    redis.call('SADD', '{RATES_KEY}', name)
    return at
end
local function release_due(now, most)
    local due = redis.call('ZRANGEBYSCORE', '{DUE_KEY}', '-inf', string.format('%.6f', now), 'LIMIT', 0, most)
    for i = #due, 1, -1 do
        local job_id = due[i]
        redis.call('ZREM', '{DUE_KEY}', job_id)
        local h = redis.call('HMGET', '{job_prefix}' .. job_id, 'status', 'origin', '{RATE_FIELD}')
        if h[3] then
            local _, _, _, _, name = rate_parts(h[3])
            redis.call('ZREM', '{RATE_PREFIX}' .. name .. ':waiting', job_id)
        end
        if h[1] == 'rate_limited' and h[2] and h[3] then
            redis.call('HSET', '{job_prefix}' .. job_id, 'status', 'queued')
            redis.call('LPUSH', '{queue_prefix}' .. h[2], job_id)
        end
    end
end
"""
