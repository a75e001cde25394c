"""The decorator that turns a plain function in ``jobs/`` into a catalog job.

It only records facts next to the function (its queue, its timeout); the function
is returned unchanged, so a job is tested by calling it. This module imports
nothing from RQ or Redis: a job knows nothing of how it is queued.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from taskctl.rates import parse_rate

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
    # At most this many runs at once (queued or running), across every worker: per value of
    # concurrency_key (a parameter's name, or a function of the job's arguments), else for the job.
    concurrency: int | None = None
    concurrency_key: str | Callable[..., Any] | None = None
    # At most rate's starts per period ("20/s", "100/m"), at most burst of them at once: per value
    # of rate_key if given, else for the job (taskctl.rates).
    rate: str | None = None
    burst: int | None = None
    rate_key: str | Callable[..., Any] | None = None


def job(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    result_ttl: int | None = None,
    concurrency: int | None = None,
    concurrency_key: str | Callable[..., Any] | None = None,
    rate: str | None = None,
    burst: int | None = None,
    rate_key: str | Callable[..., Any] | None = None,
) -> Callable[[F], F]:
    """Declare a function as a job: ``@job(queue="high", timeout=30, retries=5, backoff=10)``.

    ``name`` defaults to the function's name; it is what users type
    (``taskctl enqueue send_email ...``), so keep it stable. ``retries`` is how
    many times a failed run is tried again (0: never); ``backoff`` the first
    wait in seconds, doubled each time up to the configured cap, with jitter.
    ``result_ttl`` is how long a finished run and its result are kept, as RQ's
    option of that name: ``0`` keeps nothing (the job is deleted as it finishes,
    which costs Redis least), ``-1`` keeps them forever; unset, the settings say.
    ``concurrency`` is how many of its jobs may be queued or running at once across
    every worker and host (the others wait, uncharged, outside the queue); with
    ``concurrency_key`` (a parameter's name, or a function called with the job's
    arguments), that many per value of the key: ``@job(concurrency=1,
    concurrency_key="sku")``. ``rate`` is how many of its runs may start per period,
    across every worker (``"10/s"``, ``"100/m"``, ``"5/30s"``), ``burst`` how many of
    those at once (default: all of them), ``rate_key`` as ``concurrency_key``; a
    job over its rate waits, uncharged, until it may start.
    """

    def decorate(func: F) -> F:
        problems = [
            f"{what} must be {expected}, got {value}"
            for what, value, ok, expected in (
                ("timeout", timeout, timeout is None or timeout > 0, "a positive number of seconds"),
                ("retries", retries, retries is None or retries >= 0, "0 or more"),
                ("backoff", backoff, backoff is None or backoff >= 0, "0 or more seconds"),
                ("result_ttl", result_ttl, result_ttl is None or result_ttl >= -1, "0 or more seconds, or -1"),
                (
                    "concurrency",
                    concurrency,
                    concurrency is None or _whole(concurrency, 1),
                    "a whole number, 1 or more",
                ),
            )
            if not ok
        ]
        for what, key, needs in (("concurrency_key", concurrency_key, concurrency), ("rate_key", rate_key, rate)):
            problems += _key_problems(func, what, key, needs)
        if burst is not None and rate is None:
            problems.append("burst needs a rate: how many starts per period")
        if rate is not None:
            try:
                parse_rate(rate, burst)
            except ValueError as exc:
                problems.append(str(exc))
        if rate is not None and concurrency is not None:
            problems.append("a job takes a concurrency limit or a rate limit, not both (yet)")
        if problems:
            raise ValueError(f"job {func.__name__}: " + "; ".join(problems))
        spec = JobSpec(name=name or func.__name__, queue=queue, timeout=timeout, retries=retries, backoff=backoff,
                       result_ttl=result_ttl, concurrency=concurrency, concurrency_key=concurrency_key, rate=rate,
                       burst=burst, rate_key=rate_key)  # fmt: skip
        setattr(func, SPEC_ATTRIBUTE, spec)
        return func

    return decorate


def spec_of(func: Callable[..., Any]) -> JobSpec | None:
    spec = getattr(func, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, JobSpec) else None


def _key_problems(func: Callable[..., Any], what: str, key: object, needs: object) -> list[str]:
    """What is wrong with a limit's key: it names a parameter of the job, or is a function of its arguments."""
    if key is None:
        return []
    problems = [] if needs is not None else [f"{what} needs its limit ({what.removesuffix('_key')}) too"]
    parameters = inspect.signature(func).parameters
    if isinstance(key, str) and key not in parameters:
        problems.append(f"{what} {key!r} names no parameter of the job;"
                        f" expected one of {list(parameters)} or a function of the job's arguments")  # fmt: skip
    elif not isinstance(key, str) and not callable(key):
        problems.append(f"{what} must be a parameter's name or a function, got {key!r}")
    return problems


def _whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
