"""A real PostgreSQL server for the tests and the bench, started from what the project installs.

The server is the one the ``pgserver`` wheel ships (a test and bench dependency in
pyproject.toml): its ``initdb`` and ``postgres`` binaries, run on a free port with
a data folder of their own. Never the machine's own server. PostgreSQL refuses to
run as root (which CI is), so as root the server runs as ``nobody``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def binaries() -> Path:
    """The folder of the shipped ``postgres`` and ``initdb``; RuntimeError naming the package when it is missing."""
    # Found, not imported: importing pgserver warns about XDG_RUNTIME_DIR, and we need only its files.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL for the tests comes from the pgserver package: pip install -e '.[test]'")
    found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (found / "postgres").is_file():
        raise RuntimeError(f"pgserver has no postgres binary at {found}")
    return found


@dataclass
class PostgresServer:
    port: int
    data: Path
    process: subprocess.Popen[bytes] | None = None
    user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict[str, Any]:
        return {"user": self.user, "group": _group_of(self.user)} if self.user else {}

    def start(self, timeout: float = 30) -> None:
        """Start the server (again, after :meth:`stop`, on the same data and port) and wait until it answers."""
        assert self.process is None or self.process.poll() is not None
        args = [
            str(binaries() / "postgres"), "-D", str(self.data / "db"), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=200",
        ]  # fmt: skip
        with open(self.data / "postgres.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=self.data, **self._run_as())  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start on port {self.port}; see {self.data / 'postgres.log'}")
            time.sleep(0.05)

    def answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout: float = 20) -> None:
        """A fast shutdown (SIGINT): open sessions are ended, as in a real outage."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(2)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _group_of(user: str | None) -> int | None:
    return pwd.getpwnam(user).pw_gid if user else None


@contextmanager
def postgres_server(port: int, data: Path) -> Iterator[PostgresServer]:
    """initdb into ``data`` (trust auth, user ``postgres``), start the server, stop it when the block ends.

    As root, the files go to a folder of ``nobody``'s own under the system's temporary
    folder instead (pytest's are root's alone, and ``nobody`` could not reach them).
    """
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        data = Path(tempfile.mkdtemp(prefix="taskctl-postgres-"))
        shutil.chown(data, user)
    else:
        data.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(port, data, user=user)
    try:
        made = subprocess.run(
            [str(binaries() / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=data, **server._run_as(),
        )  # fmt: skip
        if made.returncode:
            raise RuntimeError(f"initdb failed: {made.stderr.decode(errors='replace').strip()}")
        server.start()
        yield server
    finally:
        server.stop()
        if user:
            shutil.rmtree(data, ignore_errors=True)
