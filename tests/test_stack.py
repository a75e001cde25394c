"""`taskctl up`: the quick start, as a new user runs it, with nothing but this project installed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from redis import Redis

from jobs import shop
from taskctl import outbox
from taskctl.stack import redis_answers, redis_server
from tests.conftest import BIN, ROOT, free_port, taskctl
from tests.test_enqueue_cli import job_id_from


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
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
        # The job's own text: the dashboard's JSON is data (its pages escape what they insert).
        assert shown["description"] == "send_email('user@example.com', 'Order confirmed', 'Thanks!')"
        queues = json.loads(http_get(f"{dashboard}/0/data/queues.json")[1])["queues"]
        assert {q["name"]: q["finished_job_registry_count"] for q in queues}["high"] == 1

        # The relay runs too: a row committed in the shop's database (its default outbox) becomes a job.
        with closing(shop.connect()) as conn, shop.transaction(conn):
            handle = outbox.enqueue(conn, "push_notification", 7, "Order 1 received")
        client = Redis.from_url(redis_url)
        try:
            wait_until(lambda: client.hget(f"rq:job:{handle.id}", "status") == b"finished", 30,
                       f"the outbox row's job {handle.id}\n{log.read_text()}")  # fmt: skip
        finally:
            client.close()
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
    output = log.read_text()
    assert "started embedded Redis at " + redis_url in output
    for process in ("worker", "scheduler", "relay", "web"):
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


# --- Stopping: Ctrl-C in a terminal, SIGTERM from a process manager --------------------------------


class Up:
    """`taskctl up` as a terminal's foreground job: a process group of its own, which Ctrl-C signals whole."""

    def __init__(self, log: Path, procfile: Path, *options: str) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "taskctl"), "up", "--procfile", str(procfile), *options],
                env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def output(self) -> str:
        return self.log.read_text()

    def children(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"(\w+) started \(pid=(\d+)\)", self.output)}

    def stop(self, send: Callable[[int], None], timeout: float = 60) -> float:
        """Send a signal with ``send(pid)``; the seconds until taskctl up had exited."""
        started = time.monotonic()
        send(self.process.pid)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"taskctl up still running {timeout}s after the signal\n{self.output}") from None
        return time.monotonic() - started

    def clean_up(self) -> None:
        """After a failed test: stop it, and kill what is left (its children run in sessions of their own)."""
        if self.process.poll() is not None:
            return  # it stopped its children itself (the tests check that nothing is left)
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=60)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            for pid in self.children().values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start `taskctl up` with an embedded Redis on a free port; every process it started is gone afterwards."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("TASKCTL_DASHBOARD_PORT", str(free_port()))
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    started: list[Up] = []

    def start(*options: str, procfile: Path = ROOT / "Procfile") -> Up:
        stack = Up(tmp_path / f"up-{len(started)}.log", procfile, *options)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.clean_up()


def assert_nothing_left(stack: Up) -> None:
    """No process of any group taskctl up started still runs.

    Zombies do not count: an orphan's parent is init, and some inits (a container's) reap late.
    """
    groups = set(stack.children().values())
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            line = stat.read_text()
            state, _, group = line.rsplit(")", 1)[1].split()[:3]
            if int(group) in groups and state not in ("Z", "X"):
                alive.append(line)
    assert not alive, f"{alive}\n{stack.output}"


def enqueue_tally(stack: Up, log: Path, seconds: float) -> str:
    """A job that logs its start and its end; the id once a worker has started it."""
    wait_until(lambda: redis_answers(os.environ["REDIS_URL"]), 60, f"the embedded Redis\n{stack.output}")
    enqueued = taskctl("enqueue", "tally", str(log), "t1", str(seconds))
    assert enqueued.exit_code == 0, enqueued.output
    wait_until(lambda: log.exists() and "start t1" in log.read_text(), 60, f"the job to start\n{stack.output}")
    return job_id_from(enqueued.output)


def job_status_on_disk(redis_url: str, data_dir: Path, job_id: str) -> str:
    """The job's status as the stopped Redis left it on disk (its append-only file)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with redis_server(port, data_dir / "redis"):
        client = Redis.from_url(redis_url)
        try:
            return (client.hget(f"rq:job:{job_id}", "status") or b"").decode()
        finally:
            client.close()


def assert_stopped_cleanly(stack: Up, seconds: float, redis_url: str) -> None:
    output = stack.output
    assert stack.process.returncode == 0, output
    assert "Traceback" not in output and "Error 111" not in output, output
    # One stop signal per worker, passed on by the pool: a second one would be a cold shutdown.
    assert output.count("Received SIGINT/SIGTERM, shutting down") == 1, output
    assert output.count("warm shut down requested") == 2, output
    assert "cold shut down" not in output, output
    # The workers first (their job finishes), then the scheduler, the relay and the dashboard, then Redis.
    order = ["worker stopped", "sending SIGTERM to scheduler", "scheduler stopped", "sending SIGTERM to relay",
             "relay stopped (rc=0)", "sending SIGTERM to web", "web stopped", "stopped embedded Redis"]  # fmt: skip
    assert [output.index(line) for line in order] == sorted(output.index(line) for line in order), output
    assert not redis_answers(redis_url)
    assert_nothing_left(stack)
    assert seconds < 20, f"the stop took {seconds:.1f}s\n{output}"


def test_ctrl_c_lets_the_running_job_finish_then_stops_the_processes_and_redis_last(
    up: Callable[..., Up], tmp_path: Path, environment: dict[str, str]
) -> None:
    stack = up()
    job_log = tmp_path / "tally.log"
    job_id = enqueue_tally(stack, job_log, seconds=3)

    seconds = stack.stop(lambda pid: os.killpg(pid, signal.SIGINT))  # a terminal's Ctrl-C: the whole group

    assert "SIGINT received" in stack.output
    assert_stopped_cleanly(stack, seconds, environment["REDIS_URL"])
    assert "end t1" in job_log.read_text()
    assert job_status_on_disk(environment["REDIS_URL"], Path(environment["TASKCTL_DATA_DIR"]), job_id) == "finished"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_to_taskctl_up_alone_lets_the_running_job_finish_and_stops_redis_last(
    up: Callable[..., Up], tmp_path: Path, environment: dict[str, str], signum: signal.Signals
) -> None:
    stack = up()
    job_log = tmp_path / "tally.log"
    job_id = enqueue_tally(stack, job_log, seconds=3)

    seconds = stack.stop(lambda pid: os.kill(pid, signum))  # a process manager, or a closed terminal

    assert f"{signum.name} received" in stack.output
    assert_stopped_cleanly(stack, seconds, environment["REDIS_URL"])
    assert "end t1" in job_log.read_text()
    assert job_status_on_disk(environment["REDIS_URL"], Path(environment["TASKCTL_DATA_DIR"]), job_id) == "finished"


def test_a_job_longer_than_the_grace_is_killed_on_stop_and_runs_again_at_the_next_up(
    up: Callable[..., Up], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Heartbeats and maintenance every second, the shortest grace: the killed job is found abandoned within seconds.
    for name, value in (("TASKCTL_JOB_MONITORING_INTERVAL", "1"), ("TASKCTL_HEARTBEAT_GRACE", "2"),
                        ("TASKCTL_MAINTENANCE_INTERVAL", "1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    stack = up("--grace", "1")
    job_log = tmp_path / "tally.log"
    enqueue_tally(stack, job_log, seconds=6)

    seconds = stack.stop(lambda pid: os.killpg(pid, signal.SIGINT))

    output = stack.output
    assert stack.process.returncode == 1, output  # something had to be killed
    assert "sending SIGKILL to worker" in output and "still running after 1 s" in output, output
    assert output.index("worker stopped") < output.index("stopped embedded Redis"), output
    assert "end t1" not in job_log.read_text()
    assert seconds < 15, output
    assert_nothing_left(stack)

    again = up()
    wait_until(lambda: "end t1" in job_log.read_text(), 60, f"the job to run again\n{again.output}")
    again.stop(lambda pid: os.killpg(pid, signal.SIGINT))
    runs = job_log.read_text().splitlines()
    assert [line.split()[0] for line in runs] == ["start", "start", "end"], runs
    assert again.process.returncode == 0 and "Traceback" not in again.output, again.output


def test_a_second_ctrl_c_kills_what_still_runs_without_waiting_for_the_grace(
    up: Callable[..., Up], tmp_path: Path
) -> None:
    stack = up()
    enqueue_tally(stack, tmp_path / "tally.log", seconds=30)
    os.killpg(stack.process.pid, signal.SIGINT)
    wait_until(lambda: "warm shut down requested" in stack.output, 10, f"the warm shutdown\n{stack.output}")

    seconds = stack.stop(lambda pid: os.killpg(pid, signal.SIGINT))

    output = stack.output
    assert "SIGINT received: killing what still runs" in output, output
    assert "sending SIGKILL to worker" in output and "stop signal repeated" in output, output
    # Only the worker was waited for: the scheduler, the relay and the dashboard still stop as usual.
    assert "sending SIGTERM to scheduler" in output and "sending SIGKILL to scheduler" not in output, output
    assert "sending SIGTERM to relay" in output and "sending SIGKILL to relay" not in output, output
    assert output.index("worker stopped") < output.index("stopped embedded Redis"), output
    assert stack.process.returncode == 1, output
    assert seconds < 10, output
    assert_nothing_left(stack)


def test_a_process_that_exits_by_itself_stops_the_others_and_up_exits_with_its_code(
    up: Callable[..., Up], tmp_path: Path
) -> None:
    procfile = tmp_path / "Procfile"
    # A compound line keeps its shell: SIGTERM goes to its whole process group.
    procfile.write_text("compound: sleep 60 && echo never\nsimple: sleep 60\nquitter: sleep 1; exit 3\n")
    stack = up(procfile=procfile)

    try:
        stack.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"taskctl up did not stop after a process exited\n{stack.output}") from None

    output = stack.output
    assert stack.process.returncode == 3, output
    assert "quitter stopped (rc=3)" in output, output
    assert "compound stopped (SIGTERM)" in output and "never" not in output, output
    assert "simple stopped (SIGTERM)" in output, output
    assert output.index("simple stopped") < output.index("stopped embedded Redis"), output
    assert_nothing_left(stack)
