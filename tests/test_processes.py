"""The scheduler and web processes, each started as the Procfile starts it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

from redis import Redis

from taskctl.enqueue import enqueue
from taskctl.rqscheduler import make_scheduler
from taskctl.stack import stop
from taskctl.web.app import create_app
from tests import testjobs
from tests.conftest import BIN, ROOT, run_burst_worker, taskctl
from tests.test_scheduling import TWO_SCHEDULES, write_schedules


def test_the_scheduler_process_enqueues_due_jobs_as_json(configured: str, redis: Redis) -> None:
    scheduled = make_scheduler().enqueue_in(timedelta(seconds=0), testjobs.add, 4, 5)
    assert redis.llen("rq:queue:default") == 0

    subprocess.run([sys.executable, "-m", "taskctl.scheduler", "--burst"], env=dict(os.environ), cwd=ROOT,
                   timeout=60, check=True, capture_output=True)  # fmt: skip

    assert redis.lrange("rq:queue:default", 0, -1) == [scheduled.id.encode()]
    stored = redis.hget(f"rq:job:{scheduled.id}", "data")
    assert stored is not None and zlib.decompress(stored).startswith(b'["tests.testjobs.add"')
    run_burst_worker()
    assert taskctl("result", scheduled.id).output == "9\n"


def test_the_dashboard_reads_json_jobs(configured: str) -> None:
    job_id = taskctl("enqueue", "add", "1", "2", "--queue", "low").output.split(" as ")[1].split()[0]
    client = create_app().test_client()

    page = client.get("/")
    job = client.get(f"/0/data/job/{job_id}.json")

    assert page.status_code == 200 and b"RQ dashboard" in page.data
    assert job.status_code == 200
    assert (job.json["status"], job.json["origin"], job.json["description"]) == ("queued", "low", "add(1, 2)")


def procfile_command(process: str) -> list[str]:
    """A process's command exactly as the Procfile gives it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{process}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {process} in the Procfile")


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_an_idle_worker_pool_and_scheduler_print_nothing_and_each_job_prints_two_lines(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """The stack's worker and scheduler, as the Procfile starts them, with schedules declared (cron is parsed)."""
    write_schedules(TWO_SCHEDULES)
    # Maintenance and scheduler passes every 2 s, so that a few seconds of idling span two of each.
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
               TASKCTL_MAINTENANCE_INTERVAL="2", TASKCTL_SCHEDULER_INTERVAL="2")  # fmt: skip
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "scheduler")}
    processes = []
    for name, path in logs.items():
        with open(path, "w") as sink:
            processes.append(subprocess.Popen(procfile_command(name), env=env, stdout=sink, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 30
        while redis.scard("rq:workers") < 2 or "Registering birth" not in logs["scheduler"].read_text():
            assert time.monotonic() < deadline, {name: path.read_text() for name, path in logs.items()}
            time.sleep(0.1)
        time.sleep(2)  # start-up lines written
        before = {name: lines_of(path) for name, path in logs.items()}
        time.sleep(5)  # two maintenance passes of every worker, two scheduler passes
        idle = {name: lines_of(path)[len(before[name]) :] for name, path in logs.items()}

        job = enqueue("add", 2, 3)
        deadline = time.monotonic() + 30
        while redis.hget(f"rq:job:{job.id}", "status") != b"finished":
            assert time.monotonic() < deadline, lines_of(logs["worker"])
            time.sleep(0.1)
        time.sleep(0.5)
        for_the_job = lines_of(logs["worker"])[len(before["worker"]) :]
    finally:
        for process in processes:
            stop(process)

    assert idle == {"worker": [], "scheduler": []}
    assert len(for_the_job) == 2, for_the_job  # started, ended
    assert job.id in for_the_job[0] and f"Job OK ({job.id})" in for_the_job[1]
    everything = "\n".join(lines_of(logs["worker"]) + lines_of(logs["scheduler"]))
    assert "cleaning registries" not in everything and "FutureWarning" not in everything
