"""Configuration, read once from the environment (and a `.env` file) into one object.

This is the only module that reads ``os.environ``. Everything else asks
:func:`get_settings`, so a value means the same thing in the CLI, the workers,
the scheduler and the dashboard.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskctl.exceptions import SettingsError


@dataclass(frozen=True)
class Settings:
    """Every knob of taskctl, with a default that is safe on a developer's laptop."""

    # Fields that may hold secrets are kept out of repr(), hence out of logs and tracebacks.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # Priority order: a worker empties `high` before it looks at `default`.
    queues: tuple[str, ...] = ("high", "default", "low")
    default_queue: str = "default"
    # Packages scanned for job functions; tests add their own.
    job_packages: tuple[str, ...] = ("jobs",)
    # Seconds a job may run before the worker stops it, unless the job declares its own.
    job_timeout: int = 180
    # Retry policy of jobs that declare none: 3 more tries, waiting about 10 s, 20 s, 40 s
    # (doubling, with jitter, never more than backoff_cap).
    retries: int = 3
    backoff: float = 10.0
    backoff_cap: float = 600.0
    # Finished jobs and their results are kept a day; failures a week, long enough to
    # notice and requeue them, short enough not to fill Redis (RQ keeps them a year).
    result_ttl: int = 86_400
    failure_ttl: int = 7 * 86_400
    # Workers: heartbeat every job_monitoring_interval s while a job runs; a job whose
    # worker stopped heartbeating is recovered heartbeat_grace s later, at the next
    # maintenance pass (every maintenance_interval s, by any live worker). The grace is 2 s
    # at least, and the lease margin below less than it, so that a heartbeat a second late
    # neither ends the run's lease nor makes its worker stop the run.
    job_monitoring_interval: int = 5
    heartbeat_grace: int = 10
    maintenance_interval: int = 5
    # A run's lease lasts job_monitoring_interval + heartbeat_grace s from its last renewal; a
    # worker that could not renew stops the run lease_margin s before that (see
    # taskctl.lease). Less than the grace, so that one late heartbeat does not stop a run.
    lease_margin: float = 2.0
    # Jobs a worker may start in one round trip while its jobs are short (under a few ms
    # each): one job at a time when they are not, and 1 turns it off (see taskctl.hotpath).
    prefetch: int = 8
    # Address space a job may add to its process, in MiB (0: no limit): past it the job fails with MemoryError.
    job_memory_limit_mb: int = 0
    # Concurrency limits set here rather than in the code (TASKCTL_CONCURRENCY="send_email=2
    # update_stock=1"): they replace what a job declares, as an operator's knob should.
    concurrency: tuple[tuple[str, int], ...] = ()
    # Rate limits the same way (TASKCTL_RATES="send_email=10/s push=100/m"), replacing declared ones.
    rates: tuple[tuple[str, str], ...] = ()
    # With Sentinel: the sentinels' own password (the data password is in REDIS_URL), and
    # how many replicas must confirm each enqueue (Redis WAIT) before it counts as done.
    sentinel_password: str = field(default="", repr=False)
    replica_acks: int = 0
    # Seconds to wait for Redis to accept a connection: a CLI that hangs is worse than
    # one that fails.
    redis_connect_timeout: float = 3.0
    scheduler_interval: float = 5.0
    # Seconds each process of `taskctl up` gets to stop on Ctrl-C or SIGTERM (a worker: to
    # finish its running job) before it is killed; a job killed then is retried later.
    stop_grace: float = 30.0
    # Times without an offset (`--at 2026-12-01T09:00`, cron expressions) are read in this
    # zone, and times are shown in it.
    timezone: str = "UTC"
    # Where periodic jobs are declared (see README "Scheduling").
    schedules_file: Path = Path("schedules.toml")
    # An --at this many seconds in the past still runs (now); further back is an error.
    past_tolerance: float = 60.0
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 9181
    # HTTP basic auth for the dashboard: required to bind anywhere but loopback.
    dashboard_username: str = ""
    dashboard_password: str = field(default="", repr=False)
    # No delete, requeue, empty or compact at all: for a dashboard everyone may see.
    dashboard_read_only: bool = False
    # Where local defaults write: the mail outbox, the embedded Redis's files.
    data_dir: Path = Path("var")
    smtp_url: str = field(default="", repr=False)
    mail_from: str = "taskctl@localhost"
    # Push/webhook endpoint; without one, notifications are appended to a JSON Lines file.
    push_url: str = ""
    push_token: str = field(default="", repr=False)
    push_timeout: float = 10.0
    # The shop's SQLite database (orders, products); None: a file in data_dir.
    database_path: Path | None = None
    # The application database whose outbox table the relay empties into Redis (see
    # taskctl.outbox): sqlite:///path or postgresql://...; "": the shop's database above.
    outbox_url: str = field(default="", repr=False)
    # Seconds between the relay's looks at the table when the database cannot wake it
    # (SQLite); with PostgreSQL it wakes on each commit, and looks this often only in case.
    outbox_poll: float = 0.2
    # Rows the relay moves per transaction (and per Redis round trip).
    outbox_batch: int = 500
    # `taskctl doctor` fails when a row has waited longer than this many seconds.
    outbox_max_age: float = 60.0

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def push_log(self) -> Path:
        return self.data_dir / "push.jsonl"

    @property
    def database(self) -> Path:
        return self.database_path or self.data_dir / "shop.sqlite3"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def outbox_database(self) -> str:
        """The outbox's database URL: TASKCTL_OUTBOX_URL, else the shop's SQLite file."""
        return self.outbox_url or f"sqlite:///{self.database}"

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.redis_url)

    @property
    def sentinel(self) -> SentinelTarget | None:
        return parse_sentinel_url(self.redis_url)


def mask_url(url: str) -> str:
    """Hide the password in a URL, so that it can go into logs and error messages."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


@dataclass(frozen=True)
class SentinelTarget:
    """Where Redis is when REDIS_URL is redis+sentinel://[user:password@]host:port,.../master[/db]."""

    instances: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    match = re.fullmatch(r"(rediss?)\+sentinel://(?:([^:@/]*)(?::([^@/]*))?@)?([^/]+)/([^/?]+)(?:/(\d+))?", url)
    if not match:
        return None
    scheme, user, password, hosts, master, db = match.groups()
    instances = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise SettingsError(f"REDIS_URL: sentinel address {host!r} must be host:port")
        instances.append((name, int(port)))
    return SentinelTarget(tuple(instances), master, int(db or 0), user or None, password or None, scheme == "rediss")


def _words(name: str, value: str) -> tuple[str, ...]:
    items = tuple(w for w in value.replace(",", " ").split() if w)
    if not items:
        raise SettingsError(f"{name} is empty; expected a comma-separated list")
    return items


def _concurrency(value: str) -> tuple[tuple[str, int], ...]:
    limits = []
    for word in value.replace(",", " ").split():
        job_name, _, number = word.partition("=")
        if not job_name or not number.isdigit() or int(number) < 1:
            raise SettingsError(
                f"TASKCTL_CONCURRENCY: {word!r} is not job=N; expected a job's name, '=', and a whole number"
                " 1 or more, e.g. send_email=2 update_stock=1"
            )
        limits.append((job_name, int(number)))
    return tuple(limits)


def _rates(value: str) -> tuple[tuple[str, str], ...]:
    limits = []
    for word in value.replace(",", " ").split():
        job_name, _, rate = word.partition("=")
        if not job_name or not re.fullmatch(r"\d+/(\d+(\.\d+)?)?[smhd]", rate) or rate.startswith("0/"):
            raise SettingsError(
                f"TASKCTL_RATES: {word!r} is not job=RATE; expected a job's name, '=', and starts per period,"
                " e.g. send_email=10/s push=100/m report=5/30s"
            )
        limits.append((job_name, rate))
    return tuple(limits)


def _number(name: str, value: str, kind: type[int] | type[float], minimum: float | None = None) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a valid {kind.__name__}") from None
    if minimum is None and number <= 0:
        raise SettingsError(f"{name}={value!r} must be greater than 0")
    if minimum is not None and number < minimum:
        raise SettingsError(f"{name}={value!r} must be {minimum:g} or more")
    return number


def _flag(name: str, value: str) -> bool:
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={value!r} is not a yes/no value; expected true or false")


def _iana_zone(name: str | None) -> str | None:
    """The name when it is an IANA zone; TZ may also hold POSIX forms (":/etc/localtime") we cannot use."""
    if not name:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Build Settings from a mapping (the process environment by default).

    A ``.env`` file in the current directory fills in variables that the
    environment does not set; the environment always wins.
    """
    env: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        from dotenv import dotenv_values

        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    defaults = Settings()
    queues = _words("TASKCTL_QUEUES", env["TASKCTL_QUEUES"]) if "TASKCTL_QUEUES" in env else defaults.queues
    default_queue = env.get("TASKCTL_DEFAULT_QUEUE", "default" if "default" in queues else queues[0])
    if default_queue not in queues:
        raise SettingsError(f"TASKCTL_DEFAULT_QUEUE={default_queue!r} is not one of TASKCTL_QUEUES {list(queues)}")
    redis_url = env.get("REDIS_URL", defaults.redis_url)
    scheme = urlsplit(redis_url).scheme
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        raise SettingsError(
            f"REDIS_URL={mask_url(redis_url)!r} must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
    if scheme.endswith("+sentinel") and parse_sentinel_url(redis_url) is None:
        raise SettingsError(
            f"REDIS_URL={mask_url(redis_url)!r}: expected redis+sentinel://[user:password@]host:port,.../master[/db]"
        )

    timezone = env.get("TASKCTL_TIMEZONE") or _iana_zone(env.get("TZ")) or defaults.timezone
    if not _iana_zone(timezone):
        raise SettingsError(
            f"TASKCTL_TIMEZONE={timezone!r} is not a known time zone; expected a name like Europe/Paris or UTC"
        )

    def number(name: str, default: int | float, minimum: float | None = None) -> int | float:
        return _number(name, env[name], type(default), minimum) if name in env else default

    heartbeat_grace = int(number("TASKCTL_HEARTBEAT_GRACE", defaults.heartbeat_grace, minimum=2))
    return Settings(
        redis_url=redis_url,
        queues=queues,
        default_queue=default_queue,
        job_packages=(
            _words("TASKCTL_JOB_PACKAGES", env["TASKCTL_JOB_PACKAGES"])
            if "TASKCTL_JOB_PACKAGES" in env
            else defaults.job_packages
        ),
        job_timeout=int(number("TASKCTL_JOB_TIMEOUT", defaults.job_timeout)),
        retries=int(number("TASKCTL_RETRIES", defaults.retries, minimum=0)),
        backoff=float(number("TASKCTL_BACKOFF", defaults.backoff, minimum=0)),
        backoff_cap=float(number("TASKCTL_BACKOFF_CAP", defaults.backoff_cap)),
        result_ttl=int(number("TASKCTL_RESULT_TTL", defaults.result_ttl)),
        job_monitoring_interval=int(number("TASKCTL_JOB_MONITORING_INTERVAL", defaults.job_monitoring_interval)),
        heartbeat_grace=heartbeat_grace,
        maintenance_interval=int(number("TASKCTL_MAINTENANCE_INTERVAL", defaults.maintenance_interval)),
        lease_margin=_lease_margin(env, heartbeat_grace),
        prefetch=_prefetch(env),
        job_memory_limit_mb=int(number("TASKCTL_JOB_MEMORY_LIMIT_MB", defaults.job_memory_limit_mb, minimum=0)),
        concurrency=_concurrency(env.get("TASKCTL_CONCURRENCY", "")),
        rates=_rates(env.get("TASKCTL_RATES", "")),
        failure_ttl=int(number("TASKCTL_FAILURE_TTL", defaults.failure_ttl)),
        sentinel_password=env.get("TASKCTL_SENTINEL_PASSWORD", ""),
        replica_acks=int(number("TASKCTL_REPLICA_ACKS", defaults.replica_acks, minimum=0)),
        redis_connect_timeout=float(number("TASKCTL_REDIS_CONNECT_TIMEOUT", defaults.redis_connect_timeout)),
        scheduler_interval=float(number("TASKCTL_SCHEDULER_INTERVAL", defaults.scheduler_interval)),
        stop_grace=float(number("TASKCTL_STOP_GRACE", defaults.stop_grace, minimum=0)),
        timezone=timezone,
        schedules_file=Path(env.get("TASKCTL_SCHEDULES", str(defaults.schedules_file))),
        past_tolerance=float(number("TASKCTL_PAST_TOLERANCE", defaults.past_tolerance, minimum=0)),
        dashboard_host=env.get("TASKCTL_DASHBOARD_HOST", defaults.dashboard_host),
        dashboard_port=int(number("TASKCTL_DASHBOARD_PORT", defaults.dashboard_port)),
        dashboard_username=env.get("TASKCTL_DASHBOARD_USERNAME", ""),
        dashboard_password=env.get("TASKCTL_DASHBOARD_PASSWORD", ""),
        dashboard_read_only=_flag("TASKCTL_DASHBOARD_READ_ONLY", env.get("TASKCTL_DASHBOARD_READ_ONLY", "")),
        data_dir=Path(env.get("TASKCTL_DATA_DIR", str(defaults.data_dir))),
        smtp_url=env.get("SMTP_URL", defaults.smtp_url),
        mail_from=env.get("MAIL_FROM", defaults.mail_from),
        push_url=env.get("PUSH_URL", defaults.push_url),
        push_token=env.get("PUSH_TOKEN", defaults.push_token),
        push_timeout=float(number("PUSH_TIMEOUT", defaults.push_timeout)),
        database_path=Path(env["DATABASE_PATH"]) if env.get("DATABASE_PATH") else None,
        outbox_url=_outbox_url(env),
        outbox_poll=float(number("TASKCTL_OUTBOX_POLL", defaults.outbox_poll)),
        outbox_batch=int(number("TASKCTL_OUTBOX_BATCH", defaults.outbox_batch)),
        outbox_max_age=float(number("TASKCTL_OUTBOX_MAX_AGE", defaults.outbox_max_age)),
    )


def _outbox_url(env: Mapping[str, str]) -> str:
    url = env.get("TASKCTL_OUTBOX_URL", "")
    scheme = urlsplit(url).scheme.split("+")[0]
    if url and scheme not in ("sqlite", "postgresql", "postgres"):
        raise SettingsError(
            f"TASKCTL_OUTBOX_URL={mask_url(url)!r} must start with sqlite:/// (a file) or postgresql://"
        )
    return url


def _prefetch(env: Mapping[str, str]) -> int:
    """TASKCTL_PREFETCH, 1 to 100: a step's reply carries every job it starts, whole."""
    if "TASKCTL_PREFETCH" not in env:
        return Settings.prefetch
    prefetch = int(_number("TASKCTL_PREFETCH", env["TASKCTL_PREFETCH"], int, minimum=1))
    if prefetch > 100:
        raise SettingsError(f"TASKCTL_PREFETCH={env['TASKCTL_PREFETCH']!r} must be 100 or less (1 turns it off)")
    return prefetch


def _lease_margin(env: Mapping[str, str], heartbeat_grace: int) -> float:
    """TASKCTL_LEASE_MARGIN, or by default 2 s, but never as much as the heartbeat grace (half of it then)."""
    if "TASKCTL_LEASE_MARGIN" not in env:
        return min(Settings.lease_margin, heartbeat_grace / 2)
    margin = float(_number("TASKCTL_LEASE_MARGIN", env["TASKCTL_LEASE_MARGIN"], float))
    if margin >= heartbeat_grace:
        raise SettingsError(
            f"TASKCTL_LEASE_MARGIN={env['TASKCTL_LEASE_MARGIN']!r} must be less than TASKCTL_HEARTBEAT_GRACE"
            f" ({heartbeat_grace}): a run would stop before its next heartbeat could renew its lease"
        )
    return margin


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use and then kept."""
    return load_settings()
