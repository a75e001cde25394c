"""The benchmark's jobs, the same functions for every system (Celery wraps them in bench.celery_app)."""

from __future__ import annotations

import time

from taskctl.declare import job


@job()
def noop() -> None:
    """Do nothing: what is measured is the queue's own cost."""


@job()
def io_wait(seconds: float = 0.05) -> None:
    """Wait as an HTTP call would: I/O-bound work."""
    time.sleep(seconds)


@job()
def stamp(sent_at: float) -> float:
    """Seconds from enqueue to the start of this run (same machine, same clock)."""
    return time.time() - sent_at
