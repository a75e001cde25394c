"""Dramatiq on the benchmark's Redis: its Redis broker, its default middleware, no results.

Dramatiq stores a result only with the Results middleware, which is left out: nothing reads
one (the jobs report through Redis themselves, see bench.jobs). Prefetch is its default,
twice the worker threads per process; the threads (``-t``) are set on the command line.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import jobs

broker = RedisBroker(url=jobs.redis_url())  # type: ignore[no-untyped-call]  # (Dramatiq's broker has no hints)
dramatiq.set_broker(broker)

noop = dramatiq.actor(actor_name="noop", broker=broker)(jobs.noop)
io_wait = dramatiq.actor(actor_name="io_wait", broker=broker)(jobs.io_wait)
stamp = dramatiq.actor(actor_name="stamp", broker=broker)(jobs.stamp)
