"""Celery on the benchmark's Redis, tuned as its docs advise for throughput (JSON, prefetch, acks late off)."""

from __future__ import annotations

import os

from celery import Celery

from bench import jobs

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
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
