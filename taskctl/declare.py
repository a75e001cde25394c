"""The decorator that turns a plain function in ``jobs/`` into a catalog job.

It only records facts next to the function (its queue, its timeout); the function
is returned unchanged, so a job is tested by calling it. This module imports
nothing from RQ or Redis: a job knows nothing of how it is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

SPEC_ATTRIBUTE = "__taskctl_job__"


@dataclass(frozen=True)
class JobSpec:
    """What a job declares about itself; ``None`` means "use the settings' default"."""

    name: str
    queue: str | None = None
    timeout: int | None = None
    retries: int | None = None
    backoff: float | None = None
    result_ttl: int | None = None


def job(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    result_ttl: int | None = None,
) -> Callable[[F], F]:
    """Declare a function as a job: ``@job(queue="high", timeout=30, retries=5, backoff=10)``.

    ``name`` defaults to the function's name; it is what users type
    (``taskctl enqueue send_email ...``), so keep it stable. ``retries`` is how
    many times a failed run is tried again (0: never); ``backoff`` the first
    wait in seconds, doubled each time up to the configured cap, with jitter.
    ``result_ttl`` is how long a finished run and its result are kept, as RQ's
    option of that name: ``0`` keeps nothing (the job is deleted as it finishes,
    which costs Redis least), ``-1`` keeps them forever; unset, the settings say.
    """

    def decorate(func: F) -> F:
        problems = [
            f"{what} must be {expected}, got {value}"
            for what, value, ok, expected in (
                ("timeout", timeout, timeout is None or timeout > 0, "a positive number of seconds"),
                ("retries", retries, retries is None or retries >= 0, "0 or more"),
                ("backoff", backoff, backoff is None or backoff >= 0, "0 or more seconds"),
                ("result_ttl", result_ttl, result_ttl is None or result_ttl >= -1, "0 or more seconds, or -1"),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"job {func.__name__}: " + "; ".join(problems))
        spec = JobSpec(name=name or func.__name__, queue=queue, timeout=timeout, retries=retries, backoff=backoff,
                       result_ttl=result_ttl)  # fmt: skip
        setattr(func, SPEC_ATTRIBUTE, spec)
        return func

    return decorate


def spec_of(func: Callable[..., Any]) -> JobSpec | None:
    spec = getattr(func, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, JobSpec) else None
