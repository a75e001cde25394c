"""The scheduler and web processes, each started as the Procfile starts it."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from datetime import timedelta

from redis import Redis

from taskctl.scheduler import make_scheduler
from taskctl.web.app import create_app
from tests import testjobs
from tests.conftest import ROOT, run_burst_worker, taskctl


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
