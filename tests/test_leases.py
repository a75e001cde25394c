"""Leases and fencing tokens on one host: real `rq worker` processes, a real Redis, real SIGSTOP.

The same guarantees across hosts and network partitions are in test_partitions.py
(it needs root); these run anywhere.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psutil
import pytest
import rq.utils
from redis import Redis

from jobs import shop
from taskctl.connection import connect, lua
from taskctl.enqueue import enqueue_call
from taskctl.exceptions import LeaseLostError, SettingsError
from taskctl.fencing import Run, current_run
from taskctl.lease import CURRENT_RUN, LEASE_LOST_EXIT
from taskctl.rqclasses import CLAIM_SCRIPT, TASKCTL_RUNS, CatalogJob, Queue
from taskctl.settings import get_settings, load_settings
from taskctl.stack import stop
from taskctl.status import fetch_job
from taskctl.status import wait_for as wait_for_job
from taskctl.worker import Worker
from tests.conftest import BIN, FORKING, IN_PROCESS, ROOT, SUMMARIES, taskctl
from tests.effects import SHORT_LEASE_ENV, active_after_newer_start, audit_effects, read_runs, superseded, wait_for
from tests.test_faults import wait_until_final

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def workers(configured: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            stop(process, timeout=10)


def start_worker(started: list[subprocess.Popen[bytes]], log: Path, worker_class: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(BIN / "rq"), "worker", "-w", worker_class], env=dict(os.environ, **SHORT_LEASE_ENV), cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    started.append(process)
    return process


@pytest.mark.parametrize(
    ("worker_class", "what_freezes"),
    [(IN_PROCESS, "the worker"), (FORKING, "the worker"), (FORKING, "the worker but not its work-horse")],
)
def test_a_frozen_run_is_replaced_and_after_thawing_it_writes_and_records_nothing(
    workers: list[subprocess.Popen[bytes]], redis: Redis, tmp_path: Path, worker_class: str, what_freezes: str
) -> None:
    """SIGSTOP for 10 s, twice the lease, in the middle of a job; another worker runs it again meanwhile."""
    database, log = tmp_path / "effects.sqlite3", tmp_path / "runs.log"
    first = start_worker(workers, tmp_path / "first.log", worker_class)
    [job_id] = [enqueue_call("fenced_steps", (str(database), str(log), "j", 24, 0.5)).id]
    wait_for(lambda: any(r.activity for r in read_runs(log).values()), 30, "the job's first write")
    first_run = read_runs(log)[("j", 1)]
    running = psutil.Process(first_run.pid)
    frozen = [running] if what_freezes == "the worker" and worker_class == IN_PROCESS else [psutil.Process(first.pid)]
    if what_freezes == "the worker" and worker_class == FORKING:
        frozen.append(running)  # the work-horse: the whole worker freezes, as in a VM pause
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    second = start_worker(workers, tmp_path / "second.log", worker_class)
    time.sleep(10)
    for process in frozen:
        process.send_signal(signal.SIGCONT)

    final = wait_until_final(redis, [job_id], timeout=60)
    effects = audit_effects(database, log, ["j"], 24)
    runs = effects.runs
    late = active_after_newer_start(runs, runs[("j", 1)])  # as the log ended, not as it was at the freeze

    assert final == {job_id: "finished"}
    assert sorted(runs) == [("j", 1), ("j", 2)] and superseded(runs, runs[("j", 1)])
    assert (effects.unfinished, effects.overlapping, effects.stale_accepted) == ([], [], [])
    assert not runs[("j", 1)].ended  # stopped, never completed, never recorded
    status = dict(line.split(":", 1) for line in taskctl("status", job_id).output.splitlines())
    assert (status["status"].strip(), status["run"].strip()) == ("finished", "2")
    assert status["worker"].strip().endswith(f".{second.pid}")  # the newer run's outcome stands
    if what_freezes == "the worker but not its work-horse":
        # Its worker could not renew the lease: the work-horse stopped itself before the lease ran out.
        assert late == [], "the work-horse went on after a newer run started"
        assert runs[("j", 2)].start > frozen_at
    elif worker_class == IN_PROCESS:  # thawed past its lease, the process ended itself at once
        assert first.wait(timeout=10) == LEASE_LOST_EXIT
    lost_line = [line for line in (tmp_path / "first.log").read_text().splitlines() if "lost its lease" in line]
    assert len(lost_line) == 1 and job_id in lost_line[0], (tmp_path / "first.log").read_text()[-2000:]
    SUMMARIES.append(
        f"frozen {what_freezes} ({worker_class.rsplit('.', 1)[1]}) 10 s mid-job: {effects.line()}, "
        f"writes the frozen run attempted after the newer run started={len(late)}"
    )


def test_a_worker_held_up_after_its_claim_starts_nothing_once_another_run_holds_the_job(
    workers: list[subprocess.Popen[bytes]], redis: Redis, tmp_path: Path
) -> None:
    """The claim-to-start window: a worker frozen there finds the job given back and started elsewhere."""
    log = tmp_path / "runs.log"
    job_id = enqueue_call("tally", (str(log), "t", 4.0)).id
    queue_key = "rq:queue:default"
    claimed = lua(redis, CLAIM_SCRIPT)(keys=[queue_key], args=[CatalogJob.redis_job_namespace_prefix], client=redis)
    assert claimed[1] == job_id.encode()  # this test is the worker that claimed it, and is now held up
    start_worker(workers, tmp_path / "other.log", IN_PROCESS)
    wait_for(lambda: log.exists(), 30, "the claim given back and started by the other worker")
    job = CatalogJob.fetch(job_id, connection=redis)
    held_up = Worker(["default"], connection=redis)

    with pytest.raises(LeaseLostError, match="another run holds its lease; not started here"):
        held_up.prepare_execution(job)

    assert wait_until_final(redis, [job_id], timeout=30) == {job_id: "finished"}
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]
    assert redis.hget(CatalogJob.key_for(job_id), TASKCTL_RUNS) == b"1"
    assert redis.hget(CatalogJob.key_for(job_id), CURRENT_RUN) is not None
    assert held_up.get_state() == "idle"


def test_a_run_that_lost_its_lease_records_neither_its_result_nor_its_failure(
    configured: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The writes a stale run makes when it ends, refused in Redis; driven step by step with RQ's own calls."""
    queue = Queue("default", connection=redis)
    job_id = enqueue_call("add", (1, 2), backoff=0).id  # recovered straight back into the queue
    stale, newer = Worker(["default"], connection=redis), Worker(["default"], connection=redis)
    claimed = Queue.dequeue_any([queue], None, connection=redis)
    assert claimed is not None
    job = claimed[0]
    execution = stale.prepare_execution(job)
    stale.prepare_job_execution(job)
    # Its lease runs out (its worker froze) and a maintenance pass recovers the job; another worker starts it.
    redis.zadd(queue.started_job_registry.key, {execution.composite_key: 1})
    queue.started_job_registry.cleanup()
    again = Queue.dequeue_any([queue], None, connection=redis)
    assert again is not None
    newer_execution = newer.prepare_execution(again[0])
    newer.prepare_job_execution(again[0])
    before = redis.hgetall(CatalogJob.key_for(job_id))

    job.ended_at = job.started_at = rq.utils.now()
    stale.handle_job_success(job, queue, queue.started_job_registry, execution)
    stale.record_ended()  # what its next step sends: the success is refused there
    assert "its success is not recorded" in caplog.text
    stale.handle_job_failure(job, queue, exc_string="Traceback: the stale run failed", execution=execution)

    assert redis.hgetall(CatalogJob.key_for(job_id)) == before  # status, result, retries: the newer run's
    assert (before[b"status"], before[CURRENT_RUN.encode()]) == (b"started", newer_execution.id.encode())
    assert (job.fencing_token, again[0].fencing_token) == (1, 2)
    assert CatalogJob.fetch(job_id, connection=redis).latest_result() is None


def test_an_expired_run_replaced_by_a_newer_one_is_dropped_and_one_no_taskctl_worker_started_is_recovered(
    configured: str, redis: Redis
) -> None:
    queue = Queue("default", connection=redis)
    replaced, foreign = (enqueue_call("add", (1, 2), backoff=0).id for _ in range(2))
    registry = queue.started_job_registry
    for job_id, current in ((replaced, "newer"), (foreign, "an-earlier-taskctl-run")):
        redis.lrem(queue.key, 1, job_id)
        redis.hset(CatalogJob.key_for(job_id), mapping={"status": "started", CURRENT_RUN: current})
        redis.zadd(registry.key, {f"{job_id}:stale": 1})  # expired long ago
    redis.zadd(registry.key, {f"{replaced}:newer": time.time() + 60})  # the newer run, holding its lease

    registry.cleanup()

    assert redis.hget(CatalogJob.key_for(replaced), "status") == b"started"  # left to the newer run
    assert redis.hget(CatalogJob.key_for(foreign), "status") == b"queued"  # recovered: retried
    assert redis.zrange(registry.key, 0, -1) == [f"{replaced}:newer".encode()]


def test_outside_a_worker_there_is_no_run_to_fence() -> None:
    assert current_run() is None


def test_the_database_refuses_a_write_from_a_run_older_than_one_that_wrote(tmp_path: Path) -> None:
    with closing(shop.connect(tmp_path / "shop.sqlite3")) as conn:
        outcomes = []
        for token in (1, 2, 2, 1, 3):
            with shop.transaction(conn):
                outcomes.append(shop.fence(conn, Run("job-a", token)))
        with shop.transaction(conn):
            other_job = shop.fence(conn, Run("job-b", 1))  # tokens of another job are its own
        assert outcomes == [True, True, True, False, True] and other_job
        assert shop.fence(conn, None)  # outside a worker: nothing to fence
        rows = conn.execute("SELECT job_id, token FROM job_fences ORDER BY job_id").fetchall()
    assert [tuple(row) for row in rows] == [("job-a", 3), ("job-b", 1)]


def test_the_order_jobs_write_under_their_runs_fence(worker: object, configured: str) -> None:
    with closing(shop.connect()) as conn:
        shop.seed_demo(conn)
        order_id = shop.create_order(conn, "a@example.com", 1, [{"sku": "MUG", "quantity": 1}])
    job_id = enqueue_call("process_order", (order_id,)).id

    assert wait_for_job(fetch_job(job_id, connect()), timeout=30).status == "finished"
    with closing(sqlite3.connect(get_settings().database)) as conn:
        assert conn.execute("SELECT token FROM job_fences WHERE job_id = ?", (job_id,)).fetchone() == (1,)


@pytest.mark.parametrize(
    ("environ", "margin"),
    [({}, 2.0), ({"TASKCTL_HEARTBEAT_GRACE": "2"}, 1.0), ({"TASKCTL_LEASE_MARGIN": "0.5"}, 0.5)],
)
def test_the_lease_margin_defaults_to_2_seconds_and_to_half_a_shorter_grace(
    environ: dict[str, str], margin: float
) -> None:
    assert load_settings(environ, env_file=None).lease_margin == margin


def test_a_lease_margin_as_long_as_the_grace_is_refused() -> None:
    with pytest.raises(
        SettingsError, match=r"TASKCTL_LEASE_MARGIN='10' must be less than TASKCTL_HEARTBEAT_GRACE \(10\)"
    ):
        load_settings({"TASKCTL_LEASE_MARGIN": "10"}, env_file=None)
