"""Periodic jobs, declared once in ``schedules.toml`` and reconciled with rq-scheduler.

Re-registering schedules at every start is how rq-scheduler users end up with
duplicates. Here each declared schedule has a stable name, hence a stable job id
(``periodic-NAME``), and a fingerprint of its declaration kept in the job's meta:
a sync adds what is new, replaces what changed, removes what is no longer
declared and leaves the rest alone (keeping its next run time). Every
declaration is checked before anything is written, so a bad file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import crontab

from taskctl.catalog import CatalogEntry, get_catalog
from taskctl.enqueue import describe, resolve_queue, resolve_result_ttl, resolve_timeout
from taskctl.exceptions import ScheduleError, TaskctlError
from taskctl.rqclasses import CatalogJob
from taskctl.rqscheduler import Scheduler
from taskctl.settings import Settings
from taskctl.when import parse_delay

NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
KEYS = {"job", "args", "kwargs", "queue", "cron", "every", "timeout"}
ID_PREFIX = "periodic-"
META_KEY = "schedule"


@dataclass(frozen=True)
class Declaration:
    name: str
    entry: CatalogEntry
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    timeout: int
    cron: str | None
    every: int | None
    timezone: str

    @property
    def job_id(self) -> str:
        return ID_PREFIX + self.name

    @property
    def when(self) -> str:
        return f"cron {self.cron} ({self.timezone})" if self.cron else f"every {self.every}s"

    @property
    def fingerprint(self) -> str:
        facts = [
            self.entry.path,
            self.args,
            self.kwargs,
            self.queue,
            self.timeout,
            self.cron,
            self.every,
            self.timezone,
        ]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SyncPlan:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    file_missing: Path | None = None

    def summary(self) -> str:
        if self.file_missing:
            return f"no schedules file at {self.file_missing}; schedules in Redis left as they are"
        parts = [f"{len(v)} {k}" for k, v in self.__dict__.items() if isinstance(v, list)]
        return ", ".join(parts)


def _check(name: str, raw: Any, settings: Settings) -> Declaration:
    """One declaration, or TaskctlError saying what is wrong with it."""
    if not NAME.fullmatch(name):
        raise TaskctlError("names may use only letters, digits, '-' and '_'")
    if not isinstance(raw, dict):
        raise TaskctlError("expected a table with job = ... and cron = ... or every = ...")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise TaskctlError(f"unknown key(s) {', '.join(unknown)}; expected: {', '.join(sorted(KEYS))}")
    if "job" not in raw:
        raise TaskctlError("job is missing")
    entry = get_catalog().get(str(raw["job"]))
    args, kwargs = raw.get("args", []), raw.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TaskctlError("args must be a list and kwargs a table")
    entry.bind(args, kwargs)
    if ("cron" in raw) == ("every" in raw):
        raise TaskctlError("give exactly one of cron = '...' and every = '...'")
    cron, every = raw.get("cron"), raw.get("every")
    if cron is not None:
        try:
            crontab.CronTab(str(cron))
        except ValueError as exc:
            raise TaskctlError(f"cron {cron!r} is not a cron expression: {exc}") from None
    if every is not None:
        seconds = every if isinstance(every, int) and not isinstance(every, bool) else None
        if seconds is None:
            seconds = int(parse_delay(str(every)).total_seconds())
        if seconds <= 0:
            raise TaskctlError(f"every {every!r} must be at least one second")
        every = seconds
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
        raise TaskctlError(f"timeout {timeout!r} must be a whole number of seconds")
    return Declaration(
        name=name,
        entry=entry,
        args=args,
        kwargs=kwargs,
        queue=resolve_queue(entry, raw.get("queue"), settings),
        timeout=resolve_timeout(entry, timeout, settings),
        cron=str(cron) if cron is not None else None,
        every=every,
        timezone=settings.timezone,
    )


def load_declarations(settings: Settings, path: Path | None = None) -> list[Declaration] | None:
    """Every declared schedule, checked; None when there is no schedules file."""
    path = path or settings.schedules_file
    if not path.is_file():
        return None
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"{path} is not valid TOML: {exc}") from None
    declarations, problems = [], []
    for name, raw in document.items():
        try:
            declarations.append(_check(name, raw, settings))
        except TaskctlError as exc:
            problems.append(f"schedule {name!r}: {exc}")
    if problems:
        raise ScheduleError(f"{path} has invalid schedules; nothing was changed:\n  " + "\n  ".join(problems))
    return declarations


def managed_jobs(scheduler: Scheduler) -> dict[str, tuple[CatalogJob, datetime]]:
    """The periodic jobs a sync created, by schedule name, with their next run (UTC)."""
    found = {}
    for job, when in scheduler.get_jobs(with_times=True):
        name = job.meta.get(META_KEY, {}).get("name") if isinstance(job.meta.get(META_KEY), dict) else None
        if name:
            found[name] = (job, when.replace(tzinfo=UTC))
    return found


def sync(scheduler: Scheduler, settings: Settings, dry_run: bool = False, path: Path | None = None) -> SyncPlan:
    """Make rq-scheduler's periodic jobs match the declarations (call it in the configured time zone)."""
    declarations = load_declarations(settings, path)
    if declarations is None:
        return SyncPlan(file_missing=path or settings.schedules_file)
    plan = SyncPlan()
    with scheduler.connection.lock("taskctl:schedules:sync", timeout=60, blocking_timeout=30):
        existing = managed_jobs(scheduler)
        for declaration in declarations:
            job = existing.pop(declaration.name, (None, None))[0]
            if job is not None and job.meta[META_KEY].get("fingerprint") == declaration.fingerprint:
                plan.unchanged.append(declaration.name)
                continue
            (plan.changed if job is not None else plan.added).append(declaration.name)
            if not dry_run:
                _register(scheduler, declaration, settings)
        for name, (job, _) in existing.items():
            plan.removed.append(name)
            if not dry_run:
                scheduler.cancel(job)
                job.delete()
    return plan


def _register(scheduler: Scheduler, declaration: Declaration, settings: Settings) -> None:
    options: dict[str, Any] = {
        "args": declaration.args,
        "kwargs": declaration.kwargs,
        "queue_name": declaration.queue,
        "timeout": declaration.timeout,
        # Not rq-scheduler's default of "forever": periodic results would pile up in Redis.
        "result_ttl": resolve_result_ttl(declaration.entry, settings),
        "id": declaration.job_id,
        "description": describe(declaration.entry, declaration.args, declaration.kwargs),
        "meta": {META_KEY: {"name": declaration.name, "fingerprint": declaration.fingerprint}},
    }
    if declaration.cron:
        scheduler.cron(declaration.cron, declaration.entry.func, **options)
    else:
        assert declaration.every is not None
        first = datetime.now(UTC) + timedelta(seconds=declaration.every)
        scheduler.schedule(first, declaration.entry.func, interval=declaration.every, **options)


@dataclass(frozen=True)
class ScheduledRun:
    """One entry of rq-scheduler: a periodic schedule's next run, or a delayed job."""

    job_id: str
    name: str | None
    description: str
    queue: str
    when: str
    next_run: datetime


def scheduled_runs(scheduler: Scheduler) -> list[ScheduledRun]:
    runs = []
    for job, when in scheduler.get_jobs(with_times=True):
        meta = job.meta.get(META_KEY)
        periodic = job.meta.get("cron_string") or job.meta.get("interval")
        runs.append(
            ScheduledRun(
                job_id=job.id,
                name=meta.get("name") if isinstance(meta, dict) else None,
                description=job.description or "",
                queue=job.origin,
                when=(
                    f"cron {job.meta['cron_string']}"
                    if job.meta.get("cron_string")
                    else f"every {job.meta['interval']}s"
                    if periodic
                    else "once"
                ),
                next_run=when.replace(tzinfo=UTC),
            )
        )
    return runs
