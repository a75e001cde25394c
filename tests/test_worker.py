"""The stock `rq worker` command, configured only by taskctl's settings (see also test_plain_worker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from redis import Redis

from taskctl.worker import Worker
from tests.conftest import BIN, ROOT, taskctl
from tests.effects import wait_for
from tests.test_enqueue_cli import job_id_from


def test_the_worker_reads_redis_url_from_a_dotenv_file(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job_id = job_id_from(taskctl("enqueue", "add", "1", "2").output)
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text(f"REDIS_URL={configured}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    subprocess.run([str(BIN / "rq"), "worker", "--burst"], env=env, cwd=project, timeout=60, check=True,
                   capture_output=True)  # fmt: skip

    assert taskctl("result", job_id).output == "3\n"


def test_the_container_images_install_carries_the_pth_file_that_makes_plain_rq_taskctls(tmp_path: Path) -> None:
    """The files the Containerfile copies, installed as it installs them (a wheel), include taskctl_rq.pth."""
    context = tmp_path / "context"
    context.mkdir()
    copied = [line.split()[1:-1] for line in (ROOT / "deploy" / "Containerfile").read_text().splitlines()
              if line.startswith("COPY ")]  # fmt: skip
    for name in (name for names in copied for name in names):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, context / name)
    build = [str(BIN / "python"), "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(context)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("taskctl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("taskctl_rq.pth") == (ROOT / "taskctl_rq.pth").read_bytes()


def test_a_worker_stops_its_pubsub_thread_at_once_even_when_the_thread_already_read_the_unsubscribe(
    configured: str, redis: Redis
) -> None:
    """redis-py 8.2 waits for the thread with no timeout, and RQ gives the thread 60 s: a burst worker hung a minute."""
    worker = Worker(["default"], connection=redis)
    worker.subscribe()
    wait_for(lambda: worker.pubsub.subscribed and worker.pubsub_thread.is_alive(), 10, "the pubsub thread")
    worker.pubsub.unsubscribe()  # the thread reads the reply, then waits for a subscription again
    wait_for(lambda: not worker.pubsub.subscribed, 10, "the thread to read the UNSUBSCRIBE's reply")
    time.sleep(0.2)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3
