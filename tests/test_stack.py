"""`taskctl up`: the quick start, as a new user runs it, with nothing but this project installed."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from taskctl.stack import redis_answers
from tests.conftest import BIN, ROOT, free_port, taskctl
from tests.test_enqueue_cli import job_id_from


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def test_up_brings_the_whole_stack_up_with_an_embedded_redis_and_ctrl_c_stops_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: taskctl starts Redis itself
    dashboard = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TASKCTL_DASHBOARD_PORT", dashboard.rsplit(":", 1)[1])
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        stack = subprocess.Popen(
            [str(BIN / "taskctl"), "up", "--procfile", str(ROOT / "Procfile")],
            env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: http_get(dashboard)[0] == 200, 60, f"the dashboard at {dashboard}\n{log.read_text()}")
        assert redis_answers(redis_url)

        enqueued = taskctl("enqueue", "send_email", "user@example.com", "Order confirmed", "Thanks!", "--wait")
        assert enqueued.exit_code == 0, enqueued.output + log.read_text()
        job_id = job_id_from(enqueued.output)
        assert json.loads(enqueued.output.split("\n", 1)[1])["delivered_via"] == "outbox"

        status, body = http_get(f"{dashboard}/0/data/job/{job_id}.json")
        assert status == 200
        shown = json.loads(body)
        assert (shown["status"], shown["origin"]) == ("finished", "high")
        # HTML-escaped: the dashboard's pages insert it as markup (see README "Security").
        assert html.unescape(shown["description"]) == "send_email('user@example.com', 'Order confirmed', 'Thanks!')"
        queues = json.loads(http_get(f"{dashboard}/0/data/queues.json")[1])["queues"]
        assert {q["name"]: q["finished_job_registry_count"] for q in queues}["high"] == 1
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
    output = log.read_text()
    assert "started embedded Redis at " + redis_url in output
    for process in ("worker", "scheduler", "web"):
        assert f"{process} started (pid=" in output
        assert f"{process} stopped" in output
    assert "SIGINT received" in output
    assert not redis_answers(redis_url), "the embedded Redis outlived the stack"
    assert http_get(dashboard)[0] == 0


def test_up_refuses_to_embed_a_redis_for_a_url_that_is_not_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:pw@127.0.0.1:{free_port()}/0")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    result = taskctl("up", "--procfile", str(ROOT / "Procfile"))

    assert result.exit_code == 1
    assert "Error: cannot reach Redis at redis://:***@127.0.0.1:" in result.output
    assert (
        "an embedded Redis is only started for a local redis://127.0.0.1:PORT URL without a password" in result.output
    )


def test_up_without_a_procfile_says_where_it_looked(configured: str, tmp_path: Path) -> None:
    result = taskctl("up", "--procfile", str(tmp_path / "nowhere"))

    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: no Procfile at {tmp_path / 'nowhere'}; run from the project folder or pass --procfile\n"
    )
