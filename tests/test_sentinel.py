"""Redis high availability: one master, one replica, three sentinels on loopback; the master dies mid-work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from taskctl.connection import get_redis
from taskctl.enqueue import enqueue
from taskctl.exceptions import RedisUnavailableError
from taskctl.stack import redis_server, redis_server_binary, stop
from tests.conftest import BIN, IN_PROCESS, ROOT, SUMMARIES, fetch, free_port, start_web, worker_command
from tests.test_faults import audit

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[list[int], int, subprocess.Popen[bytes], Path]]:
    """Ports of three sentinels watching `mymaster`, the master's port, its process and data folder."""
    master_port, replica_port = free_port(), free_port()
    with (
        redis_server(master_port, tmp_path / "master") as master,
        redis_server(replica_port, tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(master_port))),
    ):
        ports, processes = [], []
        for number in range(3):
            port = free_port()
            folder = tmp_path / f"sentinel{number}"
            folder.mkdir()
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 4000\n"
            )
            processes.append(subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            ports.append(port)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if all(Redis(port=p).sentinel_slaves("mymaster") for p in ports):
                        break
                except Exception:
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError("the sentinels did not see the replica within 30 s")
            yield ports, master_port, master, tmp_path / "master"
        finally:
            for process in processes:
                stop(process, timeout=5)


def test_enqueueing_and_processing_go_on_through_a_failover_and_nothing_accepted_is_lost(
    sentinels: tuple[list[int], int, subprocess.Popen[bytes], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ports, master_port, master, master_data = sentinels
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/mymaster/0"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("TASKCTL_REPLICA_ACKS", "1")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    log = tmp_path / "runs.log"
    worker_log = tmp_path / "workers.log"
    # One `rq worker`, and `rq worker-pool` as the Procfile runs it: both reach Redis through the sentinels.
    pool = [str(BIN / "rq"), "worker-pool", "-c", "taskctl.rqconfig", "-w", IN_PROCESS, "-n", "1"]
    with open(worker_log, "wb") as out:
        workers = [subprocess.Popen(command, env=dict(os.environ), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                   for command in (worker_command(), pool)]  # fmt: skip
    accepted: list[str] = []
    refused = 0
    restarted = None
    try:
        time.sleep(3)
        assert all(w.poll() is None for w in workers), worker_log.read_text()[-3000:]
        # The scheduler and the dashboard reach Redis through the sentinels too.
        scheduler = subprocess.run([sys.executable, "-m", "taskctl.scheduler", "--burst"], env=dict(os.environ),
                                   cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert scheduler.returncode == 0, scheduler.stderr
        web, base = start_web()
        try:
            assert fetch(base, "/healthz")[0] == 200
            assert fetch(base, "/0/data/queues.json")[0] == 200
        finally:
            stop(web)
        deadline = time.monotonic() + 120
        while len(accepted) < 200 and time.monotonic() < deadline:
            if len(accepted) == 60 and master.poll() is None:
                master.send_signal(signal.SIGKILL)  # the master's host is gone
                killed_at = time.monotonic()
            if restarted is None and master.poll() is not None and time.monotonic() - killed_at > 5:
                # The old master's host comes back: the sentinels make it a replica of the new master.
                restarted = redis_server(master_port, master_data)
                restarted.__enter__()
            try:
                accepted.append(enqueue("tally", str(log), f"t{len(accepted)}", 0.05).id)
            except RedisUnavailableError:
                refused += 1  # said loudly to the caller, who tries again
                time.sleep(0.2)
        assert len(accepted) == 200, f"only {len(accepted)} enqueued within 120 s"
        new_master = Redis(port=ports[0]).sentinel_get_master_addr_by_name("mymaster")
        assert int(new_master[1]) != master_port
        result = audit(get_redis(), accepted, log, timeout=120)
    finally:
        for worker in workers:
            stop(worker, timeout=5)
        if restarted is not None:
            restarted.__exit__(None, None, None)
    SUMMARIES.append(result.line("sentinel failover", f" enqueues refused during the failover={refused}"))
    assert (result.lost, result.stuck) == ([], []), worker_log.read_text()[-3000:]
    assert result.finished == 200
    ran_in = {line.split()[2] for line in log.read_text().splitlines()}
    assert len(ran_in) >= 2, worker_log.read_text()[-3000:]  # the pool's worker did its share
