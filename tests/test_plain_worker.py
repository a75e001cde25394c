"""`rq worker high default`, typed as it is, is taskctl's worker; a stock worker is named and costs no job.

The first tests start the command exactly as a user does after the README's
set-up: a shell that sources .venv/bin/activate, a project folder with a .env,
and nothing else in the environment. The others start a deliberately stock RQ
worker on the same Redis, and count from each job's own log what really ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue as StockQueue
from rq.serializers import JSONSerializer

from taskctl.enqueue import enqueue, enqueue_call
from taskctl.rqclasses import TASKCTL_RUNS
from taskctl.stack import stop
from taskctl.web.app import FOREIGN_MARK, create_app
from tests.conftest import BIN, ROOT, stock_worker, taskctl, worker_command
from tests.test_enqueue_cli import job_id_from
from tests.test_failures import fields
from tests.test_hostile_data import plant_pickle

ACTIVATE = BIN / "activate"
pytestmark = pytest.mark.skipif(not ACTIVATE.is_file(), reason="the suite is not running in a virtualenv (.venv)")


def as_a_user_would(project: Path, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a shell that has only sourced the activate script, in the project folder."""
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(project), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", f"source {ACTIVATE} && {command}"], env=clean, cwd=project,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture
def project(configured: str, tmp_path: Path) -> Path:
    """A project folder whose .env points taskctl at the test's Redis, as the quick start's does."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / ".env").write_text(f"REDIS_URL={configured}\nTASKCTL_DATA_DIR={tmp_path / 'var'}\n")
    return folder


def test_plain_rq_worker_high_default_after_activation_runs_a_cli_enqueued_job_to_finished(
    project: Path, tmp_path: Path
) -> None:
    job_id = job_id_from(taskctl("enqueue", "send_email", "ann@example.com", "Order confirmed", "Thanks").output)

    done = as_a_user_would(project, "rq worker high default --burst")

    assert done.returncode == 0, done.stderr
    assert fields(taskctl("status", job_id).output)["status"] == "finished"
    (mail,) = (tmp_path / "var" / "outbox").glob("*.eml")
    assert "Subject: Order confirmed" in mail.read_text()


def test_plain_rq_worker_refuses_planted_os_system_jobs_and_never_unpickles_data_or_meta(
    project: Path, configured: str, redis: Redis, tmp_path: Path
) -> None:
    markers = {name: tmp_path / name for name in ("json-call", "pickle-call", "pickled-data", "pickled-meta")}
    json_call = StockQueue("high", connection=redis, serializer=JSONSerializer).enqueue_call(
        "os.system", args=(f"touch {markers['json-call']}",)
    )
    pickle_call = StockQueue("default", connection=redis).enqueue_call(
        "os.system", args=(f"touch {markers['pickle-call']}",)
    )
    pickled_data = enqueue("send_email", "ann@example.com", "Hi", "there")
    plant_pickle(redis, pickled_data.id, "data", markers["pickled-data"])
    pickled_meta = enqueue("send_email", "ann@example.com", "Hi", "there")
    plant_pickle(redis, pickled_meta.id, "meta", markers["pickled-meta"])
    failing_with_pickled_meta = enqueue("send_email", "not an address", "Hi", "there")
    plant_pickle(redis, failing_with_pickled_meta.id, "meta", markers["pickled-meta"])

    done = as_a_user_would(project, "rq worker high default --burst")

    assert done.returncode == 0, done.stderr
    assert [name for name, marker in markers.items() if marker.exists()] == []
    assert "is not an allowed job" in fields(taskctl("status", json_call.id).output)["error"]
    for refused in (pickle_call.id, pickled_data.id):
        shown = fields(taskctl("status", refused).output)
        assert (shown["status"], "unreadable job data" in shown["error"]) == ("failed", True)
    assert fields(taskctl("status", pickled_meta.id).output)["status"] == "finished", done.stderr
    shown = fields(taskctl("status", failing_with_pickled_meta.id).output)
    assert (shown["status"], "invalid recipient address" in shown["error"]) == ("failed", True)
    assert "unhandled exception" not in done.stderr


def test_a_stock_worker_is_named_by_doctor_workers_and_the_dashboard(
    running_stock_worker: subprocess.Popen[str], redis: Redis
) -> None:
    pid = running_stock_worker.pid
    (key,) = [k for k in redis.smembers("rq:workers") if redis.hget(k, "pid") == str(pid).encode()]
    name = key.decode().removeprefix("rq:worker:")
    host = redis.hget(key, "hostname").decode()  # type: ignore[union-attr]

    doctor = taskctl("doctor")
    workers = taskctl("workers")
    page = create_app().test_client().get("/0/data/workers.json").json

    assert doctor.exit_code == 1
    (line,) = [line for line in doctor.output.splitlines() if "[error]" in line]
    assert f"worker {name} on host {host}, pid {pid}, queues high,default,low" in line
    assert "reads jobs as pickle" in line and "`rq worker high default low`" in line
    (row,) = [line for line in workers.output.splitlines() if line.startswith(name)] or [workers.output]
    assert "NOT TASKCTL" in row and str(pid) in row
    assert "1 worker(s) marked NOT TASKCTL" in workers.output
    (shown,) = [w["name"] for w in page["workers"] if w["name"].startswith(name)]
    assert shown == f"{name} ({FOREIGN_MARK})"


def test_doctor_passes_and_workers_marks_nothing_with_only_taskctl_workers(
    worker: subprocess.Popen[str], redis: Redis
) -> None:
    deadline = time.monotonic() + 30
    while not redis.smembers("rq:workers"):
        assert time.monotonic() < deadline, "the taskctl worker did not register"
        time.sleep(0.1)

    doctor = taskctl("doctor")

    assert doctor.exit_code == 0, doctor.output
    assert "[ok] workers: every live worker is taskctl's" in doctor.output
    assert "NOT TASKCTL" not in taskctl("workers").output


def test_a_taskctl_worker_logs_one_warning_for_a_stock_worker_however_many_passes_it_makes(
    running_stock_worker: subprocess.Popen[str], configured: str
) -> None:
    env = dict(os.environ, TASKCTL_MAINTENANCE_INTERVAL="1")
    ours = subprocess.Popen([str(BIN / "rq"), "worker"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    time.sleep(5)  # five maintenance passes
    stop(ours)
    output = ours.stdout.read() if ours.stdout else ""

    warnings = [line for line in output.splitlines() if "is not a taskctl worker" in line]
    assert len(warnings) == 1, output
    assert f"pid {running_stock_worker.pid}" in warnings[0]


def labels_in(log: str) -> list[str]:
    """What really ran: each run of `record` and `undecodable` logs one line, its label first."""
    return sorted(line.split()[0] for line in Path(log).read_text().splitlines()) if Path(log).exists() else []


def test_jobs_a_stock_worker_could_not_read_come_back_and_finish_on_a_taskctl_worker_with_their_retries(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs.log")
    really_failed = enqueue("fail", "a real failure")
    own_deserialization_error = enqueue("undecodable", log)
    subprocess.run(worker_command("--burst"), env=dict(os.environ), cwd=ROOT, timeout=60, check=True,
                   capture_output=True)  # fmt: skip
    # Taken by the stock worker: retried at once until none is left, no retries, a retry after a backoff.
    immediate = enqueue_call("record", (log, "immediate"), retries=3, backoff=0)
    single = enqueue_call("record", (log, "single"), retries=0)
    later = enqueue_call("record", (log, "later"), retries=2, backoff=1)
    stock = subprocess.run(stock_worker(configured, "--burst"), env=dict(os.environ), cwd=ROOT, timeout=60,
                           capture_output=True, text=True)  # fmt: skip
    assert stock.returncode == 0, stock.stderr
    assert labels_in(log) == ["undecodable"]  # the stock worker ran none of them
    stock_failed = {j: redis.hget(f"rq:job:{j.id}", "status") for j in (immediate, single, later)}
    assert stock_failed == {immediate: b"failed", single: b"failed", later: b"scheduled"}
    assert redis.hget(f"rq:job:{immediate.id}", "retries_left") == b"0"

    ours = subprocess.Popen([str(BIN / "rq"), "worker"], env=dict(os.environ), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while {redis.hget(f"rq:job:{j.id}", "status") for j in (immediate, single, later)} != {b"finished"}:
            assert time.monotonic() < deadline, {
                j.id: redis.hget(f"rq:job:{j.id}", "status") for j in (immediate, single, later)
            }
            time.sleep(0.2)
    finally:
        stop(ours)
    output = ours.stdout.read() if ours.stdout else ""

    assert labels_in(log) == ["immediate", "later", "single", "undecodable"]  # each ran once, on a taskctl worker
    retries = {name: redis.hget(f"rq:job:{j.id}", "retries_left") for name, j in
               (("immediate", immediate), ("later", later))}  # fmt: skip
    assert retries == {"immediate": b"3", "later": b"2"}
    assert {redis.hget(f"rq:job:{j.id}", TASKCTL_RUNS) for j in (immediate, single, later)} == {b"1"}
    assert output.count("could not read it and failed it; back on queue") == 2, output
    for stays_failed in (really_failed, own_deserialization_error):
        assert redis.hget(f"rq:job:{stays_failed.id}", "status") == b"failed"


def test_a_permanent_error_spends_every_retry_for_good_even_after_a_requeue(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    counter = tmp_path / "attempts"
    job_id = job_id_from(taskctl("enqueue", "refuse", str(counter), "no such customer").output)
    subprocess.run(worker_command("--burst"), env=dict(os.environ), cwd=ROOT, timeout=60, check=True,
                   capture_output=True)  # fmt: skip
    assert taskctl("failed", "requeue", job_id).exit_code == 0

    subprocess.run(worker_command("--burst"), env=dict(os.environ), cwd=ROOT, timeout=60, check=True,
                   capture_output=True)  # fmt: skip

    assert counter.read_text() == "2"
    assert redis.hget(f"rq:job:{job_id}", "retries_left") == b"0"
    assert redis.hget(f"rq:job:{job_id}", "status") == b"failed"


def test_the_installed_pth_file_is_the_one_in_the_repository() -> None:
    import sysconfig

    installed = Path(sysconfig.get_path("purelib")) / "taskctl_rq.pth"
    assert installed.read_text() == (ROOT / "taskctl_rq.pth").read_text()
    probe = subprocess.run([sys.executable, "-c", "import os; print(os.environ['RQ_WORKER_CLASS'])"],
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True)  # fmt: skip
    assert probe.stdout == "taskctl.worker.Worker\n"
