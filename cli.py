"""``taskctl``: enqueue, inspect and run background jobs.

A thin layer: each command parses, calls the ``taskctl`` package, prints. The
package is imported inside the commands so that ``taskctl --help`` starts fast.
Errors the user caused exit with 2 and name the bad value; an unreachable Redis
or a failed job exits with 1; neither shows a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from taskctl.outbox_ops import OutboxRow
    from taskctl.settings import Settings


def _invoke(invoke: Any, ctx: click.Context) -> Any:
    """Run a command, turning taskctl's named errors into click's: a message, never a traceback."""
    from taskctl import exceptions as exc

    try:
        return invoke(ctx)
    except (
        exc.UnknownJobError,
        exc.InvalidArgumentsError,
        exc.InvalidQueueError,
        exc.NoSuchJobError,
        exc.NoSuchOutboxRowError,
    ) as error:
        raise click.UsageError(str(error), ctx) from None
    except exc.TaskctlError as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:
        # Redis going away after the first command of this process: redis-py's own errors.
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if not isinstance(error, (RedisConnectionError, RedisTimeoutError, ConnectionError)):
            raise
        from taskctl.settings import get_settings

        raise click.ClickException(f"cannot reach Redis at {get_settings().redis_url_masked}: {error}") from None


class Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        return _invoke(super().invoke, ctx)


class Group(click.Group):
    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        # For the group's own callback (`taskctl failed` lists); subcommands have translated theirs.
        return _invoke(super().invoke, ctx)


Group.group_class = Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Background jobs for Python web applications, on RQ and Redis."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("job")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--queue", "-q", help="Queue to put the job on (default: the one the job declares).")
@click.option(
    "--job-timeout", type=click.IntRange(min=1), help="Seconds the job may run (default: its declared timeout)."
)
@click.option("--retries", type=click.IntRange(min=0), help="Times to try again after a failure (default: declared).")
@click.option("--backoff", type=click.FloatRange(min=0), help="Seconds before the first retry, doubled each time.")
@click.option("--job-id", help="Use this id instead of a random one.")
@click.option("--in", "delay", metavar="DELAY", help="Run after this delay: 30s, 10m, 2h, 1d.")
@click.option("--at", "at", metavar="TIME", help="Run at this ISO 8601 time (no offset: the configured zone).")
@click.option("--unique", is_flag=True, help="Refuse to enqueue when a job with --job-id exists already.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="At most this many of JOB (per its concurrency key) queued or running at once (default: declared).",
)
@click.option(
    "--rate", metavar="RATE", help="At most this many of JOB start per period: 20/s, 100/m (default: declared)."
)
@click.option("--wait", is_flag=True, help="Block until the job ends, then print its result or its error.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds --wait waits before giving up (the job goes on).",
)
def enqueue(
    job: str,
    args: tuple[str, ...],
    queue: str | None,
    job_timeout: int | None,
    retries: int | None,
    backoff: float | None,
    job_id: str | None,
    unique: bool,
    delay: str | None,
    at: str | None,
    concurrency: int | None,
    rate: str | None,
    wait: bool,
    wait_timeout: float,
) -> None:
    """Put JOB on its queue with ARGS: `value` is positional, `name=value` a keyword.

    Values are converted with the job's annotations: int, float, bool
    (true/false), JSON for list and dict parameters.
    """
    from taskctl.catalog import get_catalog
    from taskctl.connection import one_command_client
    from taskctl.enqueue import enqueue_call
    from taskctl.settings import get_settings
    from taskctl.when import parse_at, parse_delay

    settings = get_settings()
    job_args, job_kwargs = get_catalog().get(job).bind_text(args)
    handle = enqueue_call(
        job,
        job_args,
        job_kwargs,
        queue=queue,
        job_timeout=job_timeout,
        retries=retries,
        backoff=backoff,
        job_id=job_id,
        unique=unique,
        at=parse_at(at, settings.tz) if at else None,
        delay=parse_delay(delay) if delay else None,
        concurrency=concurrency,
        rate=rate,
        # The enqueue is the first thing this process sends: its error says when Redis is away.
        connection=one_command_client(settings),
        settings=settings,
    )
    # Read back only what is not known: a job given no time is on its queue.
    due = handle.scheduled_for if at or delay else None
    if due is not None:
        click.echo(f"Scheduled {job} as {handle.id} on queue {handle.queue} for {_time(due)}")
    elif handle.job.has_rate_limit and handle.status == "rate_limited":  # read back for limited jobs only
        click.echo(f"Enqueued {job} as {handle.id} on queue {handle.queue}, waiting for its concurrency limit")
    else:
        click.echo(f"Enqueued {job} as {handle.id} on queue {handle.queue}")
    if wait:
        # A failed (or stopped, canceled) job raises here, and the command exits with 1.
        click.echo(_json(handle.result(timeout=wait_timeout)))


@main.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Show where job JOB_ID is: its queue, state and timestamps (or that it waits in the outbox)."""
    from taskctl.connection import connect
    from taskctl.exceptions import NoSuchJobError
    from taskctl.status import fetch_job, report

    connection = connect()
    try:
        job = fetch_job(job_id, connection)
    except NoSuchJobError as missing:
        row = _outbox_row(job_id, missing)
        if row is not None:
            _echo_rows(_outbox_status(row))
            return
        # The relay writes the job before it deletes the row: one moved between the two looks is in Redis now.
        job = fetch_job(job_id, connection)
    info = report(job)
    rows = [
        ("id", info.id),
        ("job", info.name),
        ("call", info.description),
        ("queue", info.queue),
        ("status", info.status),
        *([("scheduled for", _time(info.scheduled_for))] if info.scheduled_for else []),
        *([("waiting for", info.waiting_for)] if info.waiting_for else []),
        ("enqueued at", _time(info.enqueued_at)),
        ("started at", _time(info.started_at)),
        ("ended at", _time(info.ended_at)),
        ("worker", info.worker or "-"),
        ("attempts", str(info.attempts)),
        ("run", str(info.run) if info.run else "-"),
        ("retries left", str(info.retries_left)),
    ]
    if info.progress:
        rows.append(("progress", _progress(info.progress)))
    if info.error:
        rows.append(("error", info.error))
    _echo_rows(rows)


def _echo_rows(rows: Sequence[tuple[str, str]]) -> None:
    for label, value in rows:
        click.echo(f"{label + ':':<15}{value}")


def _outbox_row(job_id: str, missing: Exception) -> OutboxRow | None:
    """The outbox row of an id Redis does not know; None when there is none. An outbox that cannot be asked: exit 1."""
    from taskctl.exceptions import OutboxUnavailableError
    from taskctl.outbox_ops import find_row, opened

    try:
        with opened() as db:
            return find_row(db, job_id)
    except OutboxUnavailableError as error:
        raise OutboxUnavailableError(f"{missing}; the outbox could not be asked: {error}") from None


def _outbox_status(row: OutboxRow) -> list[tuple[str, str]]:
    state = (
        f"stuck in the outbox: {row.stuck_reason}"
        if row.stuck
        else "waiting in the outbox (committed, not yet moved to Redis by the relay)"
    )
    rows = [("id", row.job_id), ("job", row.job), ("call", row.description), ("queue", row.queue), ("status", state)]
    if row.due is not None:
        rows.append(("scheduled for", _unix_time(row.due)))
    rows.append(("written at", _unix_time(row.created_at)))
    if row.stuck:
        rows.append(("stuck at", _unix_time(row.stuck_at)))
        rows.append(("next", f"fix the cause, then `taskctl outbox retry {row.job_id}`; "
                             f"or `taskctl outbox delete {row.job_id}`"))  # fmt: skip
    return rows


@main.command()
@click.argument("job_id")
def result(job_id: str) -> None:
    """Print the return value of finished job JOB_ID as JSON."""
    from taskctl.connection import connect
    from taskctl.status import fetch_job, result_of

    click.echo(_json(result_of(fetch_job(job_id, connect()))))


@main.command(name="enqueue-many")
@click.argument("job")
@click.option("--from", "source", type=click.File("r"), required=True, help="JSON Lines or CSV file; - for stdin.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="Default: csv for *.csv, else jsonl.")
@click.option("--queue", "-q", help="Queue for every job (default: the one the job declares).")
@click.option("--skip-invalid", is_flag=True, help="Enqueue the good lines even when some are bad.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Jobs per round trip.")
def enqueue_many(
    job: str, source: Any, fmt: str | None, queue: str | None, skip_invalid: bool, batch_size: int
) -> None:
    """Enqueue JOB once per line of a file: a JSON array or object per line, or CSV with a header.

    Every line is checked first; with any bad line nothing is enqueued (unless --skip-invalid).
    """
    import sys

    from taskctl.bulk import read_calls
    from taskctl.connection import connect
    from taskctl.enqueue import enqueue_many as enqueue_calls

    fmt = fmt or ("csv" if str(getattr(source, "name", "")).endswith(".csv") else "jsonl")
    calls, bad = read_calls(job, source, fmt, queue=queue)  # type: ignore[arg-type]
    for line in bad[:20]:
        click.echo(f"line {line.number}: {line.problem}", err=True)
    if len(bad) > 20:
        click.echo(f"... and {len(bad) - 20} more bad lines", err=True)
    if bad and not skip_invalid:
        raise click.UsageError(
            f"{len(bad)} bad line(s) in {source.name}; nothing enqueued (--skip-invalid enqueues the rest)"
        )
    if not calls:
        raise click.UsageError(f"no job to enqueue in {source.name}")
    connection = connect()
    with click.progressbar(length=len(calls), label="Enqueueing", file=sys.stderr) as bar:
        ids = enqueue_calls(calls, connection, batch_size=batch_size, progress=bar.update)
    queues = ", ".join(sorted({call.queue for call in calls}))
    skipped = f"; skipped {len(bad)} bad line(s)" if bad else ""
    click.echo(f"Enqueued {len(ids)} {job} job(s) on {queues}{skipped}.")


@main.command()
@click.argument("steps", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Block until the chain ends, then print the last result or the failure.")
@click.option("--wait-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds --wait waits before giving up (the chain goes on).")  # fmt: skip
def chain(steps: tuple[str, ...], wait: bool, wait_timeout: float) -> None:
    """Enqueue STEPS to run one after the other; a failed step cancels the rest.

    Each STEP is one quoted job call as for enqueue: "process_order 42" "send_email a@b.c Done Thanks".
    """
    import shlex

    from taskctl.catalog import get_catalog
    from taskctl.exceptions import TaskctlError
    from taskctl.workflows import Call
    from taskctl.workflows import chain as run_chain

    calls = []
    for number, step in enumerate(steps, 1):
        try:
            words = shlex.split(step)
            if not words:
                raise click.UsageError(f"step {number} is empty; expected a job and its arguments")
            args, kwargs = get_catalog().get(words[0]).bind_text(words[1:])
        except TaskctlError as error:
            raise click.UsageError(f"step {number}: {error}") from None
        except ValueError as error:  # shlex: unbalanced quotes
            raise click.UsageError(f"step {number} ({step!r}): {error}") from None
        calls.append(Call(words[0], args, kwargs))
    handle = run_chain(*calls)
    click.echo(f"Enqueued a chain of {len(handle.steps)} jobs:")
    for number, member in enumerate(handle.steps, 1):
        click.echo(f"  {number}. {member.id}  {member.job.description}  ({member.status} on {member.queue})")
    if wait:
        click.echo(_json(handle.result(timeout=wait_timeout)))


@main.command(name="jobs")
def list_jobs() -> None:
    """List the jobs in the catalog: name, default queue, arguments, what it does."""
    from taskctl.catalog import get_catalog
    from taskctl.settings import get_settings

    settings = get_settings()
    rows = [
        (entry.name, entry.spec.queue or settings.default_queue, entry.call_signature, entry.summary)
        for entry in get_catalog()
    ]
    _table(("JOB", "QUEUE", "SIGNATURE", "DESCRIPTION"), rows)


@main.command()
def queues() -> None:
    """Show each queue's job counts, and the workers."""
    from taskctl.connection import connect
    from taskctl.settings import get_settings
    from taskctl.stats import queue_stats, workers

    connection = connect()
    stats = queue_stats(connection, get_settings())
    _table(
        ("QUEUE", "QUEUED", "STARTED", "FINISHED", "FAILED", "DEFERRED", "SCHEDULED"),
        [(s.name, s.queued, s.started, s.finished, s.failed, s.deferred, s.scheduled) for s in stats],
    )
    found = workers(connection)
    click.echo(f"\nWorkers: {len(found)}")
    if found:
        _table(
            ("WORKER", "KIND", "STATE", "QUEUES", "CURRENT JOB", "LAST HEARTBEAT"),
            [
                (
                    w.name,
                    _kind(w.taskctl),
                    w.state,
                    ",".join(w.queues),
                    w.current_job_id or "-",
                    _time(w.last_heartbeat),
                )
                for w in found
            ],
        )


@main.command()
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--count", type=click.IntRange(min=1), help="With --watch: stop after this many refreshes.")
def stats(watch: bool, interval: float, count: int | None) -> None:
    """The figures /metrics exports, as a table: jobs per queue and state, oldest wait, workers, scheduler."""
    import time

    from taskctl.connection import connect
    from taskctl.limits import limit_stats, rate_stats
    from taskctl.settings import get_settings
    from taskctl.stats import queue_stats, scheduler_stats, workers

    settings = get_settings()
    connection = connect(settings)
    shown = 0
    while True:
        if watch:
            click.clear()
        _table(
            ("QUEUE", "QUEUED", "STARTED", "FINISHED", "FAILED", "DEFERRED", "SCHEDULED", "OLDEST QUEUED"),
            [
                (
                    s.name,
                    s.queued,
                    s.started,
                    s.finished,
                    s.failed,
                    s.deferred,
                    s.scheduled,
                    f"{s.oldest_queued_age:.0f}s",
                )
                for s in queue_stats(connection, settings)
            ],
        )
        limit_tables = (
            (("LIMIT", "AT ONCE", "IN USE", "WAITING", "LONGEST WAIT"),
             [(s.name, s.concurrency, s.running, s.waiting, f"{s.oldest_wait:.0f}s") for s in limit_stats(connection)]),
            (("RATE LIMIT", "RATE", "STARTS IN PERIOD", "WAITING", "CLEARS IN"),
             [(r.name, r.rate, r.recent_starts, r.waiting, f"{r.clears_in:.1f}s") for r in rate_stats(connection)]),
        )  # fmt: skip
        for headers, rows in limit_tables:
            if rows:  # shown only where limits are in use
                click.echo()
                _table(headers, rows)
        alive = workers(connection)
        busy = sum(1 for w in alive if w.state == "busy")
        scheduled = scheduler_stats(connection)
        click.echo(f"\nWorkers alive: {len(alive)} ({busy} busy)")
        click.echo(f"Scheduler: {scheduled.waiting} waiting, {scheduled.overdue} overdue")
        click.echo(f"Outbox: {_outbox_line(settings)}")
        shown += 1
        if not watch or (count is not None and shown >= count):
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


def _outbox_line(settings: Settings) -> str:
    """The outbox's figures in one line; a database that does not answer is said, and the rest still shown."""
    from taskctl.exceptions import OutboxUnavailableError
    from taskctl.outbox_ops import opened, outbox_stats

    try:
        with opened(settings) as db:
            found = outbox_stats(db)
    except OutboxUnavailableError as error:
        return f"unavailable: {error}"
    if not found.has_table:
        return "none (no table)"
    return f"{found.waiting} waiting, oldest {found.oldest_age:.0f}s, {found.stuck} stuck"


@main.command(name="workers")
def list_workers() -> None:
    """Show every live worker: host, pid, state, queues, current job, last heartbeat."""
    from taskctl.connection import connect
    from taskctl.stats import workers

    found = workers(connect())
    if not found:
        click.echo("No live workers.")
        return
    _table(
        ("WORKER", "KIND", "HOST", "PID", "STATE", "QUEUES", "CURRENT JOB", "LAST HEARTBEAT"),
        [
            (
                w.name,
                _kind(w.taskctl),
                w.hostname,
                w.pid or "-",
                w.state,
                ",".join(w.queues),
                w.current_job_id or "-",
                _time(w.last_heartbeat),
            )
            for w in found
        ],
    )
    foreign = sum(1 for w in found if not w.taskctl)
    if foreign:
        click.echo(
            f"\n{foreign} worker(s) marked NOT TASKCTL fail taskctl's jobs and would run any function a job names; "
            "`taskctl doctor` says how to replace them."
        )


def _kind(taskctl: bool) -> str:
    return "taskctl" if taskctl else "NOT TASKCTL"


@main.command()
def doctor() -> None:
    """Check Redis, its workers and the outbox for what the guarantees assume. Exit 1 on a problem.

    Redis: no eviction, persistence, version. Workers: every live one is taskctl's.
    Outbox: rows move (a relay runs), none is stuck.
    """
    from taskctl.connection import connect
    from taskctl.doctor import check_outbox, check_redis, check_workers
    from taskctl.settings import get_settings, mask_url

    settings = get_settings()
    connection = connect()
    findings = check_redis(connection) + check_workers(connection)
    click.echo(f"Redis at {settings.redis_url_masked}")
    for finding in findings:
        click.echo(f"  [{finding.level}] {finding.subject}: {finding.message}")
    outbox = check_outbox(settings)
    click.echo(f"Outbox at {mask_url(settings.outbox_database)}")
    for finding in outbox:
        click.echo(f"  [{finding.level}] {finding.subject}: {finding.message}")
    problems = [f for f in findings + outbox if f.level != "ok"]
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) found")


def _failure_filters(command: Any) -> Any:
    """The options that say which failed jobs: the same for listing them, requeue and delete."""
    options = [
        click.option("--job", help="Only this job's failures (its name, as `taskctl jobs` lists it)."),
        click.option("--queue", "-q", help="Only this queue's failed jobs."),
        click.option("--cause", help="Only failures whose cause holds this: an exception type, words of its message."),
        click.option("--since", help="Only failures since then: a time ago (30m, 2h, 1d) or an ISO 8601 time."),
        click.option("--until", help="Only failures until then: a time ago (30m, 2h, 1d) or an ISO 8601 time."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@main.group(invoke_without_command=True)
@_failure_filters
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Latest failures listed after the summary.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The summary and the latest failures as JSON.")
@click.pass_context
def failed(
    ctx: click.Context, job: str | None, queue: str | None, cause: str | None, since: str | None,
    until: str | None, limit: int, as_json: bool,
) -> None:  # fmt: skip
    """Failed jobs: how many by job and cause, then the latest. Subcommands act on them."""
    if ctx.invoked_subcommand is not None:
        given = [f"--{name}" for name, value in (("job", job), ("queue", queue), ("cause", cause), ("since", since),
                                                 ("until", until)) if value is not None]  # fmt: skip
        if given:
            raise click.UsageError(
                f"{', '.join(given)} before {ctx.invoked_subcommand!r} would not narrow it; put the filters "
                f"after it: taskctl failed {ctx.invoked_subcommand} {' '.join(given)} ..."
            )
        return
    from taskctl.failures import list_failed

    found = list_failed(job, queue, cause, since, until, limit)
    if as_json:
        click.echo(_json({
            "failed": found.total,
            "matched": found.matched,
            "causes": [{"job": c.job, "cause": c.cause, "count": c.count, "queues": list(c.queues),
                        "first_failed": _iso(c.first_failed), "last_failed": _iso(c.last_failed)}
                       for c in found.causes],
            "latest": [{"id": f.id, "queue": f.queue, "job": f.name, "call": f.description, "error": f.error,
                        "cause": f.cause, "attempts": f.attempts, "failed_at": _iso(f.failed_at)}
                       for f in found.latest],
        }))  # fmt: skip
        return
    if not found.total:
        click.echo("No failed jobs.")
        return
    if not found.matched:
        click.echo(f"No failed job matches (of {found.total} failed).")
        return
    narrowed = any(value is not None for value in (job, queue, cause, since, until))
    of = f" (of {found.total})" if narrowed else ""
    click.echo(f"{found.matched} failed jobs{of}, by job and cause:")
    _causes_table(found.causes)
    if found.latest:
        click.echo(f"\nThe latest {len(found.latest)} (--limit for more; `taskctl failed show ID` for a traceback):")
        _table(
            ("JOB ID", "QUEUE", "CALL", "ERROR", "ATTEMPTS", "FAILED AT"),
            [(f.id, f.queue, _cut(f.description, 50), _cut(f.error, 80), f.attempts, _time(f.failed_at))
             for f in found.latest],
        )  # fmt: skip


def _causes_table(causes: Sequence[Any]) -> None:
    _table(
        ("JOB", "CAUSE", "FAILED", "FIRST", "LAST", "QUEUES"),
        [(c.job, _cut(c.cause, 90), c.count, _time(c.first_failed), _time(c.last_failed), ",".join(c.queues))
         for c in causes],
    )  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


@failed.command(name="show")
@click.argument("job_id")
def failed_show(job_id: str) -> None:
    """Print the whole traceback of failed job JOB_ID."""
    from taskctl.connection import connect
    from taskctl.status import fetch_job, full_error

    click.echo(full_error(fetch_job(job_id, connect())) or f"job {job_id} has no recorded failure")


@failed.command(name="requeue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_jobs", is_flag=True, help="Every failed job (of the filters, if any).")
@_failure_filters
@click.option("--rate", help="At most this many a period (50/s, 600/m): a service just back is not flooded.")
@click.option("--dry-run", is_flag=True, help="Say how many and which, and change nothing.")
def failed_requeue(job_ids: tuple[str, ...], all_jobs: bool, rate: str | None, dry_run: bool,
                   **filters: str | None) -> None:  # fmt: skip
    """Put failed jobs back on their queues for one more try each: JOB_IDS, or --all and/or filters.

    Interrupted (Ctrl-C), it has moved whole batches only (each is one transaction); it says
    how to go on, and going on requeues no job twice.
    """
    from taskctl.failed_actions import requeue_failed

    _act("requeue", "requeued", requeue_failed, job_ids, all_jobs, dry_run, filters, rate=rate)


@failed.command(name="delete")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_jobs", is_flag=True, help="Every failed job (of the filters, if any).")
@_failure_filters
@click.option("--dry-run", is_flag=True, help="Say how many and which, and change nothing.")
def failed_delete(job_ids: tuple[str, ...], all_jobs: bool, dry_run: bool, **filters: str | None) -> None:
    """Delete failed jobs for good: JOB_IDS, or --all and/or filters."""
    from taskctl.failed_actions import delete_failed

    _act("delete", "deleted", delete_failed, job_ids, all_jobs, dry_run, filters)


class _Progress:
    """A line on stderr every few seconds while a long requeue or delete goes on; nothing for a short one."""

    EVERY = 2.0

    def __init__(self, past: str) -> None:
        self.past, self.done = past, 0
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if done < total and time.monotonic() - self.last >= self.EVERY:
            self.last = time.monotonic()
            click.echo(f"{self.past.capitalize()} {done} of {total} ({100 * done // total}%)", err=True)


def _act(
    verb: str, past: str, action: Any, job_ids: tuple[str, ...], all_jobs: bool, dry_run: bool,
    filters: dict[str, str | None], **extra: Any,
) -> None:  # fmt: skip
    from datetime import UTC

    from taskctl.failures import moment
    from taskctl.settings import get_settings

    # A selection by filters ends now (unless --until says when): the jobs that fail while it
    # runs are not part of it. Its window, in absolute times, given again resumes exactly it.
    selecting = not job_ids and (all_jobs or any(value is not None for value in filters.values()))
    window = ""
    if selecting:
        now, zone = datetime.now(UTC), get_settings().tz
        since = moment(filters["since"], "--since", zone, now)
        until = moment(filters["until"], "--until", zone, now) or now
        filters = {**filters, "since": since.isoformat() if since else None, "until": until.isoformat()}
        window = (f"--since {filters['since']} " if since else "") + f"--until {filters['until']}"
    progress = _Progress(past)
    try:
        outcome = action(list(job_ids), all_jobs, dry_run=dry_run, progress=progress, **filters, **extra)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted after {progress.done} job(s) were {past}; to go on, run the same command with "
            f"{window} (it leaves the jobs {past} already alone)"
            if selecting
            else f"interrupted after {progress.done} job(s) were {past}"
        ) from None
    chosen = outcome.selection
    if not chosen.job_ids:
        click.echo(f"No failed job matches; nothing {past}.")
        return
    if dry_run:
        click.echo(f"Would {verb} {len(chosen.job_ids)} failed job(s)" + (":" if chosen.failed else ": "
                   + ", ".join(chosen.job_ids)))  # fmt: skip
        if chosen.failed:
            from taskctl.failures import summarize

            _causes_table(summarize(chosen.failed))
        return
    left = f"; {len(outcome.left)} were no longer failed and were left alone" if outcome.left else ""
    click.echo(f"{past.capitalize()} {len(outcome.done)} job(s){left}.")


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel job JOB_ID if it has not started yet."""
    from taskctl.connection import connect
    from taskctl.failed_actions import cancel as cancel_job

    cancel_job(job_id, connect())
    click.echo(f"Cancelled {job_id}.")


@main.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """List periodic schedules and delayed jobs with their next run. Subcommands change them."""
    if ctx.invoked_subcommand is not None:
        return
    from taskctl.connection import connect
    from taskctl.rqscheduler import make_scheduler
    from taskctl.schedules import load_declarations, scheduled_runs
    from taskctl.settings import get_settings

    settings = get_settings()
    runs = scheduled_runs(make_scheduler(settings, connect(settings)))
    by_name = {run.name: run for run in runs if run.name}
    declared = load_declarations(settings) or []
    click.echo(f"Periodic ({settings.schedules_file}, times in {settings.timezone}):")
    if declared:
        _table(
            ("NAME", "CALL", "WHEN", "QUEUE", "NEXT RUN"),
            [
                (d.name, _cut(by_name[d.name].description, 50), d.when, d.queue,
                 _time(by_name[d.name].next_run))
                if d.name in by_name
                else (d.name, "-", d.when, d.queue, "not synced: run `taskctl schedules sync`")
                for d in declared
            ],
        )  # fmt: skip
    else:
        click.echo("  none declared")
    delayed = [run for run in runs if not run.name]
    click.echo(f"\nDelayed: {len(delayed)}")
    if delayed:
        _table(
            ("JOB ID", "CALL", "QUEUE", "RUN AT"),
            [(r.job_id, _cut(r.description, 50), r.queue, _time(r.next_run)) for r in delayed],
        )


@schedules.command(name="sync")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
def schedules_sync(dry_run: bool) -> None:
    """Make the schedules in Redis match the declarations: add, change, remove."""
    from taskctl.connection import connect
    from taskctl.rqscheduler import local_time_in, make_scheduler
    from taskctl.schedules import sync
    from taskctl.settings import get_settings

    settings = get_settings()
    with local_time_in(settings.timezone):
        plan = sync(make_scheduler(settings, connect(settings)), settings, dry_run=dry_run)
    if plan.file_missing:
        raise click.ClickException(plan.summary())
    verb = "would be " if dry_run else ""
    for label, names in (("added", plan.added), ("changed", plan.changed), ("removed", plan.removed)):
        for name in names:
            click.echo(f"{name}: {verb}{label}")
    click.echo(("Dry run: " if dry_run else "Synced: ") + plan.summary() + ".")


@schedules.command(name="cancel")
@click.argument("job_id")
def schedules_cancel(job_id: str) -> None:
    """Cancel delayed job JOB_ID (periodic ones: remove them from the schedules file and sync)."""
    from taskctl.connection import connect
    from taskctl.failed_actions import cancel as cancel_job
    from taskctl.schedules import ID_PREFIX

    if job_id.startswith(ID_PREFIX):
        raise click.UsageError(
            f"{job_id} is a periodic schedule; remove it from the schedules file and run `taskctl schedules sync`"
        )
    cancel_job(job_id, connect())
    click.echo(f"Cancelled {job_id}.")


@main.group(invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Stuck rows to list.")
@click.pass_context
def outbox(ctx: click.Context, limit: int) -> None:
    """Show the outbox: rows waiting for the relay, the oldest wait, stuck rows and why. Subcommands act on them."""
    if ctx.invoked_subcommand is not None:
        return
    from taskctl.outbox_ops import opened, outbox_stats, stuck_rows
    from taskctl.settings import get_settings, mask_url

    settings = get_settings()
    with opened(settings) as db:
        found = outbox_stats(db)
        stuck = stuck_rows(db, limit) if found.stuck else []
    click.echo(f"Database: {mask_url(settings.outbox_database)}")
    if not found.has_table:
        click.echo("No outbox table: no row was ever written (`taskctl outbox init` creates it).")
        return
    click.echo(f"Waiting:  {found.waiting} row(s), oldest {found.oldest_age:.0f}s")
    click.echo(f"Stuck:    {found.stuck} row(s)")
    if not stuck:
        return
    click.echo("")
    _table(
        ("JOB ID", "JOB", "WRITTEN AT", "STUCK AT", "REASON"),
        [(r.job_id, r.job, _unix_time(r.created_at), _unix_time(r.stuck_at), r.stuck_reason) for r in stuck],
    )
    if found.stuck > len(stuck):
        click.echo(f"... and {found.stuck - len(stuck)} more (--limit)")
    click.echo(
        "\nFix the cause, then `taskctl outbox retry JOB_ID...` (or --all); "
        "`taskctl outbox delete JOB_ID...` drops rows for good."
    )


@outbox.command(name="retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_rows", is_flag=True, help="Every stuck row.")
def outbox_retry(job_ids: tuple[str, ...], all_rows: bool) -> None:
    """Let the relay try stuck rows again (their reason is cleared)."""
    from taskctl.outbox_ops import chosen, opened, retry

    chosen(job_ids, all_rows)  # before the database: a bad command line is told as such
    with opened() as db:
        done = retry(db, job_ids, all_rows=all_rows)
    named = len(set(job_ids))
    waiting = f"; {named - done} named row(s) were not stuck: they wait for the relay already" if named > done else ""
    click.echo(f"Retried {done} stuck row(s){waiting}.")


@outbox.command(name="delete")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_rows", is_flag=True, help="Every stuck row (waiting rows are deleted only by id).")
def outbox_delete(job_ids: tuple[str, ...], all_rows: bool) -> None:
    """Delete outbox rows for good: their calls never become jobs.

    --all takes the stuck rows only; a waiting row (a committed call the relay is
    about to move) is deleted only when named by its id.
    """
    from taskctl.outbox_ops import chosen, delete, opened

    chosen(job_ids, all_rows)  # before the database: a bad command line is told as such
    with opened() as db:
        done = delete(db, job_ids, all_rows=all_rows)
    click.echo(f"Deleted {done} row(s).")


@outbox.command(name="init")
def outbox_init() -> None:
    """Create the outbox table in the configured database (TASKCTL_OUTBOX_URL), committed."""
    from taskctl.outbox_db import TABLE
    from taskctl.outbox_ops import init, opened
    from taskctl.settings import get_settings, mask_url

    url = get_settings().outbox_database
    with opened(create=True) as db:
        created = init(db)
    click.echo(f"{'Created' if created else 'Found'} table {TABLE} in {mask_url(url)}"
               + ("." if created else "; nothing to do."))  # fmt: skip


@outbox.command(name="schema")
@click.option("--dialect", type=click.Choice(["sqlite", "postgresql"]),
              help="Default: that of the configured database (TASKCTL_OUTBOX_URL).")  # fmt: skip
def outbox_schema(dialect: str | None) -> None:
    """Print the outbox's DDL, for teams whose migrations create their tables."""
    from taskctl.outbox_db import dialect_of, schema
    from taskctl.settings import get_settings

    click.echo(schema(dialect or dialect_of(get_settings().outbox_database)), nl=False)


@main.command()
@click.option(
    "--procfile",
    type=click.Path(path_type=Path),
    default=Path("Procfile"),
    show_default=True,
    help="The processes to run.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="Seconds each process gets to stop (a worker: to finish its job) before it is killed "
    "[default: TASKCTL_STOP_GRACE, 30].",
)
def up(procfile: Path, grace: float | None) -> None:
    """Run the whole stack here: Redis (embedded if none answers), worker, scheduler, dashboard.

    Ctrl-C or SIGTERM stops the Procfile's processes in its order, then Redis.
    """
    from taskctl.settings import get_settings
    from taskctl.stack import run_stack

    raise SystemExit(run_stack(get_settings(), procfile, grace))


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _progress(progress: dict[str, Any]) -> str:
    done, total = progress.get("done", 0), progress.get("total", 0)
    share = f" ({100 * done // total}%)" if isinstance(done, int) and isinstance(total, int) and total > 0 else ""
    message = progress.get("message") or ""
    return f"{done}/{total}{share} {message}".rstrip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(moment: datetime | None) -> str:
    from taskctl.settings import get_settings
    from taskctl.when import show_time

    return show_time(moment, get_settings().tz)


def _unix_time(stamp: float | None) -> str:
    from datetime import UTC

    return _time(datetime.fromtimestamp(stamp, UTC) if stamp is not None else None)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
