"""Many hosts on one Redis, `taskctl workers`, and the deployment files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from taskctl.stack import stop
from tests.conftest import BIN, ROOT, SUMMARIES, taskctl, worker_command
from tests.test_faults import audit, enqueue_tallies, horse_of

DEPLOY = ROOT / "deploy"


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_workers_of_three_hosts_share_a_queue_and_losing_one_host_loses_nothing(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """Hosts are processes with their own worker names here (network namespaces need privileges CI may lack)."""
    log = tmp_path / "runs.log"
    ids = enqueue_tallies(log, 300, 0.05)
    hosts = {
        host: [subprocess.Popen(worker_command("--name", f"{host}.{n}"), env=dict(os.environ), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in range(2)]
        for host in ("host-a", "host-b", "host-c")
    }  # fmt: skip
    try:
        listing = ""
        deadline = time.monotonic() + 30
        while listing.count("host-") < 6 and time.monotonic() < deadline:
            listing = taskctl("workers").output
            time.sleep(0.2)
        lines = listing.splitlines()
        assert lines[0].split()[:4] == ["WORKER", "KIND", "HOST", "PID"]
        assert {line.split()[1] for line in lines[1:]} == {"taskctl"}
        assert {line.split()[0] for line in lines[1:]} == {
            f"{h}.{n}" for h in ("host-a", "host-b", "host-c") for n in range(2)
        }
        time.sleep(2)
        for worker in hosts["host-a"]:  # the host disappears: every process at once
            horse = horse_of(worker, log)
            worker.send_signal(signal.SIGKILL)
            if horse is not None:
                horse.send_signal(signal.SIGKILL)
        result = audit(redis, ids, log, timeout=180)
    finally:
        for workers in hosts.values():
            for worker in workers:
                stop(worker, timeout=5)
    ran_on = {Job.fetch(i, connection=redis, serializer=JSONSerializer).worker_name.split(".")[0] for i in ids}
    SUMMARIES.append(result.line("one of three hosts lost", f" hosts that ran jobs={sorted(ran_on)}"))
    assert (result.lost, result.stuck) == ([], [])
    assert result.finished == 300
    assert {"host-b", "host-c"} <= ran_on


def test_workers_says_when_none_is_alive(configured: str) -> None:
    assert taskctl("workers").output == "No live workers.\n"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        # Point the units at this checkout, as an install would at /opt/taskctl.
        text = unit.read_text().replace("/opt/taskctl/.venv/bin", str(BIN)).replace("/opt/taskctl", str(ROOT))
        name = unit.name.replace("@.service", "@1.service")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))

    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert len(units) == 4


def test_every_procfile_process_has_a_systemd_unit_with_the_same_command() -> None:
    """The same commands everywhere; systemd supervises itself: one `rq worker` per unit instance, not a pool."""
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if re.match(r"^\w+:", line)
    )
    units = {unit.name: unit.read_text() for unit in (DEPLOY / "systemd").glob("*.service")}
    # The plain commands, as users type them: installing taskctl makes them taskctl's (taskctl_rq.pth).
    worker = "rq worker"
    pool = "rq worker-pool -n 2"
    assert procfile["worker"].strip() == pool
    unit_of = {"worker": "taskctl-worker@.service", "scheduler": "taskctl-scheduler.service",
               "relay": "taskctl-relay.service", "web": "taskctl-web.service"}  # fmt: skip
    assert set(procfile) == set(unit_of) and set(units) == set(unit_of.values())
    container = (DEPLOY / "Containerfile").read_text()
    assert 'CMD ["rq", "worker-pool", "-n", "2"]' in container
    for process, unit in unit_of.items():
        command = worker if process == "worker" else procfile[process].strip()
        exec_start = re.search(r"^ExecStart=/opt/taskctl/\.venv/bin/(.*)$", units[unit], re.M)
        assert exec_start is not None
        assert exec_start.group(1) == command, (process, command, exec_start.group(1))
        assert "Restart=always" in units[unit] and "KillSignal=SIGTERM" in units[unit]
        if process != "worker":  # the image's default command; the others are shown in its header
            assert re.search(rf"^#\s+docker run .*taskctl {re.escape(command)}(\s|$)", container, re.M), process
