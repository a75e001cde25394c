"""Failed jobs at scale: what failed, why, how many, since when, and which of them to act on.

Read from RQ's FailedJobRegistry of each configured queue, the job hashes and the
jobs' latest results, 200 jobs a round trip (one script call): a summary of 100,000
failures is 500 round trips, not 200,000. A failure's cause is its exception
and message folded (``taskctl.causes``), so that an outage's thousands of failures
are a few lines. One filter selects what ``taskctl failed`` lists and what its
requeue and delete act on (``taskctl.failed_actions``).
"""

from __future__ import annotations

import json
import re
import time
import zlib
from base64 import b64decode
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from redis import Redis
from rq.results import Result

from taskctl.catalog import get_catalog
from taskctl.causes import fold, matches
from taskctl.connection import connect, lua
from taskctl.exceptions import InvalidArgumentsError, InvalidQueueError, UnknownJobError
from taskctl.rqclasses import FAILED_RUNS, Queue, parse_time
from taskctl.settings import Settings, get_settings
from taskctl.status import UNREADABLE
from taskctl.when import parse_at, parse_delay, show_time

#: Bytes of a job's data inflated to read its function's name, which comes first.
_NAME_BYTES = 512
_FUNC = re.compile(rb'\s*\[\s*"((?:[^"\\]|\\.)*)"')
_JOB_PREFIX = "rq:job:"
_RESULTS = Result.get_key("")  # type: ignore[no-untyped-call]
_FAILED = str(Result.Type.FAILED.value).encode()


@dataclass(frozen=True)
class FailedJob:
    id: str
    queue: str
    name: str
    """The job's catalog name (its function's path when it is not a catalog job)."""
    error: str
    """The last line of its traceback: the exception and its message."""
    cause: str
    """The error folded: what this failure has in common with others of its kind."""
    failed_at: datetime | None
    description: str = ""
    """Its call, as listed (read for the jobs listed only, see ``with_details``)."""
    attempts: int = 0


@dataclass(frozen=True)
class Cause:
    """Failed jobs of one job and one cause: how many, over what time, on which queues."""

    job: str
    cause: str
    count: int
    first_failed: datetime | None
    last_failed: datetime | None
    queues: tuple[str, ...]


@dataclass(frozen=True)
class FailureFilter:
    """Which failed jobs: each given field narrows; none given, all of them."""

    job: str | None = None
    queue: str | None = None
    cause: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def admits(self, failed: FailedJob) -> bool:
        if self.job is not None and failed.name != self.job:
            return False
        if self.queue is not None and failed.queue != self.queue:
            return False
        if self.cause is not None and not matches(self.cause, failed.error, failed.cause):
            return False
        return self.within(failed.failed_at)

    def within(self, moment: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if moment is None:
            return False
        return (self.since is None or moment >= self.since) and (self.until is None or moment <= self.until)


def moment(value: str | datetime | None, option: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    """``2h`` (that long before ``now``) or an ISO 8601 time (in ``tz`` when it has no offset)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=tz)
    try:
        return now - parse_delay(value)
    except InvalidArgumentsError:
        pass
    try:
        return parse_at(value, tz)
    except InvalidArgumentsError:
        raise InvalidArgumentsError(
            f"{option} {value!r} is neither a time ago (30m, 2h, 1d) nor an ISO 8601 time (2026-12-01T09:00)"
        ) from None


def failure_filter(
    settings: Settings,
    job: str | None = None,
    queue: str | None = None,
    cause: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    now: datetime | None = None,
) -> FailureFilter:
    """The filter the CLI's and the dashboard's options describe; InvalidArgumentsError says what is wrong."""
    if queue is not None and queue not in settings.queues:
        raise InvalidQueueError(f"unknown queue {queue!r}; expected one of: {', '.join(settings.queues)}")
    if job is not None and not job.strip():
        raise InvalidArgumentsError("--job is empty; expected a job's name, as `taskctl jobs` lists them")
    if cause is not None and not cause.strip():
        raise InvalidArgumentsError("--cause is empty; expected an exception's type or words of its message")
    now = now or datetime.now(UTC)
    start, end = moment(since, "--since", settings.tz, now), moment(until, "--until", settings.tz, now)
    if start is not None and end is not None and end < start:
        raise InvalidArgumentsError(
            f"--until {show_time(end, settings.tz)} is before --since {show_time(start, settings.tz)}: "
            "the window is empty"
        )
    return FailureFilter(job=job, queue=queue, cause=cause, since=start, until=end)


def read_failed(connection: Redis, settings: Settings, queue: str | None = None) -> list[FailedJob]:
    """Every failed job of the configured queues (or of ``queue``), the latest failure first."""
    queues = [queue] if queue is not None else list(settings.queues)
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        for name in queues:
            # Scores are expiry times: the ones past are gone, or about to be (RQ's cleanup).
            pipe.zrangebyscore(Queue(name, connection=connection).failed_job_registry.key, now, "+inf")
        listed = pipe.execute()
    batches = [(name, chunk) for name, ids in zip(queues, listed, strict=True)
               for chunk in _chunks([job_id.decode() for job_id in ids], BATCH)]  # fmt: skip
    script = lua(connection, READ_SCRIPT)
    found: list[FailedJob] = []
    names: dict[bytes, str] = {}  # function paths -> job names, each looked up once per read
    # Redis runs a batch's script while this thread reads the one before: about half the time.
    with ThreadPoolExecutor(max_workers=1) as reader:
        ahead: deque[Future[Any]] = deque()
        for index, (name, chunk) in enumerate(batches):
            while len(ahead) < READ_AHEAD and index + len(ahead) < len(batches):
                ahead.append(reader.submit(script, args=batches[index + len(ahead)][1], client=connection))
            found.extend(_parse(name, chunk, ahead.popleft().result(), names))
    oldest = datetime.min.replace(tzinfo=UTC)
    found.sort(key=lambda failed: failed.failed_at or oldest, reverse=True)
    return found


class Found(NamedTuple):
    matched: list[FailedJob]
    """The failed jobs the filter admits, the latest first."""
    total: int
    """The failed jobs read (of the filter's queue, or of all queues)."""


def find_failed(connection: Redis, settings: Settings, which: FailureFilter, strict: bool = True) -> Found:
    """The failed jobs ``which`` admits, the latest first, and how many were read.

    A job name that is neither in the catalog nor among the failed jobs, and a cause
    that no failed job has, are mistakes (a typo would otherwise read as "nothing
    failed"): UnknownJobError and InvalidArgumentsError name them, unless not ``strict``
    (the jobs of a cause just requeued are no longer failed).
    """
    everything = read_failed(connection, settings, which.queue)
    if strict:
        _check_names(which, everything)
    return Found([failed for failed in everything if which.admits(failed)], len(everything))


def _check_names(which: FailureFilter, everything: list[FailedJob]) -> None:
    catalog = {entry.name for entry in get_catalog()}
    if which.job is not None and which.job not in catalog | {failed.name for failed in everything}:
        raise UnknownJobError(f"unknown job {which.job!r}; known jobs: {', '.join(sorted(catalog)) or 'none'}")
    cause = which.cause
    if cause is not None and everything and not any(matches(cause, f.error, f.cause) for f in everything):
        causes = summarize(everything)
        shown = "; ".join(c.cause for c in causes[:5]) + ("; …" if len(causes) > 5 else "")
        raise InvalidArgumentsError(f"no failed job's cause matches {cause!r}; the causes are: {shown}")


@dataclass(frozen=True)
class Listing:
    """What ``taskctl failed`` shows: the summary of the matching failed jobs, then the latest of them."""

    total: int
    matched: int
    causes: list[Cause]
    latest: list[FailedJob]


def list_failed(
    job: str | None = None,
    queue: str | None = None,
    cause: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    limit: int = 20,
    connection: Redis | None = None,
    settings: Settings | None = None,
    strict: bool = True,
) -> Listing:
    """``taskctl failed``: the failed jobs by job and cause, and the ``limit`` latest, with their calls.

    ``strict``: see ``find_failed``.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    which = failure_filter(settings, job, queue, cause, since, until)
    found = find_failed(connection, settings, which, strict)
    latest = with_details(connection, found.matched[:limit])
    return Listing(found.total, len(found.matched), summarize(found.matched), latest)


def summarize(failed: Iterable[FailedJob]) -> list[Cause]:
    """Failed jobs grouped by job and cause, the most frequent first."""
    groups: dict[tuple[str, str], list[FailedJob]] = {}
    for job in failed:
        groups.setdefault((job.name, job.cause), []).append(job)
    causes = []
    for (name, cause), members in groups.items():
        times = [member.failed_at for member in members if member.failed_at is not None]
        queues = tuple(sorted({member.queue for member in members}))
        causes.append(Cause(name, cause, len(members), min(times, default=None), max(times, default=None), queues))
    causes.sort(key=lambda c: (-c.count, c.job, c.cause))
    return causes


def with_details(connection: Redis, failed: Sequence[FailedJob]) -> list[FailedJob]:
    """The jobs with their calls and attempts read (what a listing shows beyond the summary)."""
    with connection.pipeline(transaction=False) as pipe:
        for job in failed:
            pipe.hmget(_JOB_PREFIX + job.id, "description", "meta")
        read = pipe.execute()
    detailed = []
    for job, (description, meta) in zip(failed, read, strict=True):
        detailed.append(replace(job, description=(description or b"").decode(errors="replace"),
                                attempts=_failed_runs(meta)))  # fmt: skip
    return detailed


#: For each job id: its data, its end time, and its latest result's type, traceback and id (a time).
#: One call a batch: as 2,000 commands, redis-py's packing of them was most of a summary's time.
READ_SCRIPT = f"""
local out = {{}}
for i, job_id in ipairs(ARGV) do
    local job = redis.call('HMGET', '{_JOB_PREFIX}' .. job_id, 'data', 'ended_at')
    local latest = redis.call('XREVRANGE', '{_RESULTS}' .. job_id, '+', '-', 'COUNT', 1)[1]
    local kind, traceback = false, false
    if latest then
        local fields = latest[2]
        for f = 1, #fields, 2 do
            local name, value = fields[f], fields[f + 1]
            if name == 'type' then kind = value elseif name == 'exc_string' then traceback = value end
        end
    end
    out[i] = {{job[1], job[2], kind, traceback, latest and latest[1] or false}}
end
return out
"""
#: Jobs per script call: a call holds Redis for its batch, about 20 µs a job.
BATCH = 200
#: Script calls sent ahead of the batch being read.
READ_AHEAD = 2


def _parse(queue: str, job_ids: list[str], read: list[list[Any]], names: dict[bytes, str]) -> Iterator[FailedJob]:
    for job_id, (data, ended_at, kind, error, result_id) in zip(job_ids, read, strict=True):
        if not data:
            continue  # expired, or deleted, between the registry read and this one
        line = _error(error) if kind == _FAILED else ""
        if ended_at:
            failed_at: datetime | None = parse_time(ended_at)
        elif result_id:  # an abandoned run has no end time: its result's id is when it was failed
            failed_at = datetime.fromtimestamp(int(result_id.split(b"-")[0]) / 1000, UTC)
        else:
            failed_at = None
        yield FailedJob(
            id=job_id, queue=queue, name=_name(data, names), error=line, cause=fold(line), failed_at=failed_at
        )


def _name(data: bytes, known: dict[bytes, str]) -> str:
    try:
        head = zlib.decompressobj().decompress(data, _NAME_BYTES)
    except zlib.error:
        head = data
    match = _FUNC.match(head)
    if match is None:
        return UNREADABLE
    path = match.group(1)
    if path not in known:
        text = path.decode(errors="replace")
        entry = get_catalog().by_path(text)
        known[path] = entry.name if entry else text
    return known[path]


def _error(traceback: bytes | None) -> str:
    """The last line of a result's traceback (RQ stores it compressed), as ``taskctl.status.last_line`` reads it."""
    if not traceback:
        return ""
    try:
        return zlib.decompress(b64decode(traceback)).decode(errors="replace").rstrip().rpartition("\n")[2].strip()
    except (ValueError, zlib.error):
        return ""


def _failed_runs(meta: bytes | None) -> int:
    try:
        return int(json.loads(meta or b"{}").get(FAILED_RUNS, 1))
    except (ValueError, TypeError, AttributeError):
        return 1


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
