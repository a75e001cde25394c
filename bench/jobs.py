"""The benchmark's jobs, the same functions for every system (the peers wrap them in bench.*_app).

huey, Dramatiq and Celery with its results ignored keep nothing a client could read back,
so the jobs report for themselves, in the same few commands whichever system runs them:
``noop`` and ``io_wait`` count themselves done (one INCR), ``stamp`` pushes the latency it
measured (one RPUSH). No job keeps a result (``result_ttl=0``), as the peers keep none.
"""

from __future__ import annotations

import os
import time

from redis import Redis

from taskctl.declare import job

#: What every finished no-op or I/O-bound job adds one to; the bench reads it for every system.
DONE_KEY = "bench:done"
#: Where each ``stamp`` job pushes the seconds from its enqueue to its start.
STAMPS_KEY = "bench:stamps"

_redis: Redis | None = None


def redis_url() -> str:
    """The bench's own Redis, which it names in REDIS_URL for every process it starts.

    Read here rather than through taskctl's settings, whose default is the machine's
    Redis on 6379: a job started outside the bench fails instead of writing there.
    """
    try:
        return os.environ["REDIS_URL"]
    except KeyError:
        raise RuntimeError("REDIS_URL is not set: bench's jobs run only under python -m bench") from None


def _connection() -> Redis:
    """One client per process, made on first use: worker pools fork after importing this module."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(redis_url())
    return _redis


@job(result_ttl=0)
def noop() -> None:
    """Do nothing but count: what is measured is the queue's own cost."""
    _connection().incr(DONE_KEY)


@job(result_ttl=0)
def io_wait(seconds: float = 0.05) -> None:
    """Wait as an HTTP call would: I/O-bound work."""
    time.sleep(seconds)
    _connection().incr(DONE_KEY)


@job(result_ttl=0)
def stamp(sent_at: float) -> float:
    """Seconds from enqueue to the start of this run (same machine, same clock)."""
    latency = time.time() - sent_at
    _connection().rpush(STAMPS_KEY, latency)
    return latency


@job(result_ttl=0, concurrency=100_000)
def noop_limited() -> None:
    """A no-op under a concurrency limit that never binds: what the limit itself costs."""
    _connection().incr(DONE_KEY)


@job(result_ttl=0, rate="1000000/s")
def noop_paced() -> None:
    """A no-op under a rate limit that never binds: what the check at each start costs."""
    _connection().incr(DONE_KEY)
