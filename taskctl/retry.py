"""Retry policy: how many more tries, and how long to wait before each.

RQ's ``Retry`` takes a fixed list of waits. The list is drawn here, once per job,
doubling from the base wait up to a cap, each wait jittered (between half and all
of it) so that jobs that failed together (an outage) do not all come back
together.
"""

from __future__ import annotations

import functools
import random

from rq import Retry

from taskctl.catalog import CatalogEntry
from taskctl.exceptions import InvalidArgumentsError
from taskctl.settings import Settings


def backoff_intervals(retries: int, base: float, cap: float, rng: random.Random | None = None) -> list[int]:
    """Whole seconds to wait before each retry; 0 means "again at once"."""
    # The random module's own generator: seeding a new one for each call cost 10 us, more than
    # the rest of preparing the call; and it is seeded anew in a forked child, where one of
    # ours would draw the same waits as in its parent.
    draw = rng.random if rng else random.random
    # Uniform between half the ceiling and all of it (random.uniform, without its call).
    return [
        0 if ceiling <= 0 else max(1, round(ceiling * (1 + draw()) / 2)) for ceiling in _ceilings(retries, base, cap)
    ]


@functools.cache
def _ceilings(retries: int, base: float, cap: float) -> tuple[float, ...]:
    """The longest wait before each retry: doubling from the base, up to the cap (bulk enqueue asks often)."""
    return tuple(min(cap, base * 2**attempt) for attempt in range(retries))


def make_retry(entry: CatalogEntry, retries: int | None, backoff: float | None, settings: Settings) -> Retry | None:
    """The Retry for one job: explicit arguments, else the job's declaration, else the settings."""
    if retries is not None and retries < 0:
        raise InvalidArgumentsError(f"retries must be 0 or more, got {retries}")
    if backoff is not None and backoff < 0:
        raise InvalidArgumentsError(f"backoff must be 0 or more seconds, got {backoff:g}")
    spec = entry.spec
    count = retries if retries is not None else spec.retries if spec.retries is not None else settings.retries
    if count == 0:
        return None
    base = backoff if backoff is not None else spec.backoff if spec.backoff is not None else settings.backoff
    return Retry(max=count, interval=backoff_intervals(count, base, settings.backoff_cap))
