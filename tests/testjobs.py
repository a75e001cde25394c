"""Jobs that exist only for the tests: each shows one behaviour the suite checks.

The tests add this module to the catalog with TASKCTL_JOB_PACKAGES.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

from taskctl.declare import job
from taskctl.exceptions import PermanentError, TransientError


@job(queue="default")
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@job(result_ttl=0)
def add_quietly(a: int, b: int) -> int:
    """Add two integers, keeping no result: the job is deleted as it finishes."""
    return a + b


@job(queue="low")
def typed(
    count: int,
    ratio: float,
    enabled: bool,
    tags: list[str],
    options: dict[str, Any],
    mode: Literal["fast", "slow"] = "fast",
    note: str | None = None,
) -> dict[str, Any]:
    """Return its arguments, to show how the CLI converted them."""
    return {
        "count": count,
        "ratio": ratio,
        "enabled": enabled,
        "tags": tags,
        "options": options,
        "mode": mode,
        "note": note,
    }


@job(retries=0)
def fail(message: str) -> None:
    """Raise an error with the given message."""
    raise RuntimeError(message)


@job(queue="high")
def record(path: str, label: str) -> str:
    """Append a label and the time to a file, so tests can see what ran, and in which order."""
    with open(path, "a") as handle:
        handle.write(f"{label} {time.time()}\n")
    return label


@job()
def slow(seconds: float) -> float:
    """Sleep, to keep a worker busy."""
    time.sleep(seconds)
    return seconds


@job(retries=0)
def own_alarm_handler() -> str:
    """Install a SIGALRM handler of its own and leave it, as code that times itself out may."""
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    return "installed"


def touch(path: str) -> None:
    """Not a job (no @job): workers must refuse it even though it is importable."""
    Path(path).touch()


@job(retries=2, backoff=0)
def flaky(counter_path: str, failures: int) -> int:
    """Fail with a TransientError the first `failures` times, then succeed; return the attempt number."""
    path = Path(counter_path)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= failures:
        raise TransientError(f"attempt {attempt} failed")
    return attempt


@job(retries=3, backoff=0)
def refuse(counter_path: str, reason: str) -> None:
    """Count the attempt, then raise a PermanentError: retries would not help."""
    path = Path(counter_path)
    path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))
    raise PermanentError(reason)


@job()
def count_to(total: int) -> int:
    """Report progress at every step, like a long report would."""
    from taskctl.progress import report_progress

    for done in range(1, total + 1):
        report_progress(done, total, f"step {done}")
    return total


@job()
def total(results: list[int], offset: int = 0) -> int:
    """A chord callback: add up the group's results."""
    return sum(results) + offset


@job(timeout=30, retries=5, backoff=0)
def tally(log: str, token: str, seconds: float) -> str:
    """Log the start and the end of this run, so tests can count runs and see any overlap."""
    _append(log, f"start {token} {os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    _append(log, f"end {token} {os.getpid()} {time.time()}\n")
    return token


@job(timeout=60, retries=3, backoff=0, concurrency=2)
def limited_tally(log: str, token: str, seconds: float) -> str:
    """A tally with a concurrency limit of 2 for the job as a whole."""
    return tally(log, token, seconds)


@job(timeout=30, retries=3, backoff=0, concurrency=1, concurrency_key="sku")
def update_stock(log: str, sku: str, token: str, seconds: float) -> str:
    """A tally that must not run twice at once for one SKU (its token names the SKU)."""
    return tally(log, f"{sku}/{token}", seconds)


@job(timeout=30, retries=3, backoff=0, rate="20/s")
def paced_tally(log: str, token: str, seconds: float) -> str:
    """A tally that starts at most 20 times in any second, across every worker."""
    return tally(log, token, seconds)


#: The errors of three services in an outage: each message differs from job to job by numbers only.
_OUTAGES: dict[str, Any] = {
    "mail": lambda n: ConnectionRefusedError(111, f"mail-{n % 3} refused the connection"),
    "push": lambda n: TimeoutError(f"push gateway timed out after {5 + n % 3}.0 s"),
    "stock": lambda n: RuntimeError(f"inventory answered 503 for order {n}"),
}


@job(retries=0)
def outage(log: str, down: str, service: str, n: int) -> int:
    """A call to a service that fails, with that service's error, while a file named after it is in ``down``."""
    _append(log, f"{service} {n}\n")
    if Path(down, service).exists():
        raise _OUTAGES[service](n)
    return n


def _append(path: str, line: str) -> None:
    # One write on an O_APPEND descriptor: lines from concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@job(retries=0)
def hog_memory(megabytes: int) -> int:
    """Allocate that much memory at once."""
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


@job(retries=0)
def segfault() -> None:
    """Crash the process that runs it, as a bad C extension would."""
    import ctypes

    ctypes.string_at(0)


@job(retries=0)
def stubborn(seconds: float) -> str:
    """Work that swallows every exception, the timeout's included."""
    end = time.time() + seconds
    while time.time() < end:
        with contextlib.suppress(BaseException):
            time.sleep(0.05)
    return "done"


def planted_callback(*args: Any) -> None:
    """Not a job: what someone with Redis access might name as a job's callback."""
    Path(os.environ["TASKCTL_DATA_DIR"], "callback-ran").touch()


@job(retries=0)
def undecodable(log: str) -> None:
    """Log the run, then raise RQ's DeserializationError from the job's own code: a real failure all the same."""
    from rq.exceptions import DeserializationError

    _append(log, f"undecodable {time.time()}\n")
    raise DeserializationError("the job's own data could not be decoded")


@job(timeout=120, retries=5, backoff=0)
def fenced_steps(database: str, log: str, name: str, steps: int, pause: float) -> int:
    """Write ``steps`` rows, one fenced transaction each, logging every attempt and its outcome.

    The rows (in commit order) and the log are what the partition tests count: which
    run wrote what, and when, and whether a stale run's write was refused.
    """
    from contextlib import closing

    from jobs import shop
    from taskctl.exceptions import LeaseLostError
    from taskctl.fencing import current_run

    run = current_run()
    token = run.token if run else 0
    _append(log, f"start {name} {token} {os.getpid()} {time.time()}\n")
    for step in range(steps):
        time.sleep(pause)
        with closing(shop.connect(Path(database))) as conn, shop.transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS effects (name TEXT, token INTEGER, step INTEGER, at REAL)")
            accepted = shop.fence(conn, run)
            if accepted:
                conn.execute("INSERT INTO effects VALUES (?, ?, ?, ?)", (name, token, step, time.time()))
        _append(log, f"{'wrote' if accepted else 'refused'} {name} {token} {os.getpid()} {time.time()}\n")
        if not accepted:
            raise LeaseLostError(f"run {token} of {name} is stale")
    _append(log, f"end {name} {token} {os.getpid()} {time.time()}\n")
    return token
