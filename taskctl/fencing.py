"""Fencing tokens: what a job passes to the systems it changes, so that they refuse a stale run.

A lease stops a run that lost it within a fraction of a second of noticing, but a
run frozen in the middle of a write notices only when it thaws, and its write may
land first. Each run of a job has a number that only grows (every start of the
job, first run, retry or recovery, takes the next one), so the system written to
can keep the highest token it has seen for the job and refuse any lower one: the
stale run's write is refused by the database itself. See README "Writing a job".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """The run of a job that is executing now: the job's id and the run's fencing token."""

    job_id: str
    token: int


def current_run() -> Run | None:
    """The run executing this code, or None outside a worker (a unit test, a script)."""
    from rq import get_current_job

    job = get_current_job()
    token = getattr(job, "fencing_token", 0)
    if job is None or not token:
        return None
    return Run(job.id, int(token))
