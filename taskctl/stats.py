"""Counts per queue and the live workers: what an operator checks first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from rq.utils import str_to_date

from taskctl.foreign import taskctl_worker_names
from taskctl.rqclasses import Queue
from taskctl.settings import Settings
from taskctl.worker import Worker


@dataclass(frozen=True)
class QueueStats:
    name: str
    queued: int
    started: int
    finished: int
    failed: int
    deferred: int
    scheduled: int
    oldest_queued_age: float
    """Seconds the job at the head of the queue has waited; 0 when the queue is empty."""


@dataclass(frozen=True)
class SchedulerStats:
    waiting: int
    """Delayed and periodic jobs rq-scheduler holds."""
    overdue: int
    """Of those, the ones past their time: above 0 for long means no scheduler process is running."""


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    hostname: str
    pid: int | None
    state: str
    queues: tuple[str, ...]
    current_job_id: str | None
    last_heartbeat: datetime | None
    taskctl: bool
    """False for a worker that is not taskctl's: it fails taskctl's jobs (see taskctl.foreign)."""


def queue_stats(connection: Redis, settings: Settings) -> list[QueueStats]:
    """Counts for the configured queues, in priority order, then any other queue RQ knows."""
    known = [q.name for q in Queue.all(connection=connection)]
    names = list(settings.queues) + sorted(set(known) - set(settings.queues))
    stats = []
    for name in names:
        queue = Queue(name, connection=connection)
        stats.append(
            QueueStats(
                name=name,
                queued=queue.count,
                started=queue.started_job_registry.count,
                finished=queue.finished_job_registry.count,
                failed=queue.failed_job_registry.count,
                deferred=queue.deferred_job_registry.count,
                scheduled=queue.scheduled_job_registry.count,
                oldest_queued_age=_head_age(queue, connection),
            )
        )
    return stats


def _head_age(queue: Queue, connection: Redis) -> float:
    head = queue.get_job_ids(0, 1)
    if not head:
        return 0.0
    stamp = connection.hget(queue.job_class.redis_job_namespace_prefix + head[0], "enqueued_at")
    if not stamp:
        return 0.0
    enqueued = str_to_date(stamp)
    return max(0.0, (datetime.now(UTC) - enqueued.replace(tzinfo=UTC)).total_seconds())


def scheduler_stats(connection: Redis) -> SchedulerStats:
    from taskctl.rqscheduler import Scheduler

    key = Scheduler.scheduled_jobs_key
    # rq-scheduler enqueues a job once its whole-second time has come; a few seconds late is normal.
    return SchedulerStats(waiting=connection.zcard(key), overdue=connection.zcount(key, 0, time.time() - 60))


def workers(connection: Redis) -> list[WorkerInfo]:
    found = sorted(Worker.all(connection=connection), key=lambda w: w.name)
    ours = taskctl_worker_names(connection, [w.name for w in found])
    return [
        WorkerInfo(
            name=w.name,
            hostname=w.hostname or "?",
            pid=w.pid,
            state=w.get_state(),
            queues=tuple(w.queue_names()),
            current_job_id=w.get_current_job_id(),
            last_heartbeat=w.last_heartbeat,
            taskctl=w.name in ours,
        )
        for w in found
    ]
