"""taskctl's rq-scheduler: where delayed and periodic jobs wait, for every process that reads or adds them.

The enqueue API, ``taskctl status``, the failed-job commands, the dashboard and
the scheduler process (``taskctl.scheduler``) all use this one class. What it
adds to rq-scheduler, and why:

- Its job and queue classes: rq-scheduler has no serializer option, and would
  otherwise store pickled jobs that run any function.
- A claim per (job, due time) before enqueueing, so that two scheduler processes
  (a rolling deploy, a second host) never enqueue one due run twice; its own
  lock can expire in the middle of a long pass.
- ``local_time_in``: rq-scheduler reads cron expressions in the process's local
  time, so whoever computes a run's time sets the configured zone first.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq_scheduler import Scheduler as RQScheduler

from taskctl.connection import get_redis
from taskctl.exceptions import UnreadableJobError
from taskctl.rqclasses import CatalogJob, Queue
from taskctl.settings import Settings, get_settings

# rq-scheduler calls crontab the old way on purpose here: cron is read in local time (our
# TZ, see local_time_in). crontab says so with a ten-line FutureWarning at every parse.
warnings.filterwarnings("ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning)

#: How long a claim on one due run is kept: far longer than any pass takes.
CLAIM_TTL = 3600


class Scheduler(RQScheduler):  # type: ignore[misc]
    def enqueue_job(self, job: CatalogJob) -> Any:
        due = self.connection.zscore(self.scheduled_jobs_key, job.id)
        if due is None or due > time.time():
            return None  # another scheduler moved it on (enqueued, rescheduled or cancelled)
        claim = f"{self.scheduled_jobs_key}:claim:{job.id}:{int(due)}"
        if not self.connection.set(claim, self.name, nx=True, ex=CLAIM_TTL):
            self.log.info("%s: run due at %d already enqueued by another scheduler", job.id, due)
            return None
        try:
            return super().enqueue_job(job)
        except UnreadableJobError as exc:  # planted in Redis by something else: drop it, carry on
            self.log.error("%s: %s; removed from the schedule", job.id, exc)
            self.cancel(job)
            return None


def make_scheduler(settings: Settings | None = None, connection: Redis | None = None) -> Scheduler:
    settings = settings or get_settings()
    return Scheduler(
        connection=connection or get_redis(settings),
        interval=settings.scheduler_interval,
        job_class=CatalogJob,
        queue_class=Queue,
    )


@contextmanager
def local_time_in(timezone: str) -> Iterator[None]:
    """Make the process's local time ``timezone`` while the block runs (rq-scheduler reads cron in it)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = timezone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()
