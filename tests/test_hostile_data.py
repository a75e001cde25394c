"""Data planted in Redis by someone with access to it: never run, never fatal, shown as text."""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

from redis import Redis

from taskctl.enqueue import enqueue
from tests.conftest import run_burst_worker, taskctl
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
