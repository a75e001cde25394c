"""What application code keeps of an enqueued job: its id, and ways to ask about it.

A thin object over RQ's Job (kept as ``.job`` for anything RQ offers), so a web
handler can write ``enqueue(...).id`` and later ``JobHandle.fetch(id).status``
without knowing RQ.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis import Redis

from taskctl.rqclasses import CatalogJob


class JobHandle:
    def __init__(self, job: CatalogJob) -> None:
        self.job = job

    @classmethod
    def fetch(cls, job_id: str, connection: Redis | None = None) -> JobHandle:
        """The handle of an existing job; NoSuchJobError when Redis does not know the id."""
        from taskctl.connection import connect
        from taskctl.status import fetch_job

        return cls(fetch_job(job_id, connection or connect()))

    @property
    def id(self) -> str:
        return str(self.job.id)

    @property
    def queue(self) -> str:
        return str(self.job.origin)

    @property
    def status(self) -> str:
        """As stored now: queued, scheduled, deferred, started, finished, failed, canceled, stopped."""
        status = self.job.get_status(refresh=True)
        return str(status.value if status else "unknown")

    @property
    def scheduled_for(self) -> datetime | None:
        from taskctl.status import scheduled_for

        return scheduled_for(self.job) if self.status == "scheduled" else None

    def result(self, timeout: float | None = None) -> Any:
        """The return value; with ``timeout``, wait up to that many seconds for the job to end.

        Raises JobFailedError when the job failed, NoResultError when it has not
        finished (yet), WaitTimeoutError when the wait ran out.
        """
        from taskctl.status import result_of, wait_for

        if timeout is not None:
            wait_for(self.job, timeout)
        return result_of(self.job)

    def cancel(self) -> None:
        """Cancel the job if it has not started (JobStateError otherwise)."""
        from taskctl.failed_actions import cancel

        cancel(self.id, self.job.connection)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} on {self.queue}>"
