"""The worker: RQ's forking worker, configured so that accepted jobs are not lost.

Run it with the stock command: ``rq worker -c taskctl.rqconfig -w taskctl.worker.Worker``.
What it adds to ``rq.Worker``, each for a failure seen in practice:

- taskctl's job and queue classes whatever the command line says (JSON only,
  catalog functions only, a dequeue with no loss window);
- a work-horse (and a scheduler process) that dies with its worker
  (``PR_SET_PDEATHSIG``): a worker killed mid-job no longer leaves an orphan running
  the job while it is recovered and run again elsewhere;
- heartbeats every few seconds and a short grace, and maintenance every few
  seconds, so a job whose worker died is retried or failed within a bounded time
  (about 30 s with the defaults; RQ's took about 815 s);
- it survives Redis going away in the middle of a job: it waits for Redis to come
  back and carries on, where RQ's worker exits;
- an optional memory limit per job, so a job that exhausts memory fails with
  MemoryError instead of taking the host down;
- retry accounting, permanent errors that spend no retry, and chains whose later
  steps are canceled when a step fails for good.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import rq
import rq.scheduler
import rq.worker.base
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL, DEFAULT_MAINTENANCE_TASK_INTERVAL
from rq.serializers import JSONSerializer

from taskctl.catalog import get_catalog
from taskctl.connection import REDIS_DOWN_ERRORS, wait_until_answers
from taskctl.doctor import warn_if_unsafe
from taskctl.rqclasses import FAILED_RUNS, NOT_RETRIED, UNREADABLE_DATA, CatalogJob, Queue, cancel_dependents
from taskctl.settings import get_settings

PR_SET_PDEATHSIG = 1
#: Seconds past its timeout before a job that swallowed the timeout is ended with its work-horse.
HORSE_TIMEOUT_GRACE = 3


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # not a platform with a C library to ask
    _LIBC = None


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies; elsewhere, do nothing."""
    prctl = getattr(_LIBC, "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _overran(job_id: str, timeout: int) -> None:
    os.write(2, f"taskctl: job {job_id} ignored its {timeout} s timeout; ending its work-horse\n".encode())
    os._exit(TIMEOUT_EXIT_CODE)


#: The work-horse's exit code when the watchdog ended it.
TIMEOUT_EXIT_CODE = 124


class OwnedScheduler(rq.scheduler.RQScheduler):
    """RQ's scheduler process (``--with-scheduler``), which exits when its worker dies.

    Otherwise a worker killed with SIGKILL leaves its scheduler running as an
    orphan, holding the scheduling locks, for as long as the host is up.
    """

    def work(self) -> None:
        die_with_parent()
        super().work()  # type: ignore[no-untyped-call]


# RQ names its scheduler class in the worker module and offers no setting for it.
rq.worker.base.RQScheduler = OwnedScheduler  # type: ignore[attr-defined]


class Worker(rq.Worker):
    job_class = CatalogJob
    queue_class = Queue  # type: ignore[assignment]  # RQ types it as its own Queue; ours is a subclass

    def __init__(
        self, queues: Iterable[rq.Queue | str] | rq.Queue | str, name: str | None = None, *args: Any, **kwargs: Any
    ) -> None:
        settings = get_settings()
        kwargs["job_class"] = CatalogJob
        kwargs["queue_class"] = Queue
        kwargs["serializer"] = JSONSerializer
        # `rq worker` passes RQ's defaults explicitly: where it did, use ours.
        if kwargs.get("job_monitoring_interval", DEFAULT_JOB_MONITORING_INTERVAL) == DEFAULT_JOB_MONITORING_INTERVAL:
            kwargs["job_monitoring_interval"] = settings.job_monitoring_interval
        if kwargs.get("maintenance_interval", DEFAULT_MAINTENANCE_TASK_INTERVAL) == DEFAULT_MAINTENANCE_TASK_INTERVAL:
            kwargs["maintenance_interval"] = settings.maintenance_interval
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
        # Load the catalog here, once: each forked work-horse inherits it instead of
        # importing every job module again for every job.
        get_catalog()
        self.heartbeat_grace = settings.heartbeat_grace
        self.job_memory_limit_mb = settings.job_memory_limit_mb
        super().__init__(rebuilt, name, *args, **kwargs)
        if kwargs.get("prepare_for_work", True):
            warn_if_unsafe(self.connection, self.log)

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks for worker_ttl - 15 s (405 s) when idle, and runs maintenance
        # only between blocks: an idle worker would leave dead workers' jobs alone
        # for minutes.
        return max(1, min(self.worker_ttl - 15, self.maintenance_interval))

    def get_heartbeat_ttl(self, job: rq.job.Job, working_time: float = 0.0) -> int:
        # RQ adds a fixed 60 s of grace to each heartbeat; a job whose worker died is
        # only noticed once that has run out.
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(max(interval, 1)) + self.heartbeat_grace

    def prepare_job_execution(self, job: rq.job.Job, remove_from_intermediate_queue: bool = False) -> None:
        # Every job was claimed into its queue's intermediate list (Queue.dequeue_any), not only one-queue workers'.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def main_work_horse(self, job: rq.job.Job, queue: rq.Queue) -> None:
        parent = os.getppid()
        die_with_parent()
        if os.getppid() != parent:  # the worker died before the line above took effect
            os._exit(1)
        if self.job_memory_limit_mb:
            limit = self.job_memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if job.timeout and job.timeout > 0:
            # RQ stops an overrunning job by raising JobTimeoutException in it; a job
            # that catches every exception swallows that, and RQ's worker would let it
            # run 60 s more. This ends the work-horse itself a few seconds after the timeout.
            watchdog = threading.Timer(job.timeout + HORSE_TIMEOUT_GRACE, _overran, args=(job.id, job.timeout))
            watchdog.daemon = True
            watchdog.start()
        super().main_work_horse(job, queue)

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN_ERRORS as exc:
            # Redis went away mid-job. Whatever the horse could not record, the job's
            # started-registry entry expires and the job is recovered; the worker
            # itself waits for Redis and carries on instead of exiting.
            self.log.error("Worker %s: Redis went away during job %s (%s); waiting for it", self.name, job.id, exc)
            if self._horse_pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self._horse_pid, 0)
                self._horse_pid = 0
            wait_until_answers(self.connection, self.log, get_settings().redis_url)

    # RQ's work loop also talks to Redis outside its own outage handling (the
    # suspension check and maintenance at the top of the loop, a heartbeat after
    # each job); an outage there made the worker quit. These wait for Redis instead.

    def check_for_suspension(self, burst: bool) -> None:
        self._through_outages(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._through_outages(super().run_maintenance_tasks)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # the caller's pipeline: its caller handles the outage
            super().heartbeat(timeout, pipeline=pipeline)
        else:
            self._through_outages(super().heartbeat, timeout)

    def _through_outages(self, call: Callable[..., Any], *args: Any) -> None:
        while True:
            try:
                call(*args)
                return
            except REDIS_DOWN_ERRORS:
                wait_until_answers(self.connection, self.log, get_settings().redis_url)

    def handle_exception(self, job: rq.job.Job, *exc_info: Any) -> None:
        # RQ calls this with the job's exception just before it decides on a retry:
        # count the failed run, and let a permanent error spend no retry.
        job.meta[FAILED_RUNS] = int(job.meta.get(FAILED_RUNS, 0)) + 1
        job.save_meta()  # type: ignore[no-untyped-call]  # one HSET, on failures only
        if isinstance(exc_info[1], NOT_RETRIED):
            job.retries_left = 0
        super().handle_exception(job, *exc_info)

    def handle_job_failure(self, job: rq.job.Job, queue: rq.Queue, *args: Any, **kwargs: Any) -> None:
        if isinstance(job, CatalogJob) and not job.readable:
            job.retries_left = 0  # data that is not JSON will not become JSON on a retry
            kwargs["exc_string"] = f"taskctl.exceptions.UnreadableJobError: {UNREADABLE_DATA}"
        super().handle_job_failure(job, queue, *args, **kwargs)
        if job.get_status(refresh=True) == rq.job.JobStatus.FAILED:
            cancel_dependents(job, f"{job.description or job.id} failed")
