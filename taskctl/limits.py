"""Concurrency limits: at most N runs of a job at once, or N per key, across every worker and host.

RQ 3 has the mechanism (``rq.rate_limit``): a job over its limit is saved as
``rate_limited`` in a waiting set instead of its queue, so no worker takes it and
nothing behind it on its queue waits; each end of a run (success, failure,
recovery of a dead worker's run) lets the oldest waiting job into its queue, and
workers' maintenance frees a slot whose job is gone. A limit's slot is held from
the queue to the end of the run, so a limit counts queued and running jobs.
Rate limits (at most N starts per period) are taskctl's own: taskctl.rates.
This module decides which limits a call falls under (the call's, the settings', the
declaration's), names them (the job, and its key's value), and describes them and the
jobs waiting for them; RQ's data model is kept (``rq:rl:<key>``).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

from redis import Redis
from rq import RateLimit
from rq.job import Job
from rq.rate_limit import RateLimitRegistry
from rq.utils import as_text

from taskctl.catalog import CatalogEntry
from taskctl.exceptions import InvalidArgumentsError
from taskctl.rates import DUE_KEY, RATE_FIELD, RATE_PREFIX, RATES_KEY, Rate, parse_rate
from taskctl.settings import Settings

#: Prefix of taskctl's limit keys in RQ's rate limit registries (``rq:rl:<key>``).
LIMIT_PREFIX = "taskctl"


def concurrency_limit(
    entry: CatalogEntry, bound: inspect.BoundArguments, concurrency: int | None, settings: Settings
) -> RateLimit | None:
    """The call's concurrency limit as RQ's ``RateLimit``: its number and its key, or None.

    RQ's limiter is the one used: a job over its limit waits outside its queue
    (status ``rate_limited``), so no worker takes it and nothing behind it waits,
    and each end of a run lets the oldest waiting job in.
    """
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):  # fmt: skip
        raise InvalidArgumentsError(f"{entry.name}: concurrency must be a whole number, 1 or more; got {concurrency!r}")
    number = concurrency or dict(settings.concurrency).get(entry.name) or entry.spec.concurrency
    if number is None:
        return None
    return RateLimit(f"{LIMIT_PREFIX}:{_limit_name(entry, bound, entry.spec.concurrency_key, 'concurrency_key')}",
                     number)  # fmt: skip


def rate_limit(entry: CatalogEntry, bound: inspect.BoundArguments, rate: str | None, settings: Settings) -> str | None:
    """The call's rate limit as its job hash holds it (taskctl.rates), or None: the call's, the settings', the job's."""
    text = rate or dict(settings.rates).get(entry.name) or entry.spec.rate
    if text is None:
        return None
    try:
        parsed = parse_rate(text, entry.spec.burst if text == entry.spec.rate else None)
    except ValueError as exc:
        raise InvalidArgumentsError(f"{entry.name}: {exc}") from None
    return parsed.field(_limit_name(entry, bound, entry.spec.rate_key, "rate_key"))


def _limit_name(entry: CatalogEntry, bound: inspect.BoundArguments, key_of: object, what: str) -> str:
    """The job's name, and the value of its key (a parameter, or a function of the arguments) after a colon."""
    name = entry.name
    if isinstance(key_of, str):
        bound.apply_defaults()
        name += f":{bound.arguments[key_of]}"
    elif callable(key_of):
        try:
            name += f":{key_of(*bound.args, **bound.kwargs)}"
        except Exception as exc:  # the job's own code: whatever it raises is a bad call
            raise InvalidArgumentsError(f"{entry.name}: its {what} raised {exc!r}") from None
    return name


def waiting_for(job: Job) -> str:
    """What a job with status rate_limited waits for: its rate limit's next start, or its concurrency limit."""
    rate = getattr(job, "taskctl_rate", None)
    if rate:
        _, _, _, _, name = rate.split(" ", 4)
        due = job.connection.zscore(DUE_KEY, job.id)
        waiting = job.connection.zcard(f"{RATE_PREFIX}{name}:waiting")
        when = f"may start in {max(0.0, due - time.time()):.1f} s" if due is not None else "back in its queue"
        return f"rate limit {name} ({_rate_text(rate)}): {when}; {waiting} waiting"
    return _waiting_for_a_slot(job)


def _rate_text(field: str) -> str:
    starts, period, _, burst, _ = field.split(" ", 4)
    return Rate(int(starts), float(period), int(burst)).text


def _waiting_for_a_slot(job: Job) -> str:
    """The limit a waiting job waits for, how full it is, and how many wait for it.

    No place in line: RQ scores the waiting jobs in whole seconds, and lets those of one
    second in by id.
    """
    registry = RateLimitRegistry.from_job(job)
    with job.connection.pipeline(transaction=False) as pipeline:
        pipeline.zcard(registry.allowed_key)
        pipeline.zcard(registry.rate_limited_key)
        running, waiting = pipeline.execute()
    name = str(job.rate_limit_key).removeprefix(f"{LIMIT_PREFIX}:")
    return f"limit {name}: {running} of {job.rate_limit_concurrency} at once in use; {waiting} waiting"


@dataclass(frozen=True)
class LimitStats:
    name: str
    """The job's name, and the key's value after a colon for a limit per key."""
    concurrency: int
    running: int
    """Slots in use: jobs of the limit queued or running."""
    waiting: int
    oldest_wait: float
    """Seconds the longest-waiting job has waited (0: none waits)."""


def limit_stats(connection: Redis) -> list[LimitStats]:
    """Every limit RQ holds (taskctl's and any other RQ client's), by name; one round trip for all.

    RQ drops a limit's keys once no job holds or waits for a slot of it.
    """
    names = sorted(name.decode() for name in connection.smembers(RateLimitRegistry.rl_keys_key))  # type: ignore[union-attr]
    registries = [RateLimitRegistry(name, connection) for name in names]
    with connection.pipeline(transaction=False) as pipeline:
        for registry in registries:
            pipeline.hget(registry.config_key, "concurrency")
            pipeline.zcard(registry.allowed_key)
            pipeline.zcard(registry.rate_limited_key)
            pipeline.zrange(registry.rate_limited_key, 0, 0, withscores=True)
        replies = pipeline.execute()
    now = time.time()
    found = []
    for n, name in enumerate(names):
        concurrency, running, waiting, oldest = replies[4 * n : 4 * n + 4]
        found.append(LimitStats(
            name=name.removeprefix(f"{LIMIT_PREFIX}:"), concurrency=int(concurrency or 0), running=running,
            waiting=waiting, oldest_wait=max(0.0, now - oldest[0][1]) if oldest else 0.0,
        ))  # fmt: skip
    return found


@dataclass(frozen=True)
class RateStats:
    name: str
    """The job's name, and the key's value after a colon for a limit per key."""
    rate: str
    recent_starts: int
    """Starts in the last period (as of the last start or check)."""
    waiting: int
    clears_in: float
    """Seconds until the last job set aside may start (0: none waits)."""


def rate_stats(connection: Redis) -> list[RateStats]:
    """Every rate limit that has started or set aside a job in the last period; one round trip for all."""
    names = sorted(name.decode() for name in connection.smembers(RATES_KEY))  # type: ignore[union-attr]
    with connection.pipeline(transaction=False) as pipeline:
        for name in names:
            pipeline.zcard(f"{RATE_PREFIX}{name}")
            pipeline.zcard(f"{RATE_PREFIX}{name}:waiting")
            pipeline.zrange(f"{RATE_PREFIX}{name}:waiting", -1, -1, withscores=True)
        replies = pipeline.execute()
    found, now = [], time.time()
    for n, name in enumerate(names):
        starts, waiting, last = replies[3 * n : 3 * n + 3]
        if not starts and not waiting:
            connection.srem(RATES_KEY, name)  # idle for a period: its log has expired
            continue
        found.append(RateStats(name=name, rate=_rate_of(connection, name), recent_starts=starts, waiting=waiting,
                               clears_in=max(0.0, last[0][1] - now) if last else 0.0))  # fmt: skip
    return found


def _rate_of(connection: Redis, name: str) -> str:
    """The rate a limit was last checked with, from a job under it (its log's latest entry names one)."""
    log = f"{RATE_PREFIX}{name}"
    members: list[bytes] = connection.zrange(log, -1, -1) or connection.zrange(f"{log}:waiting", 0, 0)  # type: ignore[assignment]
    newest = [as_text(member) for member in members]
    if not newest:
        return "-"
    job_id = newest[0].rsplit(":", 1)[0] if ":" in newest[0] else newest[0]
    field = connection.hget(Job.key_for(job_id), RATE_FIELD)
    return _rate_text(as_text(field)) if field else "-"
