"""Concurrency limits: at most N runs of a job at once, or N per key, across every worker and host.

RQ 3 has the mechanism (``rq.rate_limit``): a job over its limit is saved as
``rate_limited`` in a waiting set instead of its queue, so no worker takes it and
nothing behind it on its queue waits; each end of a run (success, failure,
recovery of a dead worker's run) lets the oldest waiting job into its queue, and
workers' maintenance frees a slot whose job is gone. A limit's slot is held from
the queue to the end of the run, so a limit counts queued and running jobs.
This module decides which limit a call falls under (its declaration, the settings,
the call) and describes a waiting job; RQ's data model is kept (``rq:rl:<key>``).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

from redis import Redis
from rq import RateLimit
from rq.job import Job
from rq.rate_limit import RateLimitRegistry

from taskctl.catalog import CatalogEntry
from taskctl.exceptions import InvalidArgumentsError
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
    key_of = entry.spec.concurrency_key
    key = f"{LIMIT_PREFIX}:{entry.name}"
    if isinstance(key_of, str):
        bound.apply_defaults()
        key += f":{bound.arguments[key_of]}"
    elif key_of is not None:
        try:
            key += f":{key_of(*bound.args, **bound.kwargs)}"
        except Exception as exc:  # the job's own code: whatever it raises is a bad call
            raise InvalidArgumentsError(f"{entry.name}: its concurrency_key raised {exc!r}") from None
    return RateLimit(key, number)


def waiting_for(job: Job) -> str:
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
