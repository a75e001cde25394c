"""Celery on the benchmark's Redis, tuned as its docs advise for throughput (JSON, prefetch, acks late off)."""

from __future__ import annotations

from celery import Celery

from bench import jobs
from taskctl.settings import get_settings

# The same Redis as every other system in the run: taskctl's REDIS_URL, set by the bench.
_redis_url = get_settings().redis_url
app = Celery("bench", broker=_redis_url, backend=_redis_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=16,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

noop = app.task(name="noop")(jobs.noop)
io_wait = app.task(name="io_wait")(jobs.io_wait)
stamp = app.task(name="stamp")(jobs.stamp)
