"""Celery on the benchmark's Redis, tuned as its docs advise for many short tasks.

Its "Optimizing" guide: a large prefetch multiplier when tasks are short and throughput
matters ("Say 64, or 128"; 128 drained no-op jobs faster than 64 in each of three paired
runs here); ignore results nothing reads (``task_ignore_result``) and turn rate limits
off where no task has one, as its task guide advises. Nothing reads a result
here (the jobs report through Redis themselves, see bench.jobs), so none is stored.
"""

from __future__ import annotations

from celery import Celery

from bench import jobs

_redis_url = jobs.redis_url()
# The backend stays, as in an application where some task's result is read; ignoring results
# is what spares the writes (and the client's subscription to each task's result channel).
app = Celery("bench", broker=_redis_url, backend=_redis_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_prefetch_multiplier=128,
    worker_disable_rate_limits=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

noop = app.task(name="noop", ignore_result=True)(jobs.noop)
io_wait = app.task(name="io_wait", ignore_result=True)(jobs.io_wait)
stamp = app.task(name="stamp", ignore_result=True)(jobs.stamp)
