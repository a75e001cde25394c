"""Two runs of one job never overlap in effect: real hosts, a real partition, a real freeze.

Each worker host is a network namespace that the test creates, joined to the
test's Redis by a veth pair. Cutting a host off is taking its link down at the
"switch" (the root namespace's end): its packets vanish, nothing tells it so,
as when a cable or a switch port dies. Freezing a host is SIGSTOP on its whole
worker process tree, as a VM pause does. Everything is counted from what the
jobs really did: the log each run writes and the rows in the database.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from redis import Redis

from taskctl.enqueue import enqueue_call
from taskctl.stack import redis_server, stop
from tests.conftest import BIN, FORKING, IN_PROCESS, ROOT, SUMMARIES, free_port
from tests.effects import (
    SHORT_LEASE_ENV,
    Run,
    active_after_newer_start,
    audit_effects,
    read_runs,
    superseded,
    wait_for,
)
from tests.test_faults import statuses, wait_until_final

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

#: Set by .ci/run: there the test must run (CI is root), not be skipped.
REQUIRED = os.environ.get("TASKCTL_NETNS_TESTS") == "required"
STEPS, PAUSE = 20, 0.5


def _cannot_make_hosts() -> str | None:
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2): cannot create network namespaces"
    if os.geteuid() != 0:
        return "not root: creating network namespaces (ip netns) needs root"
    return None


@dataclass
class Host:
    """A network namespace with a veth link to the root namespace, where Redis is."""

    name: str
    switch_port: str  # the link's end in the root namespace
    redis_address: str

    def run(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.name, *command], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.switch_port, "down"], check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "link", "set", self.switch_port, "up"], check=True)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    reason = _cannot_make_hosts()
    if reason:
        if REQUIRED:
            pytest.fail(f"TASKCTL_NETNS_TESTS=required, but {reason}")
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}"
    made: list[Host] = []
    try:
        for number in (1, 2):
            name, port = f"tc{tag}h{number}", f"tc{tag}p{number}"
            subnet = f"10.{200 + number}.{os.getpid() % 250}"
            for command in (
                ["ip", "netns", "add", name],
                ["ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}x"],
                ["ip", "link", "set", f"{port}x", "netns", name],
                ["ip", "addr", "add", f"{subnet}.1/24", "dev", port],
                ["ip", "link", "set", port, "up"],
                ["ip", "netns", "exec", name, "ip", "addr", "add", f"{subnet}.2/24", "dev", f"{port}x"],
                ["ip", "netns", "exec", name, "ip", "link", "set", f"{port}x", "up"],
                ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
            ):
                subprocess.run(command, check=True, capture_output=True)
            made.append(Host(name, port, f"{subnet}.1"))
        yield made
    finally:
        for host in made:
            subprocess.run(["ip", "link", "del", host.switch_port], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)


def tree(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.parametrize("worker_class", [IN_PROCESS, FORKING], ids=["in-process", "forking"])
def test_partitioned_and_frozen_hosts_never_overlap_in_effect(
    hosts: list[Host], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_class: str
) -> None:
    """Host A cut off mid-job and restored, then host B frozen mid-job and thawed: every job done, once in effect."""
    port = free_port()
    a, b = hosts
    bind = ("--bind", a.redis_address, b.redis_address, "127.0.0.1")
    database, log = tmp_path / "effects.sqlite3", tmp_path / "runs.log"
    with redis_server(port, tmp_path / "redis", host="127.0.0.1", extra_args=bind):
        url = f"redis://127.0.0.1:{port}/0"
        monkeypatch.setenv("REDIS_URL", url)
        from taskctl.settings import get_settings

        get_settings.cache_clear()
        redis = Redis.from_url(url)
        # The Procfile's worker, two per host, as `taskctl up` runs it.
        command = [str(BIN / "rq"), "worker-pool", "-n", "2", "-w", worker_class]
        pools = {
            host.name: host.run(command, dict(os.environ, **SHORT_LEASE_ENV, REDIS_URL=f"redis://{host.redis_address}:"
                                f"{port}/0"), tmp_path / f"{host.name}.log")
            for host in (a, b)
        }  # fmt: skip
        try:
            ids = [enqueue_call("fenced_steps", (str(database), str(log), f"j{n}", STEPS, PAUSE)).id for n in range(4)]

            def running_on(host: Host) -> list[Run]:
                pids = {p.pid for p in tree(pools[host.name])}
                return [r for r in read_runs(log).values() if r.pid in pids and not r.ended]

            def busy(host: Host, count: int) -> bool:
                return len(running_on(host)) >= count

            wait_for(lambda: busy(a, 2) and busy(b, 2), 60, "both hosts running two jobs each")
            time.sleep(1.5)
            a.cut()
            cut_at = time.time()
            time.sleep(12)
            a.restore()
            # Host B runs A's two jobs again once their leases are over: freeze it in the middle of them.
            wait_for(lambda: sum(r.start > cut_at and r.token >= 2 for r in running_on(b)) == 2, 60,
                     "host B running the two jobs recovered from host A")  # fmt: skip
            time.sleep(1.5)
            frozen = tree(pools[b.name])
            for process in frozen:
                process.send_signal(signal.SIGSTOP)
            frozen_at = time.time()
            time.sleep(12)
            for process in frozen:
                process.send_signal(signal.SIGCONT)
            thawed_at = time.time()

            final = wait_until_final(redis, ids, timeout=120)
        finally:
            for pool in pools.values():
                stop(pool, timeout=10)
        effects = audit_effects(database, log, [f"j{n}" for n in range(4)], STEPS)

    assert final == dict.fromkeys(ids, "finished"), (final, statuses(redis, ids))
    runs = effects.runs
    # The runs cut off with host A, and those frozen with host B, each replaced by a newer run.
    cut_off = [r for r in runs.values() if r.start < cut_at and any(o.start > cut_at for o in superseded(runs, r))]
    frozen_pids = {p.pid for p in frozen}
    frozen_runs = [r for r in runs.values() if r.pid in frozen_pids and r.start < frozen_at and superseded(runs, r)]
    # A cut-off run stops before its lease can expire: before any newer run started, it has stopped.
    late = [(r.job, r.token) for r in cut_off if active_after_newer_start(runs, r)]
    after_thaw = [at for r in frozen_runs for at in active_after_newer_start(runs, r)]
    SUMMARIES.append(
        f"partition + freeze ({worker_class.rsplit('.', 1)[1]}): jobs=4 {effects.line()} cut-off runs={len(cut_off)}"
        f" of them active after a newer run started={len(late)}; frozen runs={len(frozen_runs)}, thawed"
        f" {thawed_at - frozen_at:.0f} s later, writes they attempted after thawing={len(after_thaw)}"
    )
    assert (effects.unfinished, effects.overlapping, effects.stale_accepted) == ([], [], [])
    assert len(cut_off) == 2, "the partition did not cut off host A's two runs mid-job"
    assert late == [], "a cut-off run went on after its lease: it did not stop in time"
    assert len(frozen_runs) == 2, "the freeze did not catch host B's two runs mid-job"
