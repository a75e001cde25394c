"""Data planted in Redis by someone with access to it: never run, never fatal, shown as text."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from redis import Redis

from taskctl.enqueue import enqueue
from tests.conftest import ROOT, fetch, run_burst_worker, taskctl
from tests.test_failures import fields


class Planted:
    """Unpickling this runs a shell command: the classic payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def plant_pickle(redis: Redis, job_id: str, field: str, marker: Path) -> None:
    payload = pickle.dumps(Planted(marker))
    redis.hset(f"rq:job:{job_id}", field, zlib.compress(payload) if field == "data" else payload)


def test_a_pickle_planted_in_job_data_never_runs_and_the_worker_carries_on(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    poisoned = enqueue("add", 1, 2)
    plant_pickle(redis, poisoned.id, "data", marker)
    healthy = enqueue("add", 3, 4)

    run_burst_worker()

    assert not marker.exists()
    shown = fields(taskctl("status", poisoned.id).output)
    assert shown["status"] == "failed"
    assert "unreadable job data" in shown["error"]
    assert taskctl("result", healthy.id).output == "7\n"


def test_a_pickle_planted_in_job_meta_never_runs(configured: str, redis: Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job = enqueue("add", 1, 2)
    plant_pickle(redis, job.id, "meta", marker)

    run_burst_worker()
    status = taskctl("status", job.id)
    shown = taskctl("failed")

    assert not marker.exists()
    assert status.exit_code == 0 and "Traceback" not in status.output + shown.output


def test_the_scheduler_drops_a_planted_pickle_and_carries_on(configured: str, redis: Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    planted = taskctl("enqueue", "add", "1", "2", "--in", "1h").output.split(" as ")[1].split()[0]
    healthy = taskctl("enqueue", "add", "3", "4", "--in", "1h").output.split(" as ")[1].split()[0]
    plant_pickle(redis, planted, "data", marker)
    for job_id in (planted, healthy):
        redis.zadd("rq:scheduler:scheduled_jobs", {job_id: time.time() - 1})  # due now

    done = subprocess.run([sys.executable, "-m", "taskctl.scheduler", "--burst"], env=dict(os.environ), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "unreadable job data (not JSON)" in done.stderr
    assert redis.zscore("rq:scheduler:scheduled_jobs", planted) is None
    assert redis.lrange("rq:queue:default", 0, -1) == [healthy.encode()]


def test_the_dashboard_shows_planted_pickles_without_running_them(
    web: Callable[..., str], redis: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    in_data, in_meta = enqueue("add", 1, 2), enqueue("add", 3, 4)
    plant_pickle(redis, in_data.id, "data", marker)
    plant_pickle(redis, in_meta.id, "meta", marker)
    base = web()

    for path in ["/0/data/jobs/default/queued/8/asc/1.json", f"/0/data/job/{in_data.id}.json",
                 f"/0/data/job/{in_meta.id}.json", f"/0/view/job/{in_meta.id}", "/"]:  # fmt: skip
        assert fetch(base, path)[0] == 200, path
    assert not marker.exists()


def test_callbacks_named_in_redis_are_never_imported(configured: str, redis: Redis) -> None:
    ok, failing = enqueue("add", 1, 2), enqueue("fail", "x")
    planted = "tests.testjobs.planted_callback"
    for job in (ok, failing):
        redis.hset(f"rq:job:{job.id}", mapping={"success_callback_name": planted, "failure_callback_name": planted})

    run_burst_worker()

    assert not Path(os.environ["TASKCTL_DATA_DIR"], "callback-ran").exists()
    assert taskctl("result", ok.id).output == "3\n"
