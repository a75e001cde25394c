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


def job(*, name: str | None = None, queue: str | None = None, timeout: int | None = None) -> Callable[[F], F]:
    """Declare a function as a job: ``@job(queue="high", timeout=30)``.

    ``name`` defaults to the function's name; it is what users type
    (``taskctl enqueue send_email ...``), so keep it stable.
    """

    def decorate(func: F) -> F:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"job {func.__name__}: timeout must be a positive number of seconds, got {timeout}")
        setattr(func, SPEC_ATTRIBUTE, JobSpec(name=name or func.__name__, queue=queue, timeout=timeout))
        return func

    return decorate


def spec_of(func: Callable[..., Any]) -> JobSpec | None:
    spec = getattr(func, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, JobSpec) else None
