"""The RQ classes taskctl plugs into RQ's seams.

A job in Redis is data anyone with Redis access can write. ``CatalogJob`` makes
sure that data can never name code to run: it reads and writes JSON only (never
pickle) and resolves its function through the job catalog, refusing anything
else before it is imported. ``Queue`` and ``Worker`` pin that job class, so the
stock ``rq worker -w taskctl.rqclasses.Worker`` behaves exactly like taskctl.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import rq
from redis import Redis
from rq.serializers import JSONSerializer

from taskctl.catalog import get_catalog
from taskctl.exceptions import JobNotAllowedError, PermanentError

#: Failures that another try cannot fix: they go straight to the failed jobs.
NOT_RETRIED = (PermanentError, JobNotAllowedError)
#: Job meta key counting the runs that raised (RQ keeps no count across retries).
FAILED_RUNS = "failed_runs"
#: Job meta key of a chord's callback: the group members whose results it receives first.
CHORD_SOURCES = "chord_sources"
#: Job meta key saying why a job was canceled by taskctl (a step before it failed).
CANCELED_BECAUSE = "canceled_because"


class CatalogJob(rq.job.Job):
    """A Job that speaks JSON and runs only catalog functions."""

    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        # Whatever serializer the caller passes (stock `rq worker` passes pickle),
        # job data is JSON: unpickling data from Redis would run code.
        super().__init__(id, connection=connection, serializer=JSONSerializer)

    @property
    def func(self) -> Callable[..., Any]:
        name = self.func_name
        entry = get_catalog().by_path(name) if name and self.instance is None else None
        if entry is None:
            raise JobNotAllowedError(f"{name!r} is not an allowed job: workers run only functions from the job catalog")
        sources = self.meta.get(CHORD_SOURCES)
        if sources:
            # A chord's callback: the group's results, in order, come first.
            return functools.partial(entry.func, self._results_of(list(sources)))
        return entry.func

    def _results_of(self, job_ids: list[str]) -> list[Any]:
        jobs = self.fetch_many(job_ids, connection=self.connection)
        return [job.return_value() if job is not None else None for job in jobs]


class Queue(rq.Queue):
    job_class = CatalogJob

    def __init__(self, name: str = "default", connection: Redis | None = None, **kwargs: Any) -> None:
        kwargs["job_class"] = CatalogJob
        kwargs["serializer"] = JSONSerializer
        super().__init__(name, connection=connection, **kwargs)


class Worker(rq.Worker):
    """RQ's forking worker, with taskctl's job and queue classes whatever the command line says."""

    job_class = CatalogJob
    queue_class = Queue  # type: ignore[assignment]  # RQ types it as its own Queue; ours is a subclass

    def __init__(
        self, queues: Iterable[rq.Queue | str] | rq.Queue | str, name: str | None = None, *args: Any, **kwargs: Any
    ) -> None:
        kwargs["job_class"] = CatalogJob
        kwargs["queue_class"] = Queue
        kwargs["serializer"] = JSONSerializer
        # Named after the host, so that `taskctl queues` and the dashboard tell hosts apart.
        name = name or f"{socket.gethostname()}.{os.getpid()}"
        given = [queues] if isinstance(queues, (str, rq.Queue)) else list(queues)
        connection = kwargs.get("connection")
        rebuilt = [
            q
            if isinstance(q, Queue)
            else Queue(q if isinstance(q, str) else q.name, connection=connection or getattr(q, "connection", None))
            for q in given
        ]
        super().__init__(rebuilt, name, *args, **kwargs)

    def handle_exception(self, job: rq.job.Job, *exc_info: Any) -> None:
        # RQ calls this with the job's exception just before it decides on a retry:
        # count the failed run, and let a permanent error spend no retry.
        job.meta[FAILED_RUNS] = int(job.meta.get(FAILED_RUNS, 0)) + 1
        job.save_meta()  # type: ignore[no-untyped-call]  # one HSET, on failures only
        if isinstance(exc_info[1], NOT_RETRIED):
            job.retries_left = 0
        super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job: rq.job.Job, queue: rq.Queue, *args: Any, **kwargs: Any) -> None:
        super().handle_job_failure(job, queue, *args, **kwargs)
        if job.get_status(refresh=True) == rq.job.JobStatus.FAILED:
            cancel_dependents(job, f"{job.description or job.id} failed")


def cancel_dependents(job: rq.job.Job, reason: str) -> None:
    """Cancel what waits on a job that failed for good, and what waits on those: they can never run.

    RQ would leave them deferred forever; canceled, with the reason in their meta,
    they show why in `taskctl status` and the dashboard.
    """
    pending = list(job.dependent_ids)
    while pending:
        dependent = CatalogJob.fetch_many([pending.pop()], connection=job.connection)[0]
        if dependent is None or dependent.get_status(refresh=False) != rq.job.JobStatus.DEFERRED:
            continue
        dependent.meta[CANCELED_BECAUSE] = reason
        dependent.save_meta()  # type: ignore[no-untyped-call]
        dependent.cancel()
        pending.extend(dependent.dependent_ids)
