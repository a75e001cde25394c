"""Progress reporting for long jobs, without making the job depend on RQ.

A job calls :func:`report_progress`; inside a worker it lands in the job's meta
(shown by ``taskctl status`` and the dashboard), outside one (a unit test, a
script) it does nothing.
"""

from __future__ import annotations


def report_progress(done: int, total: int, message: str = "") -> None:
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        return
    job.meta["progress"] = {"done": done, "total": total, "message": message}
    job.save_meta()  # type: ignore[no-untyped-call]
