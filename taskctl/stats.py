"""Counts per queue and the live workers: what an operator checks first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from redis import Redis

from taskctl.rqclasses import Queue, Worker
from taskctl.settings import Settings


@dataclass(frozen=True)
class QueueStats:
    name: str
    queued: int
    started: int
    finished: int
    failed: int
    deferred: int
    scheduled: int


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    hostname: str
    pid: int | None
    state: str
    queues: tuple[str, ...]
    current_job_id: str | None
    last_heartbeat: datetime | None


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
            )
        )
    return stats


def workers(connection: Redis) -> list[WorkerInfo]:
    return [
        WorkerInfo(
            name=w.name,
            hostname=w.hostname or "?",
            pid=w.pid,
            state=w.get_state(),
            queues=tuple(w.queue_names()),
            current_job_id=w.get_current_job_id(),
            last_heartbeat=w.last_heartbeat,
        )
        for w in sorted(Worker.all(connection=connection), key=lambda w: w.name)
    ]
