"""The workers: RQ's, configured so that accepted jobs are not lost.

Run them with the stock commands, ``rq worker-pool -c taskctl.rqconfig -w
taskctl.worker.Worker -n N`` (the Procfile's) or ``rq worker ... -w
taskctl.worker.Worker``. Two classes:

- ``Worker`` (the default) runs jobs in its own process, as Celery's prefork
  children do: no fork per job, and while busy two Redis round trips per batch of
  jobs (its step records the jobs' successes and starts the next ones, up to 8 while
  jobs are short: taskctl.hotpath), so it runs short jobs tens of times faster
  than RQ's forking worker. A monitor thread
  keeps the job's heartbeat and ends the process (after recording the failure)
  when a job ignores its timeout; ``rq worker-pool`` replaces a worker process
  that died.
- ``ForkingWorker`` forks a work-horse per job, as stock ``rq worker`` does: a job
  that segfaults or is killed fails alone, with its exit signal as the reason,
  and the worker carries on. Choose it for native code that may crash.

What both add to RQ's workers, each for a failure seen in practice:

- taskctl's job and queue classes whatever the command line says (JSON only,
  catalog functions only, a dequeue with no loss window);
- heartbeats every few seconds and a short grace, and maintenance every few
  seconds, so a job whose worker died is retried or failed within a bounded time
  (about 30 s with the defaults; RQ's took about 815 s);
- a lease per run (taskctl.lease): a run goes on only while its worker renews the
  job's lease in time, and stops before the lease can run out, so that two runs
  of a job never overlap; a run that lost it records nothing; each run takes a
  fencing token (taskctl.fencing) for what it writes;
- processes that die with their parent (``PR_SET_PDEATHSIG``): a work-horse, a
  scheduler, a pool's worker never run on as orphans after the process that
  supervises them was killed;
- they survive Redis going away, even in the middle of a job: they wait for Redis
  to come back and carry on, where RQ's worker exits;
- an optional memory limit per job, so a job that exhausts memory fails with
  MemoryError instead of taking the host down;
- retry accounting, permanent errors that spend no retry, and chains whose later
  steps are canceled when a step fails for good.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import functools
import inspect
import logging
import multiprocessing
import os
import re
import resource
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, cast

import rq
import rq.executions
import rq.group
import rq.scheduler
import rq.utils
import rq.worker.base
import rq.worker_registration
from redis.exceptions import WatchError
from rq.defaults import (
    DEFAULT_JOB_MONITORING_INTERVAL,
    DEFAULT_MAINTENANCE_TASK_INTERVAL,
    UNSERIALIZABLE_RETURN_VALUE_PAYLOAD,
)
from rq.exceptions import StopRequested
from rq.executions import ExecutionRegistry
from rq.logutils import ColorizingStreamHandler, blue, green
from rq.rate_limit import RateLimitRegistry
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry, ReadyJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import as_text

from taskctl import hotpath
from taskctl.catalog import get_catalog
from taskctl.connection import REDIS_DOWN_ERRORS, wait_until_answers
from taskctl.doctor import warn_if_unsafe
from taskctl.exceptions import LeaseLostError
from taskctl.foreign import WORKER_MARK, fleet_pass
from taskctl.lease import Lease, LeaseGuard, held, redis_now, renew, start
from taskctl.rqclasses import (
    FAILED_RUNS,
    NOT_RETRIED,
    RETRIES_WAIVED,
    UNREADABLE_DATA,
    CatalogJob,
    ClaimedJobs,
    Queue,
    cancel_dependents,
    retries_owed,
)
from taskctl.settings import get_settings
from taskctl.timeouts import AlarmDeathPenalty

PR_SET_PDEATHSIG = 1
#: How `rq worker-pool` names its workers (random hex); taskctl names them after host and pid.
_POOL_NAME = re.compile(r"[0-9a-f]{32}")
#: Seconds past its timeout before a job that swallowed the timeout is ended with the process running it.
OVERRUN_GRACE = 3
#: Seconds by which the worker's key must outlive the longest idle wait for a heartbeat to be skipped.
HEARTBEAT_MARGIN = 5
#: Jobs shorter than this on average (seconds) are started several per step: a round trip costs
#: a few hundred microseconds of the worker's time and of Redis's, a large share of a short job
#: and a small one of a longer job, which would only keep the jobs behind it waiting.
SHORT_JOB = 0.005
#: Seconds a job started ahead may wait for the jobs before it; past that it is given back to
#: its queue (its lease, counted from the step, must still have most of its time to run).
AHEAD_FOR = 1.0


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


#: The exit code of a process the watchdog ended (a work-horse, or an in-process worker).
TIMEOUT_EXIT_CODE = 124


class OwnedScheduler(rq.scheduler.RQScheduler):
    """RQ's scheduler process (``--with-scheduler``), which exits when its worker dies.

    Otherwise a worker killed with SIGKILL leaves its scheduler running as an
    orphan, holding the scheduling locks, for as long as the host is up.
    """

    def work(self) -> None:
        die_with_parent()
        super().work()  # type: ignore[no-untyped-call]


class ThreadScheduler(rq.scheduler.RQScheduler):
    """RQ's scheduler (``--with-scheduler``) as a thread of an in-process worker.

    A process of its own costs as much memory as the worker (a third of a
    two-worker pool); a thread costs next to nothing, and dies with its worker.
    A worker that forks work-horses keeps the process: forking beside a running
    thread could copy a lock that thread holds into the work-horse.
    """

    def start(self) -> threading.Thread:
        self._status = self.Status.STARTED
        thread = threading.Thread(target=rq.scheduler.run, args=(self,), name="rq-scheduler", daemon=True)
        self._process = thread  # type: ignore[assignment]  # RQ's worker checks is_alive() to restart it
        thread.start()
        return thread

    def _install_signal_handlers(self) -> None:
        """The worker's signals are the worker's; it stops this thread with ``request_stop``."""

    def work(self) -> None:
        # In an outage RQ's version ends the thread with a traceback; the worker starts the
        # scheduler again at its next maintenance pass once Redis answers, so one line is enough.
        try:
            super().work()  # type: ignore[no-untyped-call]
        except REDIS_DOWN_ERRORS as exc:
            self.log.warning("RQ's scheduler thread: Redis went away (%s); the worker restarts it when it is back", exc)


def _use_scheduler(scheduler_class: type[rq.scheduler.RQScheduler]) -> None:
    # RQ names its scheduler class in the worker module and offers no setting for it.
    rq.worker.base.RQScheduler = scheduler_class  # type: ignore[attr-defined]


class _Worker(rq.worker.BaseWorker):
    """What both worker classes add to RQ's."""

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
        # Named after the host, so that `taskctl queues` and the dashboard tell hosts apart
        # (`rq worker-pool` names its workers with random hex: replaced too). Not a worker
        # that RQ builds to read another's hash (Worker.all, prepare_for_work=False).
        if kwargs.get("prepare_for_work", True) and (not name or _POOL_NAME.fullmatch(name)):
            name = f"{socket.gethostname()}.{os.getpid()}"
        given = [queues] if isinstance(queues, (str, rq.Queue)) else list(queues)
        connection = kwargs.get("connection")
        if kwargs.get("prepare_for_work", True) and connection is not None:
            # RQ's start-up talks to Redis at once: a worker started while Redis cannot be
            # reached (a pool replacing a worker during an outage or a partition) died with a
            # traceback, over and over. It waits for Redis instead, one line per try.
            try:
                connection.ping()
            except REDIS_DOWN_ERRORS:
                wait_until_answers(connection, logging.getLogger("rq.worker"), settings.redis_url)
        rebuilt = [
            q
            if isinstance(q, Queue)
            else Queue(q if isinstance(q, str) else q.name, connection=connection or getattr(q, "connection", None))
            for q in given
        ]
        # Load the catalog here, once: a forked work-horse inherits it instead of
        # importing every job module again for every job.
        get_catalog()
        self.heartbeat_grace = settings.heartbeat_grace
        self._heartbeat_sent_at = self._key_expires_at = 0.0
        self._suspension_checked_at = -1.0
        self.job_memory_limit_mb = settings.job_memory_limit_mb
        self.lease = Lease(settings.lease_margin)
        self._leased_job_id = ""
        super().__init__(rebuilt, name, *args, **kwargs)
        # One line per job started and one per job ended is the log; RQ's third
        # ("result is kept for 500 seconds") says what the settings say, per job, and its
        # fourth ("Successfully completed ...") says again what "Job OK" says.
        self.log_result_lifespan = False
        if _SECOND_END_LINE not in self.log.filters:
            self.log.addFilter(_SECOND_END_LINE)
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

    def prepare_execution(self, job: rq.job.Job) -> rq.executions.Execution:
        """RQ's first step of a run (its prepare_execution and Execution.create), made conditional.

        RQ registers the run whatever became of the job since the worker claimed it; a
        worker frozen in between ran the job beside the run that started it meanwhile.
        Here the registration is taskctl.lease's start script, in RQ's pipeline: it
        refuses unless the job is still queued and no other run holds its lease, and it
        takes the run's fencing token. The lease is counted from before it was sent.
        """
        stepped = getattr(job, "stepped", None)
        if stepped is not None:  # started already, by the worker's step (taskctl.hotpath)
            execution, sent_at, ttl = stepped
            self.executions[execution.id] = execution
            self.lease.granted(sent_at, ttl)
            self._leased_job_id = job.id
            return execution  # type: ignore[no-any-return]
        ttl = self.get_heartbeat_ttl(job)
        execution = rq.executions.Execution(uuid.uuid4().hex, job.id, self.connection, worker_name=self.name)
        execution._job = job
        sent_at = time.monotonic()
        with self.connection.pipeline() as pipeline:
            start(pipeline, job, execution, ttl)
            execution.save(ttl=ttl, pipeline=pipeline)
            ExecutionRegistry(job_id=job.id, connection=pipeline).add(execution, ttl, pipeline)
            pipeline.sadd(execution.worker_executions_key, execution.composite_key)
            pipeline.expire(execution.worker_executions_key, ttl + 60)
            self.set_state(rq.worker.WorkerStatus.BUSY, pipeline=pipeline)
            token = pipeline.execute()[0]
        if not token:
            with self.connection.pipeline() as pipeline:
                execution.delete(job, pipeline)
                self.set_state(rq.worker.WorkerStatus.IDLE, pipeline=pipeline)
                pipeline.execute()
            raise LeaseLostError(f"job {job.id}: no longer queued, or another run holds its lease; not started here")
        self.executions[execution.id] = execution
        self.lease.granted(sent_at, ttl)
        self._leased_job_id = job.id
        job.fenced_by = execution  # type: ignore[attr-defined]  # CatalogJob's, or a plain attribute
        job.fencing_token = int(token)  # type: ignore[attr-defined]
        return execution

    def prepare_job_execution(self, job: rq.job.Job, remove_from_intermediate_queue: bool = False) -> None:
        if getattr(job, "stepped", None) is not None:  # RQ's writes here were the step's
            return
        # Every job was claimed into its queue's intermediate list (Queue.dequeue_any), not only one-queue workers'.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def maintain_heartbeats(self, job: rq.job.Job, execution: rq.executions.Execution) -> None:
        # RQ's, with the run's lease renewed by a script that refuses once the run is not
        # the job's current one (recovered, superseded, deleted): then the run stops.
        sent_at = time.monotonic()
        worker_ttl = self.job_monitoring_interval + 60
        working_time = (rq.utils.now() - job.started_at).total_seconds() if job.started_at else 0.0
        ttl = int(self.get_heartbeat_ttl(job, working_time=working_time))
        with self.connection.pipeline() as pipeline:
            self.heartbeat(worker_ttl, pipeline=pipeline)
            pipeline.hset(execution.key, "last_heartbeat", rq.utils.now().timestamp())
            pipeline.expire(execution.key, ttl)
            renewed_at = len(pipeline)
            renew(pipeline, job.started_job_registry.key, execution, ttl)
            ExecutionRegistry(job_id=job.id, connection=pipeline).add(execution, ttl, pipeline, xx=True)
            results = pipeline.execute()
            if results[0] == 1:  # the worker's hash had expired: RQ writes it again, with a TTL
                pipeline.hset(self.key, mapping=self.serialize())  # type: ignore[arg-type]
                pipeline.expire(self.key, worker_ttl)
                pipeline.execute()
        if results[renewed_at]:
            self.lease.granted(sent_at, ttl)
        elif self.lease.deadline:
            self.log.warning("Worker %s: job %s: the run is no longer the job's current one; stopping it",
                             self.name, job.id)  # fmt: skip
            self.lease.lost()

    def handle_execution_ended(self, job: rq.job.Job, queue: rq.Queue, heartbeat_ttl: int) -> None:
        # RQ sends a heartbeat here (a round trip per job) to cover the job's success or
        # failure callback; a CatalogJob never runs callbacks, so only the end time is kept.
        job.ended_at = rq.utils.now()

    def _job_lost_redis(self, job: rq.job.Job, exc: Exception) -> None:
        # Whatever could not be recorded, the job's started-registry entry expires and
        # the job is recovered; the worker itself waits for Redis instead of exiting.
        self.log.error("Worker %s: Redis went away during job %s (%s); waiting for it", self.name, job.id, exc)
        self._wait_for_redis()

    # RQ's work loop also talks to Redis outside its own outage handling (the
    # suspension check and maintenance at the top of the loop, a heartbeat after
    # each job); an outage there made the worker quit. These wait for Redis instead.

    def check_for_suspension(self, burst: bool) -> None:
        # RQ asks Redis before every job whether workers are suspended; once a second is as good.
        if time.monotonic() - self._suspension_checked_at >= 1:
            self._through_outages(super().check_for_suspension, burst)
            self._suspension_checked_at = time.monotonic()

    def clean_registries(self) -> None:
        # RQ's pass, without its line per queue per pass (an idle fleet logged thousands of
        # lines an hour of nothing) and with one line per job it recovered instead of RQ's.
        for queue in cast(list[Queue], self.queues):  # ours: __init__ rebuilt them
            if not queue.acquire_maintenance_lock(self.maintenance_interval):
                continue
            try:
                # By Redis's clock: the one the leases are scored with (taskctl.lease).
                registry, score = queue.started_job_registry, redis_now(self.connection)
                abandoned = _abandoned_runs(queue, registry.drop_superseded(score))
                with _silenced("rq.job", "rq.registry"):
                    registry.recover_expired(score, self._exc_handlers)
                    _clean_other_registries(queue)
                rq.worker_registration.clean_worker_registry(queue)
                given_back = ClaimedJobs(queue.key, connection=self.connection).cleanup(self, queue)
            finally:
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
            for job_id, worker_name in abandoned.items():
                self.log.warning("job %s: its worker %s stopped heartbeating; %s", job_id, worker_name,
                                 _what_became_of(queue, job_id))  # fmt: skip
            for job_id in given_back:
                self.log.warning(
                    "job %s: claimed by a worker that stopped before starting it; back at the front of %s",
                    job_id,
                    queue.name,
                )
        self.last_cleaned_at = rq.utils.now()  # type: ignore[assignment]

    def clean_group_registries(self) -> None:
        # RQ's, without its line per pass.
        if rq.group.Group.acquire_maintenance_lock(self.connection, max(int(self.maintenance_interval) - 1, 1)):
            rq.group.Group.clean_registries(connection=self.connection)

    def run_maintenance_tasks(self) -> None:
        self._through_outages(super().run_maintenance_tasks)
        settings = get_settings()
        self._through_outages(
            fleet_pass, self.connection, self.queue_names(), self.maintenance_interval, settings.failure_ttl, self.log
        )

    def _not_started(self, exc: LeaseLostError) -> None:
        self.log.warning("Worker %s: %s (this worker was held up between its claim and the start)", self.name, exc)

    def _lease_holder(self) -> str:
        return f"worker {self.name}, job {self._leased_job_id}"

    def _stopping(self) -> bool:
        return bool(self._stop_requested)

    def teardown(self) -> None:
        # RQ records the worker's death in Redis; in an outage that raised out of the work
        # loop, and a stop (SIGTERM) ended with a traceback and exit code 1.
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except REDIS_DOWN_ERRORS:
            self.log.warning("Worker %s: stopping while Redis cannot be reached; its key expires by itself", self.name)

    def unsubscribe(self) -> None:
        """RQ's, with the stop of its pubsub thread bounded.

        redis-py 8.2's PubSubWorkerThread.stop() waits for the thread without a timeout,
        and the thread, having read the reply to the UNSUBSCRIBE sent just before, may be
        waiting up to RQ's 60 s for a subscription again: a burst worker then hung a
        minute at exit (seen under load, one run in three). It is a daemon thread: one
        left waiting ends with the process.
        """
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        self.pubsub.unsubscribe()
        if "timeout" in inspect.signature(thread.stop).parameters:
            thread.stop(timeout=1)
        else:  # redis-py before 8.2: stop() does not wait
            thread.stop()
            thread.join(timeout=1)
        self.pubsub.close()

    def serialize(self) -> dict[str, Any]:
        # RQ's worker hash, plus what this worker is: so that workers that are not
        # taskctl's can be told apart (taskctl.foreign). RQ's tools ignore the field.
        return {**super().serialize(), WORKER_MARK: f"{type(self).__module__}.{type(self).__qualname__}"}

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # Retries wait out their backoff in RQ's scheduled registry, which only a
        # worker's scheduler empties: the plain `rq worker high default` must run one.
        kwargs["with_scheduler"] = True
        return bool(super().work(*args, **kwargs))

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        _lighten_logging()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ sends a heartbeat (three commands, one round trip) three to four times per
        # job. One alone is skipped while the last is recent and the worker's key is
        # sure to outlive the longest idle wait; one in a pipeline costs nothing and is sent.
        now = time.monotonic()
        recent = now - self._heartbeat_sent_at < self.job_monitoring_interval
        if pipeline is None and recent and now + self.dequeue_timeout + HEARTBEAT_MARGIN < self._key_expires_at:
            return
        # RQ shortens the key's TTL to the job's heartbeat TTL at each job start; a little
        # longer keeps the skip above possible. (A job's own heartbeat is its registry entry.)
        ttl = max(timeout or self.worker_ttl + 60, self.dequeue_timeout + 2 * HEARTBEAT_MARGIN)
        if pipeline is not None:  # the caller's pipeline: its caller handles the outage
            super().heartbeat(ttl, pipeline=pipeline)
        else:
            self._through_outages(super().heartbeat, ttl)
        self._heartbeat_sent_at, self._key_expires_at = now, now + ttl

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ sets "idle" twice per job; the second write changes nothing.
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline=pipeline)

    def _through_outages(self, call: Callable[..., Any], *args: Any) -> None:
        while True:
            try:
                call(*args)
                return
            except REDIS_DOWN_ERRORS:
                self._wait_for_redis()

    def _wait_for_redis(self) -> None:
        while True:
            try:
                if wait_until_answers(self.connection, self.log, get_settings().redis_url, self._stopping):
                    return
                # Asked to stop (SIGTERM, Ctrl-C) meanwhile: RQ's work loop stops on this, and
                # teardown copes with the outage; what this worker held is recovered once Redis is back.
                raise StopRequested()
            except REDIS_DOWN_ERRORS:  # from RQ's stop-signal handler, which writes to Redis
                continue

    def handle_exception(self, job: rq.job.Job, *exc_info: Any) -> None:
        # RQ calls this with the job's exception just before it decides on a retry:
        # count the failed run, and let a permanent error spend no retry (both are written
        # with the failure itself, in handle_job_failure).
        if isinstance(exc_info[1], REDIS_DOWN_ERRORS):
            # Most likely not the job's failure but this worker's Redis gone (the job's end
            # could not be recorded): then raise that, and the worker waits for Redis.
            self.connection.ping()
        job.meta[FAILED_RUNS] = int(job.meta.get(FAILED_RUNS, 0)) + 1
        if isinstance(exc_info[1], NOT_RETRIED):
            job.retries_left = 0
            job.meta[RETRIES_WAIVED] = True  # spent by taskctl: never given back (retries_owed)
        if isinstance(job, CatalogJob) and not job.readable:
            # RQ's version logs the job's function and arguments, which cannot be read.
            self.log.error("Worker %s: job %s: %s", self.name, job.id, UNREADABLE_DATA)
            return
        if isinstance(exc_info[1], LeaseLostError):  # a stale run: one line, not a traceback
            self.log.warning("Worker %s: job %s: %s", self.name, job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)

    def handle_job_failure(
        self, job: rq.job.Job, queue: rq.Queue, started_job_registry: Any = None, exc_string: str = "",
        execution: Any = None,
    ) -> None:  # fmt: skip
        if isinstance(job, CatalogJob) and not job.readable:
            job.retries_left = 0  # data that is not JSON will not become JSON on a retry
            exc_string = f"taskctl.exceptions.UnreadableJobError: {UNREADABLE_DATA}"
        fenced_by = getattr(job, "fenced_by", None)
        if fenced_by is None:  # not a run of this worker's (RQ's tools call this too)
            job.save_meta()  # type: ignore[no-untyped-call]
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        elif not self._record_failure(job, queue, exc_string, fenced_by):
            return
        if job.get_status(refresh=True) == rq.job.JobStatus.FAILED:
            cancel_dependents(job, f"{job.description or job.id} failed")

    def _record_failure(self, job: rq.job.Job, queue: rq.Queue, exc_string: str, execution: Any) -> bool:
        """RQ's handle_job_failure, in a transaction that holds only while the run holds its lease.

        RQ's writes the failure whatever became of the job meanwhile: a run that lost its
        lease recorded its failure, or its retry, over the newer run's. The writes are
        RQ's own (its data model), in one MULTI that WATCHes the job's hash: a recovery
        or a newer run's start changes that hash, and the transaction is not applied.
        """
        job.fenced_by = None  # type: ignore[attr-defined]
        stopped = self._stopped_job_id == job.id
        retry = job.should_retry and not stopped
        retries_left, status = job.retries_left, job._status
        with self.connection.pipeline() as pipeline:
            while True:
                try:
                    pipeline.watch(job.key)  # type: ignore[no-untyped-call]
                    if not held(pipeline, job, execution):
                        self.executions.pop(execution.id, None)
                        self.log.warning("Worker %s: job %s: run %s no longer holds the job's lease (recovered, or "
                                         "run again elsewhere); its failure is not recorded", self.name, job.id,
                                         getattr(job, "fencing_token", "?"))  # fmt: skip
                        return False
                    pipeline.multi()
                    if stopped:
                        job.set_status(rq.job.JobStatus.STOPPED, pipeline=pipeline)
                    elif not retry:
                        job.set_status(rq.job.JobStatus.FAILED, pipeline=pipeline)
                    pipeline.hset(job.key, "meta", job._serialize_meta())
                    self.cleanup_execution(job, pipeline=pipeline, execution=execution)
                    if not self.disable_default_exception_handler and not retry:
                        job._handle_failure(exc_string, pipeline=pipeline, worker_name=self.name,
                                            execution_id=execution.id, execution_started_at=execution.created_at,
                                            execution_ended_at=job.ended_at)  # fmt: skip
                    self.increment_failed_job_count(pipeline)
                    if job.started_at and job.ended_at:
                        self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
                    if retry:
                        _retry(job, queue, pipeline)
                    pipeline.execute()
                    break
                except WatchError:  # the hash changed (a heartbeat, or the end of the lease): look again
                    job.retries_left, job._status = retries_left, status
        if stopped:
            self._stopped_job_id = None
        elif not retry:
            job.send_webhooks(rq.job.JobStatus.FAILED, exc_string=exc_string)
        if not retry:
            self._enqueue_dependents_safely(queue, job)
        self._release_slot_safely(job)
        return True


class Worker(_Worker, rq.SimpleWorker):
    """Runs each job in the worker process itself: the default, and the fast one.

    What a work-horse gave, it gets another way: a monitor thread sends the job's
    heartbeats, and ends the process when a job ignores its timeout (the job is
    failed first, with that reason); the memory limit applies to the process, on
    top of what the worker itself uses. A job that crashes the interpreter takes
    the process with it: the job is recovered like any job whose worker died, and
    ``rq worker-pool`` starts a new worker. Where that is likely, use ForkingWorker.
    """

    death_penalty_class = AlarmDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if multiprocessing.parent_process() is not None:
            die_with_parent()  # a worker of `rq worker-pool`: it goes with its pool
        self._monitor = _JobMonitor(self)
        #: The runs that returned, to be recorded by the next step, each with its job, queue and run.
        self._ended: list[tuple[hotpath.Ended, rq.job.Job, rq.Queue, rq.executions.Execution]] = []
        #: Jobs started by steps but not begun yet, each with when its step was sent (monotonic, and RQ's time).
        self._ahead: collections.deque[tuple[hotpath.Started, float, datetime]] = collections.deque()
        #: A step sent while the jobs before it run, its replies read when they are needed (_look_ahead).
        self._sent: _Sent | None = None
        #: How many jobs the next step may start: doubled while jobs are short, up to the setting.
        self._claim, self._batch = 1, (0.0, 0)
        #: The running job whose start line waits for its end (a short job, begun in a batch).
        self._quiet_start: rq.job.Job | None = None
        self._prefetch = get_settings().prefetch
        #: The lease of a run a step starts: the heartbeat TTL of a job without a shorter timeout.
        self._step_lease = int(max(self.job_monitoring_interval, 1)) + self.heartbeat_grace
        #: The ended runs and the jobs ahead are the main thread's, and the monitor's once a job runs long.
        self._batch_lock = threading.Lock()
        #: Successes and their working time not yet added to RQ's worker statistics.
        self._successes, self._working_seconds, self._stats_sent_at = 0, 0.0, 0.0
        self._queues_by_key: dict[str, rq.Queue] = {}
        #: Each queue's started and finished registry keys, by queue key: asked for at every step.
        self._registry_keys: dict[str, tuple[str, str]] = {}

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        self._monitor.watch(job, queue)
        try:
            # SimpleWorker's, without its "idle" after each job: a busy worker goes straight
            # on to its next job, and says "idle" when it finds none (dequeue_job_and_maintain_ttl).
            self.perform_job(job, queue, self.prepare_execution(job))
        except LeaseLostError as exc:
            self._not_started(exc)
        except REDIS_DOWN_ERRORS as exc:
            # The job's code has returned: waiting for Redis is neither an overrun nor a run
            # that must stop with its lease (the job is run again once the lease is over).
            self._monitor.watch(None, None)
            self.lease.end()
            self._job_lost_redis(job, exc)
        finally:
            self._monitor.watch(None, None)
            self.lease.end()

    # The busy worker's path (taskctl.hotpath): the ends of runs are recorded by the step that
    # starts the next jobs, up to `prefetch` of them while jobs are short. Everything that is
    # not a plain success goes RQ's way.

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[rq.job.Job, rq.Queue] | None:
        with self._batch_lock:
            if not self._ahead:  # the batch begun: the step sent ahead of its last jobs brings the next
                self._collect(patient=True)
            if self._ahead and time.monotonic() - self._ahead[0][1] < AHEAD_FOR:
                began = self._began(*self._ahead.popleft(), ahead=True)
                self._look_ahead()
                return began
            self._collect(patient=True)  # its jobs too, if any: they go back with those that waited
            self._give_back(patient=True)  # jobs that waited too long: their leases are running out
            stepped = self._step(self._next_claim())
        if stepped is not None:
            return stepped
        self.record_ended()
        # Nothing queued: RQ's wait, which blocks until a job arrives (Queue.dequeue_any).
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _next_claim(self) -> int:
        """Double the jobs a step starts while the last step's took under SHORT_JOB each, else one."""
        sent_at, count = self._batch
        if count and (time.monotonic() - sent_at) / count < SHORT_JOB:
            self._claim = min(self._prefetch, 2 * self._claim)
        else:
            self._claim = 1
        return self._claim

    def _finalize_success(
        self, job: rq.job.Job, queue: rq.Queue, execution: rq.executions.Execution, return_value: Any
    ) -> None:
        """RQ's, less what a plain job does not have: its end waits for the next step, with one log line.

        A CatalogJob has no callbacks; a job with webhooks, one that returned a Retry, or one
        with anything for RQ to do after it goes RQ's way.
        """
        if not _plain(job) or job.webhooks or isinstance(return_value, rq.Retry):
            self.log_start_late(job, queue)
            super()._finalize_success(job, queue, execution, return_value)
            return
        job.ended_at = rq.utils.now()
        job._result = return_value
        job._status = rq.job.JobStatus.FINISHED
        self._ended_plainly(job, queue, execution)
        quiet, self._quiet_start = self._quiet_start, None
        if quiet is job:  # its start was not logged (a short job begun in a batch): one line says both
            self._log_start(job, queue, "Job OK")
        else:  # RQ's line
            self.log.info("Worker %s: %s: %s (%s)", self.name, green(queue.name), blue("Job OK"), job.id)

    def _finalize_failure(
        self, job: rq.job.Job, queue: rq.Queue, execution: rq.executions.Execution, exc_info: Any
    ) -> None:
        self.log_start_late(job, queue)  # a failure's lines follow the line of the job's start
        super()._finalize_failure(job, queue, execution, exc_info)

    def handle_job_success(self, job: rq.job.Job, queue: rq.Queue, started_job_registry: Any,
                           execution: rq.executions.Execution) -> None:  # fmt: skip
        if not _plain(job):
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        self._ended_plainly(job, queue, execution)

    def _ended_plainly(self, job: rq.job.Job, queue: rq.Queue, execution: rq.executions.Execution) -> None:
        """A plain run that returned, kept for the next step to record (taskctl.hotpath)."""
        assert job.started_at is not None and job.ended_at is not None
        ttl = job.get_result_ttl(self.default_result_ttl)
        working = (job.ended_at - job.started_at).total_seconds()
        started_registry, finished_registry = self._registries(queue)
        if ttl == 0:  # the job is deleted with its run: no result, no finished registry, no times
            ended = hotpath.Ended(
                job_id=job.id, execution_id=execution.id, started_registry=started_registry, finished_registry="",
                result_ttl=0, finished_score="", return_value="", started_at=0.0, ended_at=0.0, ended_at_text="",
                working_seconds=working,
            )  # fmt: skip
        else:
            try:
                value = hotpath.encode_result(job.serializer, job._result)
            except Exception:  # RQ's Result stores what it cannot serialize as this, and so does the step
                value = hotpath.encode_result(job.serializer, UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
            ended = hotpath.Ended(
                job_id=job.id, execution_id=execution.id, started_registry=started_registry,
                finished_registry=finished_registry, result_ttl=ttl,
                finished_score="+inf" if ttl < 0 else str(rq.utils.current_timestamp() + ttl), return_value=value,
                started_at=execution.created_at.timestamp(), ended_at=job.ended_at.timestamp(),
                ended_at_text=rq.utils.utcformat(job.ended_at), working_seconds=working,
            )  # fmt: skip
        with self._batch_lock:
            self._ended.append((ended, job, queue, execution))
            self.executions.pop(execution.id, None)
            self._successes += 1
            self._working_seconds += working

    def _step(self, claim: int, patient: bool = True) -> tuple[rq.job.Job, rq.Queue] | None:
        """Record the runs that ended and start up to ``claim`` jobs, waiting for the replies; the first is returned.

        The others wait in ``_ahead``. The monitor's steps are not ``patient``: they
        neither wait for Redis nor record RQ's way (from another thread) a run with
        dependents, which stays for the main thread's next step.
        """
        while True:
            try:
                sent = self._send(claim)
            except REDIS_DOWN_ERRORS:
                if not patient:
                    return None
                self._wait_for_redis()
                continue
            started = self._settle(sent, patient)
            if started is None:
                if not patient:
                    return None
                continue
            if not started:
                return None
            self._ahead.extend((job, sent.sent_at, sent.started_at) for job in started[1:])
            began = self._began(started[0], sent.sent_at, sent.started_at, ahead=False)
            self._look_ahead()
            return began

    def _look_ahead(self) -> None:
        """While short jobs run, the next step's round trips overlap the last two jobs of a batch.

        When the batch's second-to-last job begins, the next step goes out (the runs
        ended so far, the next jobs started); when its last job begins, the step's
        reply is read and the started jobs' hashes are asked for; when that job ends,
        they are read (``_collect``). A worker on short jobs then seldom waits for
        Redis: the script and the hashes are ready before it asks for them. It holds
        a batch more while it runs the last two jobs of the one before, under leases
        like any started job's (see "Guarantees").
        """
        sent = self._sent
        if sent is not None:
            try:
                sent.step.advance()
            except REDIS_DOWN_ERRORS:  # the next step finds out, and waits
                self._sent = None
                self._lost(sent)
            return
        if len(self._ahead) != 1 or self._next_claim() < 2:
            return
        with contextlib.suppress(*REDIS_DOWN_ERRORS):  # the next step finds out, and waits
            self._sent = self._send(self._claim)

    def _collect(self, patient: bool) -> None:
        """The step sent ahead, if any: its replies read, the jobs it started added to those ahead."""
        sent, self._sent = self._sent, None
        if sent is not None:
            started = self._settle(sent, patient)
            self._ahead.extend((job, sent.sent_at, sent.started_at) for job in started or ())

    def _send(self, claim: int) -> _Sent:
        """Send a step: the runs ended so far (taken from ``_ended``) and up to ``claim`` jobs to start."""
        started_at = rq.utils.now()
        sent_at = time.monotonic()
        stats = bool(self._successes) and (not claim or sent_at - self._stats_sent_at >= 1)
        successes, working = (self._successes, self._working_seconds) if stats else (0, 0.0)
        ended, self._ended = self._ended, []
        try:
            step = hotpath.send_step(
                self.connection, self.key, self.executions_key,
                [(q.key, self._registries(q)[0]) for q in self._ordered_queues], self.name,
                ended=[run[0] for run in ended], execution_ids=_execution_ids(claim),
                started_at_text=rq.utils.utcformat(started_at), started_at=started_at.timestamp(),
                lease_seconds=self._step_lease, set_busy=self.get_state() != rq.worker.WorkerStatus.BUSY,
                successes=successes, working_seconds=working,
            )  # fmt: skip
        except BaseException:
            self._ended[:0] = ended
            raise
        return _Sent(step, ended, sent_at, started_at, successes, working)

    def _settle(self, sent: _Sent, patient: bool) -> list[hotpath.Started] | None:
        """A sent step's outcome: the jobs it started, or None when it did nothing and is to be sent again."""
        try:
            outcomes, started = sent.step.collect()
        except REDIS_DOWN_ERRORS:
            self._lost(sent)
            if patient:
                self._wait_for_redis()
            return None
        if hotpath.NOT_PLAIN in outcomes:  # nothing was done: those runs are recorded RQ's way first
            if not patient:
                self._ended[:0] = sent.ended
                return None
            paired = list(zip(outcomes, sent.ended, strict=True))
            self._ended[:0] = [run for outcome, run in paired if outcome != hotpath.NOT_PLAIN]
            for outcome, run in paired:
                if outcome == hotpath.NOT_PLAIN:
                    self._recorded_rqs_way(*run)
            return None
        for outcome, run in zip(outcomes, sent.ended, strict=True):
            if outcome == hotpath.LEASE_LOST:
                self.log.warning("Worker %s: job %s: run %s no longer holds the job's lease (recovered, or run "
                                 "again elsewhere); its success is not recorded", self.name, run[1].id,
                                 getattr(run[1], "fencing_token", "?"))  # fmt: skip
        if sent.successes:
            self._successes -= sent.successes
            self._working_seconds -= sent.working_seconds
            self._stats_sent_at = sent.sent_at
        self._batch = (sent.sent_at, len(started))
        return started

    def _lost(self, sent: _Sent) -> None:
        """A step whose reply was lost to a Redis failure: it may have run or not.

        Its ended runs are sent again (a run recorded already reads as such), and the
        jobs it may have started are recovered when their leases run out.
        """
        self._ended[:0] = sent.ended

    def _recorded_rqs_way(
        self, ended: hotpath.Ended, job: rq.job.Job, queue: rq.Queue, execution: rq.executions.Execution
    ) -> None:
        """A run with dependents to enqueue: RQ's record, with its lease check."""
        self._successes -= 1
        self._working_seconds -= ended.working_seconds
        self.executions[execution.id] = execution
        super().handle_job_success(job, queue, queue.started_job_registry, execution)

    def _began(
        self, started: hotpath.Started, sent_at: float, started_at: datetime, *, ahead: bool
    ) -> tuple[rq.job.Job, rq.Queue]:
        """A job a step started, as RQ's start would have left it, and its queue."""
        self._state = rq.worker.WorkerStatus.BUSY
        job = CatalogJob(started.job_id, connection=self.connection)
        for field in (b"started_at", b"last_heartbeat"):  # as the step wrote them: set below, not parsed
            started.job_hash.pop(field, None)
        job.restore(started.job_hash)
        job.taskctl_runs = started.token - 1  # the runs before this one: the hash counts this one already
        job._status = rq.job.JobStatus.STARTED
        job.last_heartbeat = started_at
        # Its working time counts from now, not from the step that started it with the jobs before it.
        job.started_at = rq.utils.now() if ahead else started_at
        job.worker_name = self.name
        owed = retries_owed(job)
        if owed:  # the retries that runs no taskctl worker started spent (CatalogJob.prepare_for_execution)
            job.retries_left = (job.retries_left or 0) + owed
            self._through_outages(self.connection.hset, job.key, "retries_left", job.retries_left)
        execution = rq.executions.Execution(started.execution_id, job.id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = started_at
        execution._job = job
        job.fenced_by, job.fencing_token = execution, started.token
        job.stepped = (execution, sent_at, self._step_lease)  # type: ignore[attr-defined]
        queue = self._queue_of(started.queue_key)
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        if self._claim > 1:
            # A step that started several jobs: they took under SHORT_JOB each, so the line
            # at the start would come a millisecond before the one at the end. One line says
            # both at the end, or the monitor logs the start if the job runs on (_JobMonitor).
            self._quiet_start = job
        else:
            self._quiet_start = None
            self._log_start(job, queue)
        return job, queue

    def _log_start(self, job: rq.job.Job, queue: rq.Queue, outcome: str = "") -> None:
        """The line of a job's start, RQ's; with ``outcome``, the one line of a short job's start and end."""
        end = f": {outcome}" if outcome else ""
        if self.log_job_description:
            self.log.info("Worker %s: %s: %s (%s)%s", self.name, queue.name, job.description, job.id, end)
        else:
            self.log.info("Worker %s: %s: %s%s", self.name, queue.name, job.id, end)

    def log_start_late(self, job: rq.job.Job, queue: rq.Queue) -> None:
        """From the monitor: a job begun in a batch runs on, so its start is logged after all."""
        if self._quiet_start is job:
            self._quiet_start = None
            self._log_start(job, queue)

    def _give_back(self, patient: bool) -> None:
        """Put the jobs started ahead that did not begin back at the front of their queues (under the lock)."""
        if not self._ahead:
            return
        # Each came from one of the worker's queues, whose keys the step looked up (_registries).
        runs = [(started, self._registry_keys[started.queue_key][0]) for started, _, _ in self._ahead]
        try:
            if patient:
                self._through_outages(hotpath.give_back, self.connection, self.executions_key, runs)
            else:
                hotpath.give_back(self.connection, self.executions_key, runs)
        except REDIS_DOWN_ERRORS:
            return  # the monitor's: the main thread gives them back, or their leases run out
        self._ahead.clear()

    def _queue_of(self, queue_key: str) -> rq.Queue:
        queue = self._queues_by_key.get(queue_key)
        if queue is None:
            queue = self._queues_by_key[queue_key] = self.queue_class.from_queue_key(
                queue_key, connection=self.connection, death_penalty_class=self.death_penalty_class
            )
        return queue

    def flush(self) -> None:
        """From the monitor, while a job runs long: record the runs before it, give back the jobs after it."""
        if not (self._ended or self._ahead or self._sent) or not self._batch_lock.acquire(blocking=False):
            return  # nothing to do, or the main thread is between jobs, at its own step
        try:
            self._collect(patient=False)
            self._give_back(patient=False)
            if self._ended:
                self._step(0, patient=False)
        finally:
            self._batch_lock.release()

    def _registries(self, queue: rq.Queue) -> tuple[str, str]:
        keys = self._registry_keys.get(queue.key)
        if keys is None:
            keys = self._registry_keys[queue.key] = (queue.started_job_registry.key, queue.finished_job_registry.key)
        return keys

    def record_ended(self) -> None:
        """Record now the runs that ended, and the statistics not sent yet, as the next step would."""
        with self._batch_lock:
            self._collect(patient=True)
            if self._ended or self._successes:
                self._step(0)

    def teardown(self) -> None:
        with contextlib.suppress(*REDIS_DOWN_ERRORS, StopRequested):
            with self._batch_lock:
                self._collect(patient=True)
                self._give_back(patient=True)
            self.record_ended()
        super().teardown()

    def stop_scheduler(self) -> None:
        # RQ's version signals the scheduler's process; this one is a thread.
        if self.scheduler is not None and isinstance(self.scheduler._process, threading.Thread):
            self.scheduler.request_stop()
            self.scheduler._process.join(timeout=self.scheduler.interval + 5)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        _use_scheduler(ThreadScheduler)
        if self.get_redis_server_version() < (6, 2, 0):  # type: ignore[no-untyped-call]  # LPOP with a count
            self._prefetch = 1
        self._monitor.start()
        LeaseGuard(self.lease, self._lease_holder).start()
        if self.job_memory_limit_mb:
            limit_address_space(self.job_memory_limit_mb)
        return bool(super().work(*args, **kwargs))


class _JobMonitor(threading.Thread):
    """The in-process worker's stand-in for RQ's horse monitor: heartbeats, and the timeout nobody can swallow."""

    #: Seconds between the monitor's looks at the running job.
    TICK = 0.5

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="taskctl-job-monitor", daemon=True)
        self.worker = worker
        self._running: tuple[rq.job.Job, rq.Queue, float] | None = None

    def watch(self, job: rq.job.Job | None, queue: rq.Queue | None) -> None:
        # One assignment: no lock, no wake-up, so starting a job costs the worker nothing.
        self._running = (job, queue, time.monotonic()) if job is not None and queue is not None else None

    def run(self) -> None:
        beat_at = 0.0
        while True:
            time.sleep(self.TICK)
            running = self._running
            if running is None:
                continue
            job, queue, since = running
            now = time.monotonic()
            overrun = job.timeout and job.timeout > 0 and now - since > job.timeout + OVERRUN_GRACE
            if overrun and self._running is running:
                self._end_overrun(job, queue)
            if now - since >= self.TICK and self._running is running:
                self.worker.log_start_late(job, queue)
                self.worker.flush()  # a long job: the runs before it recorded, the jobs after it given back
            execution = self.worker.execution
            if now - max(since, beat_at) < self.worker.job_monitoring_interval or execution is None:
                continue
            beat_at = now
            # In an outage the main thread finds out and waits for Redis; the heartbeat can wait too.
            with contextlib.suppress(*REDIS_DOWN_ERRORS):
                self.worker.maintain_heartbeats(job, execution)

    def _end_overrun(self, job: rq.job.Job, queue: rq.Queue) -> None:
        """Fail a job that ignored its timeout (retried if it has retries), then end the process running it."""
        message = f"job ignored its {job.timeout} s timeout; taskctl ended the worker process running it"
        os.write(2, f"taskctl: {job.id}: {message}\n".encode())
        try:
            error = JobTimeoutException(message)
            job.ended_at = rq.utils.now()
            self.worker.handle_exception(job, JobTimeoutException, error, None)
            self.worker.handle_job_failure(
                job, queue, started_job_registry=queue.started_job_registry,
                exc_string=f"rq.timeouts.JobTimeoutException: {message}", execution=self.worker.execution,
            )  # fmt: skip
        finally:
            os._exit(TIMEOUT_EXIT_CODE)


class ForkingWorker(_Worker, rq.Worker):
    """Forks a work-horse per job, as stock ``rq worker`` does: slower, and a crash takes only the job.

    A job that segfaults, exhausts its memory limit or is killed fails alone, with
    the reason (the signal) recorded, and the worker carries on.
    """

    def work(self, *args: Any, **kwargs: Any) -> bool:
        _use_scheduler(OwnedScheduler)
        return bool(super().work(*args, **kwargs))

    def main_work_horse(self, job: rq.job.Job, queue: rq.Queue) -> None:
        parent = os.getppid()
        die_with_parent()
        if os.getppid() != parent:  # the worker died before the line above took effect
            os._exit(1)
        # The worker renews the lease; the horse stops itself when it was not renewed in
        # time, even when the worker is the one frozen or cut off.
        LeaseGuard(self.lease, self._lease_holder).start()
        if self.job_memory_limit_mb:
            limit_address_space(self.job_memory_limit_mb)
        if job.timeout and job.timeout > 0:
            # RQ stops an overrunning job by raising JobTimeoutException in it; a job
            # that catches every exception swallows that, and RQ's worker would let it
            # run 60 s more. This ends the work-horse itself a few seconds after the timeout.
            watchdog = threading.Timer(job.timeout + OVERRUN_GRACE, _overran, args=(job.id, job.timeout))
            watchdog.daemon = True
            watchdog.start()
        super().main_work_horse(job, queue)

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        try:
            super().execute_job(job, queue)
        except LeaseLostError as exc:  # from prepare_execution: no work-horse was forked
            self._not_started(exc)
        except REDIS_DOWN_ERRORS as exc:
            if self._horse_pid:  # it ends by itself, at the latest when its lease runs out
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self._horse_pid, 0)
                self._horse_pid = 0
            self.lease.end()
            self._job_lost_redis(job, exc)
        finally:
            self.lease.end()


@dataclasses.dataclass
class _Sent:
    """A step sent, with what it carried: the ended runs, when it went, the statistics it added."""

    step: hotpath.SentStep
    ended: list[tuple[hotpath.Ended, rq.job.Job, rq.Queue, rq.executions.Execution]]
    sent_at: float
    started_at: datetime
    successes: int
    working_seconds: float


def _execution_ids(count: int) -> list[str]:
    """Run ids as RQ makes them (32 hex digits, 128 random bits), from one read of the system's randomness."""
    random = os.urandom(16 * count).hex()
    return [random[i : i + 32] for i in range(0, 32 * count, 32)]


def _plain(job: rq.job.Job) -> bool:
    """A success the step records (taskctl.hotpath): a catalog job's run, with nothing for RQ to do after it."""
    return (
        isinstance(job, CatalogJob) and job.fenced_by is not None and not job._dependency_ids
        and not job.repeats_left and not job.group_id and not job.has_rate_limit
    )  # fmt: skip


def _retry(job: rq.job.Job, queue: rq.Queue, pipeline: Any) -> None:
    """RQ's Job.retry, with every write in the pipeline (RQ's writes the job's status outside it)."""
    interval = job.get_retry_interval()
    job.retries_left = (job.retries_left or 1) - 1
    if interval:
        at = rq.utils.now() + timedelta(seconds=interval)
        job.set_status(rq.job.JobStatus.SCHEDULED, pipeline=pipeline)
        queue.schedule_job(job, at, pipeline=pipeline)
        job.log.info("Job %s: scheduled for retry at %s, %s remaining", job.id, at, job.retries_left)
    else:
        queue._enqueue_job(job, pipeline=pipeline, at_front=job.enqueue_at_front_on_retry)
        job.log.info("Job %s: enqueued for retry, %s remaining", job.id, job.retries_left)


def _clean_other_registries(queue: rq.Queue) -> None:
    """RQ's clean_registries without the started registry, which LeaseRegistry cleans by Redis's clock."""
    for registry_class in (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry):
        registry_class(queue=queue, job_class=queue.job_class).cleanup()
    for rate_limit_registry in RateLimitRegistry.all(queue.connection):
        rate_limit_registry.cleanup()


def _abandoned_runs(queue: rq.Queue, job_ids: list[str]) -> dict[str, str]:
    """The runs whose lease has expired, which the registry cleanup is about to recover: id -> worker."""
    if not job_ids:
        return {}
    with queue.connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hmget(CatalogJob.key_for(job_id), ("status", "worker_name"))
        rows = pipeline.execute()
    return {
        job_id: as_text(worker or b"?") for job_id, (status, worker) in zip(job_ids, rows, strict=True)
        if status == b"started"
    }  # fmt: skip


def _what_became_of(queue: rq.Queue, job_id: str) -> str:
    status, retries_left = (
        as_text(v or b"") for v in queue.connection.hmget(CatalogJob.key_for(job_id), ("status", "retries_left"))
    )
    if status in ("queued", "scheduled"):
        return f"retried ({retries_left or 0} retries left)"
    if status == "failed":
        return "failed as abandoned (no retries left)"
    return f"now {status or 'gone'}"


class _ThreadFilter(logging.Filter):
    """Drops the records of the threads listed, for as long as they are listed."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread not in self.threads


_SILENCER = _ThreadFilter()


class _SecondEndLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Successfully completed"))


_SECOND_END_LINE = _SecondEndLine()


def _lighten_logging() -> None:
    """Log records skip what no handler's format shows: the caller's frame, the process.

    Python's logging documents these switches as its optimisations; the caller's frame
    is a walk up the stack, for each of a busy worker's two lines per job (about 2 µs a
    line). The thread stays: _ThreadFilter reads it. And RQ's handlers, writing to
    anything but a terminal, format as logging's own do (see _plain_format).
    """
    handlers = [
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
    ]
    formats = " ".join(str(getattr(handler.formatter, "_fmt", "") or "") for handler in handlers)
    if not re.search(r"%\((pathname|filename|module|funcName|lineno|stack_info)\)", formats):
        logging._srcfile = None
    if "%(process)" not in formats:
        logging.logProcesses = False
    if "%(processName)" not in formats:
        logging.logMultiprocessing = False
    for handler in handlers:
        if isinstance(handler, ColorizingStreamHandler):
            _plain_format(handler)


def _plain_format(handler: ColorizingStreamHandler) -> None:
    """RQ's handler asks its stream ``isatty()`` at every record, a system call: asked once here.

    On a terminal RQ's format stays. Elsewhere (a pipe, a file, journald: a deployed
    worker) RQ's own format is logging's, which it then calls without the question.
    """
    isatty = getattr(handler.stream, "isatty", None)
    with contextlib.suppress(ValueError, OSError):  # a closed stream: RQ's format stays
        if not (isatty and isatty()):
            handler.format = functools.partial(logging.StreamHandler.format, handler)  # type: ignore[method-assign]


@contextlib.contextmanager
def _silenced(*loggers: str) -> Iterator[None]:
    """Silence these loggers in this thread only, while the block runs (a job's own lines go on)."""
    for name in loggers:
        if _SILENCER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_SILENCER)
    _SILENCER.threads.add(threading.get_ident())
    try:
        yield
    finally:
        _SILENCER.threads.discard(threading.get_ident())


def limit_address_space(megabytes: int) -> None:
    """Let this process map at most ``megabytes`` more than it has now (RLIMIT_AS).

    Counted on top of what the process already uses, so the limit is the job's,
    whatever the worker itself, its threads and its libraries take.
    """
    try:
        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * resource.getpagesize()
    except OSError:  # no /proc: the limit is absolute
        in_use = 0
    limit = in_use + megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
