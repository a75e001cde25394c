"""Timeouts a job cannot swallow; Redis settings checked and reported; secrets kept out of output."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis

from taskctl.settings import load_settings
from taskctl.stack import redis_server, stop
from taskctl.worker import TIMEOUT_EXIT_CODE
from tests.conftest import FORKING, IN_PROCESS, ROOT, free_port, taskctl, worker_command
from tests.test_failures import fields

#: What each worker class records for a job that swallowed its timeout.
OVERRUN = {
    IN_PROCESS: "rq.timeouts.JobTimeoutException: job ignored its 1 s timeout; taskctl ended the worker process",
    FORKING: "Work-horse terminated unexpectedly; waitpid returned",
}


@pytest.mark.parametrize("worker_class", [IN_PROCESS, FORKING])
def test_a_job_that_swallows_its_timeout_is_ended_anyway(worker_class: str, configured: str, redis: Redis) -> None:
    job_id = taskctl("enqueue", "stubborn", "60", "--job-timeout", "1").output.split(" as ")[1].split()[0]
    worker = subprocess.Popen(worker_command(worker_class=worker_class), env=dict(os.environ), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        started = time.monotonic()
        while fields(taskctl("status", job_id).output)["status"] not in ("failed", "finished"):
            assert time.monotonic() - started < 30, "the job outlived its timeout by far"
            time.sleep(0.2)

        shown = fields(taskctl("status", job_id).output)
        assert shown["status"] == "failed"
        assert OVERRUN[worker_class] in taskctl("failed", "show", job_id).output
        assert time.monotonic() - started < 15  # 1 s timeout + 3 s grace, not RQ's 60 s more
        if worker_class == IN_PROCESS:  # it ended its own process; a pool or process manager starts another
            assert worker.wait(timeout=10) == TIMEOUT_EXIT_CODE
        else:
            assert worker.poll() is None
    finally:
        stop(worker, timeout=10)


def test_doctor_reports_a_safe_redis(configured: str) -> None:
    result = taskctl("doctor")

    assert result.exit_code == 0, result.output
    assert "[ok] maxmemory-policy: noeviction" in result.output
    assert "[ok] persistence: append-only file on" in result.output
    assert "[ok] redis version: " in result.output


def test_doctor_and_workers_warn_about_eviction_and_no_persistence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    with redis_server(port, tmp_path / "r", extra_args=("--maxmemory-policy", "allkeys-lru", "--appendonly", "no")):
        url = f"redis://127.0.0.1:{port}/0"
        monkeypatch.setenv("REDIS_URL", url)
        from taskctl.settings import get_settings

        get_settings.cache_clear()
        result = taskctl("doctor")
        worker = subprocess.run(worker_command("--burst"), env=dict(os.environ), cwd=ROOT, capture_output=True,
                                text=True, timeout=60)  # fmt: skip

    assert result.exit_code == 1
    assert "[warning] maxmemory-policy: allkeys-lru: when memory is full Redis silently drops jobs" in result.output
    assert "[warning] persistence: append-only file off" in result.output
    assert result.output.endswith("Error: 2 problem(s) found\n")
    assert "*** Redis maxmemory-policy: allkeys-lru" in worker.stdout + worker.stderr


def test_doctor_says_when_config_is_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    port = free_port()
    with redis_server(port, tmp_path / "r", extra_args=("--rename-command", "CONFIG", "")):
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        from taskctl.settings import get_settings

        get_settings.cache_clear()
        result = taskctl("doctor")

    assert result.exit_code == 1
    assert "[unknown] maxmemory-policy: could not check" in result.output


def test_secrets_never_appear_in_settings_repr_or_errors() -> None:
    settings = load_settings(
        {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "TASKCTL_DASHBOARD_PASSWORD": "s3cret", "PUSH_TOKEN": "tok3n",
         "SMTP_URL": "smtp://u:mailpw@host"},
        env_file=None,
    )  # fmt: skip

    shown = repr(settings)
    for secret in ("hunter2", "s3cret", "tok3n", "mailpw"):
        assert secret not in shown
    assert settings.redis_url_masked == "redis://:***@127.0.0.1:1/0"
