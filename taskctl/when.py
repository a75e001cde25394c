"""When a delayed job should run: ``--in 10m`` and ``--at 2026-12-01T09:00``, read in the configured zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from taskctl.exceptions import InvalidArgumentsError

_DELAY = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def show_time(moment: datetime | None, tz: ZoneInfo) -> str:
    """A time as people read it, in the configured zone; naive times (RQ's) are UTC."""
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def parse_delay(text: str) -> timedelta:
    """``90s``, ``10m``, ``1.5h``, ``2d``: a number and a unit, nothing else."""
    match = _DELAY.fullmatch(text.strip().lower())
    if not match:
        raise InvalidArgumentsError(f"--in {text!r} is not a delay; expected a number and a unit: 30s, 10m, 2h, 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_at(text: str, tz: ZoneInfo) -> datetime:
    """An ISO 8601 time; without an offset it is a wall-clock time in ``tz``."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgumentsError(
            f"--at {text!r} is not an ISO 8601 time; expected e.g. 2026-12-01T09:00 or 2026-12-01T09:00+01:00"
        ) from None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def due_time(
    at: datetime | None, delay: timedelta | None, tz: ZoneInfo, tolerance: float, now: datetime | None = None
) -> datetime | None:
    """The UTC time to run at, or None for "now".

    A time in the past is refused, except within ``tolerance`` seconds: a clock
    a little behind, or a command typed a little late, still runs (now).
    """
    if at is not None and delay is not None:
        raise InvalidArgumentsError("give --in or --at, not both")
    now = now or datetime.now(UTC)
    if delay is not None:
        if delay < timedelta(0):
            raise InvalidArgumentsError("a delay cannot be negative")
        return (now + delay) if delay > timedelta(0) else None
    if at is None:
        return None
    at = at if at.tzinfo is not None else at.replace(tzinfo=tz)
    if at <= now:
        if (now - at).total_seconds() <= tolerance:
            return None
        raise InvalidArgumentsError(f"--at {show_time(at, tz)} is in the past (now is {show_time(now, tz)})")
    return at.astimezone(UTC)
