"""The stock `rq worker` command, configured only by taskctl's settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from tests.conftest import BIN, ROOT, taskctl
from tests.test_enqueue_cli import job_id_from


def test_plain_rq_worker_high_default_low_works_with_rq_config_and_worker_class_in_the_environment(
    configured: str, tmp_path: Path
) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "5", "6").output)
    marker = tmp_path / "pwned"
    planted = Queue("default", connection=Redis.from_url(configured), serializer=JSONSerializer)
    refused = planted.enqueue_call("os.system", args=(f"touch {marker}",))
    env = dict(os.environ, RQ_CONFIG="taskctl.rqconfig", RQ_WORKER_CLASS="taskctl.worker.Worker")

    subprocess.run([str(BIN / "rq"), "worker", "high", "default", "low", "--burst"],
                   env=env, cwd=ROOT, timeout=60, check=True, capture_output=True)  # fmt: skip

    assert taskctl("result", job_id).output == "11\n"
    assert "is not an allowed job" in taskctl("status", refused.id).output
    assert not marker.exists()


def test_the_worker_reads_redis_url_from_a_dotenv_file(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "1", "2").output)
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text(f"REDIS_URL={configured}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    subprocess.run([str(BIN / "rq"), "worker", "-c", "taskctl.rqconfig", "-w", "taskctl.worker.Worker", "--burst"],
                   env=env, cwd=project, timeout=60, check=True, capture_output=True)  # fmt: skip

    assert taskctl("result", job_id).output == "3\n"
