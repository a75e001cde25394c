"""Nothing lost: real processes, real signals, a real Redis killed and restarted.

Every accepted job must reach exactly one final state (finished, or failed with a
reason) and none may stay "started". Each test adds a summary line (accepted,
finished, failed, lost, duplicates executed) printed at the end of the run.
Run alone with ``pytest -m faults``; ``--soak N`` multiplies the sizes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from redis import Redis

from taskctl.bulk import read_calls
from taskctl.connection import lua
from taskctl.enqueue import enqueue_many
from taskctl.rqclasses import CLAIM_GRACE_SECONDS, CLAIM_SCRIPT, CatalogJob, Queue
from taskctl.stack import redis_server, stop
from tests.conftest import (
    BIN,
    FORKING,
    IN_PROCESS,
    ROOT,
    SUMMARIES,
    fetch,
    free_port,
    start_web,
    taskctl,
    worker_command,
)
from tests.effects import SHORT_LEASE_ENV

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

FINAL = {"finished", "failed"}


@dataclass
class Audit:
    accepted: int = 0
    finished: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicates: int = 0
    overlapping: list[str] = field(default_factory=list)

    def line(self, name: str, extra: str = "") -> str:
        return (
            f"{name}: accepted={self.accepted} finished={self.finished} failed={self.failed} "
            f"lost={len(self.lost)} stuck={len(self.stuck)} duplicates executed={self.duplicates}"
            f" concurrent duplicates={len(self.overlapping)}{extra}"
        )


def statuses(redis: Redis, ids: list[str]) -> dict[str, str | None]:
    with redis.pipeline() as pipeline:
        for job_id in ids:
            pipeline.hget(CatalogJob.redis_job_namespace_prefix + job_id, "status")
        return {job_id: (s.decode() if s else None) for job_id, s in zip(ids, pipeline.execute(), strict=True)}


def wait_until_final(redis: Redis, ids: list[str], timeout: float) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        current = statuses(redis, ids)
        if all(s in FINAL for s in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def where(redis: Redis, job_id: str) -> list[str]:
    """Every list and sorted set that holds the job id: where a stuck job is stuck."""
    found = []
    for key in redis.scan_iter("rq:*"):
        kind = redis.type(key)
        members = redis.lrange(key, 0, -1) if kind == b"list" else redis.zrange(key, 0, -1) if kind == b"zset" else []
        if any(member.startswith(job_id.encode()) for member in members):
            found.append(key.decode())
    return found


def audit(redis: Redis, ids: list[str], log: Path | None, timeout: float) -> Audit:
    """Wait (bounded) for every job to end, then count outcomes and read the run log for duplicates."""
    final = wait_until_final(redis, ids, timeout)
    result = Audit(accepted=len(ids))
    for job_id, status in final.items():
        if status == "finished":
            result.finished += 1
        elif status == "failed":
            result.failed += 1
        elif status == "started":
            result.stuck.append(job_id)
        else:
            result.lost.append(f"{job_id}:{status} in {where(redis, job_id)}")
    if log is not None and log.exists():
        runs: dict[tuple[str, str], list[float | None]] = {}  # (token, pid) -> [start, end]
        for line in log.read_text().splitlines():
            kind, token, pid, moment = line.split()
            run = runs.setdefault((token, pid), [None, None])
            run[0 if kind == "start" else 1] = float(moment)
        by_token: dict[str, list[list[float | None]]] = {}
        for (token, _pid), run in runs.items():
            by_token.setdefault(token, []).append(run)
        for token, token_runs in by_token.items():
            result.duplicates += max(0, sum(1 for _, end in token_runs if end is not None) - 1)
            # Two runs of one job at once: one started while another (which did finish) was going.
            for start, end in token_runs:
                if end is not None and any(
                    other_start is not None and start is not None and start < other_start < end
                    for other_start, _ in token_runs
                ):
                    result.overlapping.append(token)
                    break
    return result


@pytest.fixture
def workers(configured: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(worker_class: str = IN_PROCESS, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            worker_command(worker_class=worker_class), env=dict(os.environ, **env), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=5)


def running_tallies(log: Path) -> dict[int, str]:
    """The `tally` runs under way, from the run log: the token each process is running, by pid."""
    running: dict[int, str] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            kind, token, pid, _moment = line.split()
            if kind == "start":
                running[int(pid)] = token
            else:
                running.pop(int(pid), None)
    return running


def horse_of(worker: subprocess.Popen[str], log: Path, running: dict[int, str] | None = None) -> psutil.Process | None:
    """The process running a `tally` job for this worker: its work-horse, or itself if it runs jobs in-process.

    A forking worker's other child may be RQ's scheduler. ``running``: the runs under way, if read already.
    """
    running = running_tallies(log) if running is None else running
    try:
        process = psutil.Process(worker.pid)
        return process if worker.pid in running else next((c for c in process.children() if c.pid in running), None)
    except psutil.NoSuchProcess:
        return None


def is_running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1 to reap it, which in a container may be never)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def enqueue_tallies(log: Path, count: int, seconds: float, first: int = 0) -> list[str]:
    """``count`` tally jobs of ``seconds`` each, tokens t{first}, t{first + 1}, ...: token t{i} is the i-th id."""
    queues = ["high", "default", "low"]
    lines = (f'{{"log": "{log}", "token": "t{i}", "seconds": {seconds}}}' for i in range(first, first + count))
    calls, bad = read_calls("tally", lines)
    assert not bad
    from dataclasses import replace

    calls = [replace(call, queue=queues[i % 3]) for i, call in enumerate(calls)]
    return enqueue_many(calls)


def test_workers_killed_mid_job_lose_nothing(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path, soak: int
) -> None:
    """Fault 1: SIGKILL to whole workers, to main processes only, to work-horses only, while others work.

    Two workers of each class: an in-process worker is killed whole; a forking one
    whole, in its main process only, or in its work-horse only.
    """
    log = tmp_path / "runs.log"
    ids = enqueue_tallies(log, 1200 * soak, 0.1)
    classes = [IN_PROCESS, IN_PROCESS, FORKING, FORKING]
    pool = [workers(worker_class) for worker_class in classes]
    kills = {"whole in-process worker": 0, "whole forking worker": 0, "main process": 0, "work-horse": 0}
    rng = random.Random(1716)
    deadline = time.monotonic() + 240 * soak
    while time.monotonic() < deadline and sum(kills.values()) < 14 * soak:
        time.sleep(0.8)
        if all(s in FINAL for s in statuses(redis, ids[-50:]).values()) and sum(kills.values()) >= 12:
            break
        number = rng.randrange(len(pool))
        victim = pool[number]
        horse = horse_of(victim, log)
        if classes[number] == IN_PROCESS:
            kind = "whole in-process worker"
        else:
            kind = rng.choice(["whole forking worker", "main process", "work-horse"])
        if horse is None:
            continue
        try:
            if kind in ("whole forking worker", "work-horse"):
                horse.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue  # the job ended first: try again
        if kind != "work-horse":
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            pool[number] = workers(classes[number])  # the process manager restarts it
        kills[kind] += 1

    result = audit(redis, ids, log, timeout=180)

    total = sum(kills.values())
    SUMMARIES.append(result.line("fault 1 (SIGKILL workers)", f" kills={total} {kills}"))
    assert total >= 12
    assert (result.lost, result.stuck, result.overlapping) == ([], [], [])
    assert result.finished + result.failed == result.accepted
    assert sum(redis.zcard(f"rq:wip:{queue}") for queue in ("high", "default", "low")) == 0  # none started


def one_job_running(
    workers: Callable[..., subprocess.Popen[str]],
    log: Path,
    seconds: float,
    worker_class: str = IN_PROCESS,
    **env: str,
) -> tuple[str, subprocess.Popen[str], psutil.Process]:
    """Enqueue one `tally` job, start a worker, and return once it (or its work-horse) is running the job."""
    [job_id] = enqueue_tallies(log, 1, seconds)
    worker = workers(worker_class, **env)
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    horse = horse_of(worker, log)
    assert horse is not None
    return job_id, worker, horse


def run_until_final(
    command: list[str], output: Path, redis: Redis, job_id: str, timeout: float
) -> dict[str, str | None]:
    """Run a worker, its output into a file, until the job is final (bounded); the job's final status."""
    with open(output, "w") as sink:
        worker = subprocess.Popen(command, env=dict(os.environ), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        return wait_until_final(redis, [job_id], timeout=timeout)
    finally:
        stop(worker)


def test_a_job_whose_whole_worker_died_is_recovered_within_60_seconds(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    job_id, victim, horse = one_job_running(workers, log, seconds=8)
    assert horse.pid == victim.pid  # the default worker runs the job itself
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    output = tmp_path / "recovering-worker.log"
    final = run_until_final(worker_command(), output, redis, job_id, timeout=90)  # another worker: the recovery
    recovered_after = time.monotonic() - killed_at

    assert final[job_id] == "finished"
    starts = [line for line in log.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 2  # killed once, run again
    recovery = [line for line in output.read_text().splitlines() if job_id in line and "heartbeat" in line]
    assert len(recovery) == 1, output.read_text()  # one line: the job, its dead worker, what was done
    assert f"its worker {worker_name(victim.pid)} stopped heartbeating; retried (4 retries left)" in recovery[0]
    SUMMARIES.append(f"whole worker SIGKILL: job retried and finished {recovered_after:.0f} s after the kill")
    assert recovered_after < 60


@pytest.mark.parametrize("worker_class", [IN_PROCESS, FORKING])
def test_a_job_running_far_past_its_heartbeat_ttl_is_not_taken_for_abandoned(
    worker_class: str, workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path
) -> None:
    """Heartbeats every second, 3 s of TTL, maintenance every second by a second worker; the job runs 8 s.

    Without heartbeats during the job (the in-process worker's monitor thread, the forking
    worker's horse monitor), the second worker would retry it as abandoned while it runs.
    """
    short = {
        "TASKCTL_JOB_MONITORING_INTERVAL": "1",
        "TASKCTL_HEARTBEAT_GRACE": "2",
        "TASKCTL_MAINTENANCE_INTERVAL": "1",
    }
    log = tmp_path / "runs.log"
    job_id, _worker, _horse = one_job_running(workers, log, seconds=8, worker_class=worker_class, **short)
    workers(worker_class, **short)  # idle, cleaning the registries every second

    final = wait_until_final(redis, [job_id], timeout=30)

    assert final[job_id] == "finished"
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]


def test_a_worker_killed_alone_takes_its_work_horse_with_it(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path
) -> None:
    """Only the main process is killed: its horse must not go on running the job unsupervised."""
    log = tmp_path / "runs.log"
    # Short leases: the killed run is recovered in seconds (what is tested here is that the horse dies too).
    job_id, victim, _horse = one_job_running(workers, log, seconds=6, worker_class=FORKING, **SHORT_LEASE_ENV)
    children = psutil.Process(victim.pid).children()  # the horse, and RQ's scheduler process if it has the lock
    victim.send_signal(signal.SIGKILL)

    deadline = time.monotonic() + 5
    while any(is_running(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_running(child) for child in children)  # gone at once: PR_SET_PDEATHSIG
    workers(**SHORT_LEASE_ENV)
    final = wait_until_final(redis, [job_id], timeout=90)

    assert final[job_id] == "finished"
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "start", "end"]  # one run killed, one whole


def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path
) -> None:
    """Fault 2: a deploy. The second signal stops at once, and the job is recovered."""
    log = tmp_path / "runs.log"
    first, second = enqueue_tallies(log, 2, 3)
    worker = workers()
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert statuses(redis, [first])[first] == "finished"
    assert statuses(redis, [second])[second] == "queued"  # not taken by a worker that was stopping

    stopped = workers()
    deadline = time.monotonic() + 30
    while len(log.read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    stopped.send_signal(signal.SIGTERM)  # cold shutdown: the horse is killed
    stopped.wait(timeout=15)
    workers()

    result = audit(redis, [first, second], log, timeout=90)
    SUMMARIES.append(result.line("fault 2 (SIGTERM, then SIGTERM twice)"))
    assert (result.finished, result.lost, result.stuck) == (2, [], [])


def test_redis_killed_for_30_seconds_then_restarted_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, soak: int
) -> None:
    """Faults 3 and 4: Redis SIGKILLed and down 30 s, with AOF everysec; everyone reconnects."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data = tmp_path / "redis"
    monkeypatch.setenv("REDIS_URL", url)
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    log = tmp_path / "runs.log"
    env = dict(os.environ)
    processes: list[subprocess.Popen[str]] = []
    server = redis_server(port, data)
    redis_process = server.__enter__()
    try:
        # Short jobs first: the workers run them several per step (TASKCTL_PREFETCH) when Redis dies.
        short_log = tmp_path / "short-runs.log"
        short = enqueue_tallies(short_log, 20000 * soak, 0.0)  # more than the workers run before Redis dies
        ids = enqueue_tallies(log, 300 * soak, 0.05)
        delayed = taskctl("enqueue", "add", "1", "2", "--in", "40s").output.split(" as ")[1].split()[0]
        logs = [tmp_path / f"process-{n}.log" for n in range(3)]
        for number in range(2):
            with open(logs[number], "wb") as out:
                processes.append(
                    subprocess.Popen(worker_command(), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                )
        scheduler_env = dict(env, TASKCTL_SCHEDULER_INTERVAL="0.5")
        scheduler = [sys.executable, "-m", "taskctl.scheduler"]
        with open(logs[2], "wb") as out:
            processes.append(
                subprocess.Popen(scheduler, cwd=tmp_path, env=scheduler_env, stdout=out, stderr=subprocess.STDOUT)
            )
        web, base = start_web()
        processes.append(web)
        time.sleep(2.5)  # past the fsync window of what was enqueued so far; the workers are busy
        # Killed at a moment the workers hold several jobs each (a loaded machine may start one at a time for a while).
        watcher = Redis.from_url(url)
        started = [Queue(name, connection=watcher).started_job_registry.key for name in ("high", "default", "low")]
        deadline = time.monotonic() + 20
        while (started_at_kill := sum(watcher.zcard(key) for key in started)) <= 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_process.send_signal(signal.SIGKILL)
        redis_process.wait(timeout=10)
        down_since = time.monotonic()

        refused = taskctl("enqueue", "add", "1", "2")
        assert refused.exit_code == 1 and refused.output.startswith(f"Error: cannot reach Redis at {url}")
        assert fetch(base, "/healthz")[0] == 503
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
        assert taskctl("status", ids[0]).exit_code == 1

        server.__exit__(None, None, None)
        server = redis_server(port, data)
        server.__enter__()  # same port, same append-only file
        assert fetch(base, "/healthz")[0] == 200
        after = taskctl("enqueue", "add", "2", "3")
        assert after.exit_code == 0
        # Fails once, then is retried after 1 s by RQ's scheduler in a worker, which the outage had stopped.
        retried = taskctl("enqueue", "flaky", str(tmp_path / "flaky"), "1", "--backoff", "1").output
        retried = retried.split(" as ")[1].split()[0]

        client = Redis.from_url(url)
        result = audit(client, ids, log, timeout=120)
        short_result = audit(client, short, short_log, timeout=120)
        scheduled_ran = wait_until_final(client, [delayed], timeout=60)[delayed]
        assert wait_until_final(client, [retried], timeout=60)[retried] == "finished"
        alive = [p for p in processes if p.poll() is None]
        SUMMARIES.append(result.line("faults 3+4 (Redis SIGKILL, 30 s down, restart)"))
        SUMMARIES.append(short_result.line("faults 3+4, short jobs (several per step)",
                                           f" started when Redis died={started_at_kill}"))  # fmt: skip
        assert (result.lost, result.stuck) == ([], [])
        assert result.finished == result.accepted
        assert (short_result.lost, short_result.stuck, short_result.overlapping) == ([], [], [])
        assert short_result.finished == short_result.accepted
        assert started_at_kill > 2  # 2 workers: several jobs each, started together, when Redis died
        assert scheduled_ran == "finished"  # the scheduler reconnected and enqueued it, a worker ran it
        # workers, scheduler and web all carried on
        dead = [(p.args, logs[n].read_text()[-3000:]) for n, p in enumerate(processes[:3]) if p.poll() is not None]
        assert len(alive) == len(processes), dead
    finally:
        for process in processes:
            stop(process, timeout=5)
        server.__exit__(None, None, None)


def test_a_job_that_exhausts_memory_or_segfaults_fails_and_the_forking_worker_survives(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis
) -> None:
    """Fault 5, with the worker that forks a work-horse per job."""
    hog = taskctl("enqueue", "hog_memory", "2048").output.split(" as ")[1].split()[0]
    crash = taskctl("enqueue", "segfault").output.split(" as ")[1].split()[0]
    after = taskctl("enqueue", "add", "1", "1").output.split(" as ")[1].split()[0]
    worker = workers(FORKING, TASKCTL_JOB_MEMORY_LIMIT_MB="512")

    final = wait_until_final(redis, [hog, crash, after], timeout=60)

    assert final == {hog: "failed", crash: "failed", after: "finished"}
    assert "MemoryError" in taskctl("status", hog).output
    assert "Work-horse terminated unexpectedly" in taskctl("failed", "show", crash).output
    assert "(signal 11)" in taskctl("failed", "show", crash).output
    assert worker.poll() is None
    SUMMARIES.append("fault 5: MemoryError and SIGSEGV jobs failed with their reason; the worker carried on")


def test_in_process_a_job_out_of_memory_fails_and_a_crash_is_recovered_while_the_pool_carries_on(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """Fault 5 with the default worker under `rq worker-pool`, as the Procfile runs it.

    The memory limit still turns an allocation too big into MemoryError. A segfault
    takes the worker process down: the pool starts another, and the job is failed
    as abandoned once its heartbeat has expired (a job with retries would be run again).
    """
    hog = taskctl("enqueue", "hog_memory", "2048").output.split(" as ")[1].split()[0]
    crash = taskctl("enqueue", "segfault").output.split(" as ")[1].split()[0]
    after = taskctl("enqueue", "add", "1", "1").output.split(" as ")[1].split()[0]
    command = [str(BIN / "rq"), "worker-pool", "-c", "taskctl.rqconfig", "-w", IN_PROCESS, "-n", "1"]
    out = tmp_path / "pool.log"
    with open(out, "wb") as log:
        # Short leases: the crashed run is found abandoned in seconds, not after the default's minute.
        env = dict(os.environ, TASKCTL_JOB_MEMORY_LIMIT_MB="512", **SHORT_LEASE_ENV)
        pool = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        final = wait_until_final(redis, [hog, crash, after], timeout=90)
        assert final == {hog: "failed", crash: "failed", after: "finished"}, out.read_text()[-3000:]
        assert "MemoryError" in taskctl("status", hog).output
        assert "AbandonedJobError" in taskctl("failed", "show", crash).output
        # An abandoned run has no end time: `taskctl failed` dates it by its failure's record.
        [listed] = json.loads(taskctl("failed", "--json", "--job", "segfault").output)["latest"]
        assert "AbandonedJobError" in listed["cause"] and listed["failed_at"] is not None, listed
        assert pool.poll() is None
        assert "is dead" in out.read_text()  # the pool saw its worker die, and started another
    finally:
        stop(pool, timeout=10)
    SUMMARIES.append(
        "fault 5, in-process: MemoryError failed alone; the segfault's job failed as abandoned, the pool went on"
    )


#: The recovery bound the README states: a dead worker's jobs are retried or failed within this.
RECOVERY_BOUND = 30.0
KILL_KINDS = ("pool parent", "pool worker", "pool parent and worker at once",
              "whole forking worker", "forking main process", "work-horse")  # fmt: skip


def worker_name(pid: int) -> str:
    """How taskctl names a worker process: its host and pid."""
    return f"{socket.gethostname()}.{pid}"


@dataclass
class InFlight:
    """A job a killed process held, and what it takes for it to count as recovered."""

    job_id: str
    kind: str
    killed_at: float
    dead_worker: str | None  # started by this worker: recovered once no longer started by it
    recovered_after: float | None = None


def in_flight(redis: Redis, ids: list[str], dead: set[str], kind: str, killed_at: float) -> list[InFlight]:
    """The runs of the dead workers, and every claimed-but-not-started job (a dead worker's claim among them)."""
    with redis.pipeline() as pipeline:
        for job_id in ids:
            pipeline.hmget(CatalogJob.redis_job_namespace_prefix + job_id, ("status", "worker_name"))
        rows = pipeline.execute()
    held = [
        InFlight(job_id, kind, killed_at, worker.decode())
        for job_id, (status, worker) in zip(ids, rows, strict=True)
        if status == b"started" and worker and worker.decode() in dead
    ]
    claimed = {
        i.decode() for q in ("high", "default", "low") for i in redis.lrange(f"rq:queue:{q}:intermediate", 0, -1)
    }
    return held + [InFlight(job_id, kind, killed_at, None) for job_id in sorted(claimed)]


def settle(redis: Redis, pending: list[InFlight], now: float) -> None:
    """Mark the jobs that are recovered as of now: no longer started by their dead worker, no longer claimed."""
    claimed = {
        i.decode() for q in ("high", "default", "low") for i in redis.lrange(f"rq:queue:{q}:intermediate", 0, -1)
    }
    with redis.pipeline() as pipeline:
        for item in pending:
            pipeline.hmget(CatalogJob.redis_job_namespace_prefix + item.job_id, ("status", "worker_name"))
        rows = pipeline.execute()
    for item, (status, worker) in zip(pending, rows, strict=True):
        still_held = status == b"started" and worker is not None and worker.decode() == item.dead_worker
        if item.recovered_after is None and not still_held and item.job_id not in claimed:
            item.recovered_after = now - item.killed_at


def test_every_job_of_a_dead_worker_is_retried_or_failed_within_30_seconds_whatever_the_kill(
    workers: Callable[..., subprocess.Popen[str]], configured: str, redis: Redis, tmp_path: Path, soak: int
) -> None:
    """The Procfile's pools of in-process workers and forking workers, SIGKILLed every way, with the shipped settings.

    Each kill's held jobs are followed from Redis until each is retried or failed:
    a run of a dead worker (its heartbeat expires) and a job it had claimed but not
    started (its intermediate list) alike.
    """
    log = tmp_path / "runs.log"
    ids = enqueue_tallies(log, 2400 * soak, 0.05)
    pool_command = [str(BIN / "rq"), "worker-pool", "-n", "2"]  # the Procfile's, as typed
    pools = [subprocess.Popen(pool_command, env=dict(os.environ), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]  # fmt: skip
    forking = [workers(FORKING) for _ in range(2)]
    rng = random.Random(17)
    pending: list[InFlight] = []
    kills = dict.fromkeys(KILL_KINDS, 0)
    try:
        time.sleep(3)  # every process up and busy
        for kind in [k for k in KILL_KINDS for _ in range(2 * soak)]:
            time.sleep(1.5)
            settle(redis, pending, time.monotonic())
            # Work left for every kill: on a slow run the queue would run dry before the last kinds.
            if sum(redis.llen(f"rq:queue:{name}") for name in ("high", "default", "low")) < 300:
                ids += enqueue_tallies(log, 600, 0.05, first=len(ids))
            held_before: list[InFlight] | None = None
            if kind.startswith("pool"):
                number = rng.randrange(len(pools))
                parent = psutil.Process(pools[number].pid)
                children = parent.children()
                if not children:
                    continue
                child = rng.choice(children)
                dead = {worker_name(c.pid) for c in children} if "parent" in kind else {worker_name(child.pid)}
                if kind != "pool parent":
                    child.send_signal(signal.SIGKILL)
                if "parent" in kind:
                    pools[number].send_signal(signal.SIGKILL)
                    pools[number].wait(timeout=10)
                    psutil.wait_procs(children, timeout=10)  # gone with their parent (PDEATHSIG)
                    pools[number] = subprocess.Popen(pool_command, env=dict(os.environ), cwd=ROOT,
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            else:
                number = rng.randrange(len(forking))
                victim = forking[number]
                running = running_tallies(log)
                horse = horse_of(victim, log, running)
                # A forking worker spends a while between jobs (longer on a loaded machine): kill it in one.
                found_by = time.monotonic() + 10
                while horse is None and time.monotonic() < found_by:
                    time.sleep(0.01)
                    running = running_tallies(log)
                    horse = horse_of(victim, log, running)
                dead = {worker_name(victim.pid)}
                if kind == "work-horse" and horse is not None:
                    # Its main process lives on and fails the job within milliseconds of the kill,
                    # and a 50 ms job may end while 3,000 jobs are read: the horse's own job, from the
                    # same read of the log that found the horse (a second read lost it on a slow run).
                    token = running.get(horse.pid)  # enqueue_tallies' t{i} is ids[i]
                    held_before = [InFlight(ids[int(token[1:])], kind, 0.0, worker_name(victim.pid))] if token else []
                if horse is not None and kind in ("whole forking worker", "work-horse"):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        horse.send_signal(signal.SIGKILL)
                if kind != "work-horse":
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(timeout=10)
                    forking[number] = workers(FORKING)
            killed_at = time.monotonic()
            caught = in_flight(redis, ids, dead, kind, killed_at) if held_before is None else held_before
            for item in caught:
                item.killed_at = killed_at
            pending += caught
            kills[kind] += 1
        deadline = time.monotonic() + RECOVERY_BOUND + 30
        while any(item.recovered_after is None for item in pending) and time.monotonic() < deadline:
            time.sleep(0.25)
            settle(redis, pending, time.monotonic())
        result = audit(redis, ids, log, timeout=240)
    finally:
        for pool in pools:
            stop(pool, timeout=10)

    slowest = {kind: max((i.recovered_after or 999.0 for i in pending if i.kind == kind), default=None)
               for kind in KILL_KINDS}  # fmt: skip
    shown = ", ".join(f"{kind} {'-' if s is None else f'{s:.1f} s'}" for kind, s in slowest.items())
    SUMMARIES.append(
        result.line("fault 6 (every kind of kill)", f" kills={sum(kills.values())}; slowest recovery: {shown}")
    )
    assert (result.lost, result.stuck, result.overlapping) == ([], [], [])
    assert result.finished + result.failed == result.accepted
    held = {kind: sum(1 for i in pending if i.kind == kind and i.dead_worker) for kind in KILL_KINDS}
    assert all(held.values()), held  # each kind of kill really took running jobs with it
    late = [(i.kind, i.job_id, i.recovered_after) for i in pending if (i.recovered_after or 999.0) > RECOVERY_BOUND]
    assert late == [], shown


def test_workers_killed_while_they_hold_several_short_jobs_lose_nothing(
    workers: Callable[..., subprocess.Popen[str]], redis: Redis, tmp_path: Path, soak: int
) -> None:
    """Short jobs are started several per step (TASKCTL_PREFETCH): a worker SIGKILLed takes them all with it."""
    log = tmp_path / "runs.log"
    ids = enqueue_tallies(log, 8000 * soak, 0.001)
    # Short leases: the killed workers' jobs come back in seconds (what is tested is that none is lost).
    pool = [workers(IN_PROCESS, **SHORT_LEASE_ENV) for _ in range(2)]
    rng = random.Random(8)
    held: list[int] = []
    time.sleep(2)  # both up and busy
    for _ in range(6 * soak):
        time.sleep(0.7)
        number = rng.randrange(len(pool))
        victim = pool[number]
        held.append(sum(1 for job in in_flight(redis, ids, {worker_name(victim.pid)}, "", 0.0) if job.dead_worker))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        pool[number] = workers(IN_PROCESS, **SHORT_LEASE_ENV)

    result = audit(redis, ids, log, timeout=240)

    SUMMARIES.append(result.line("short jobs, workers SIGKILLed", f" kills={len(held)}; jobs each held={held}"))
    assert max(held) > 1  # the kills did take several started jobs with them
    assert (result.lost, result.stuck, result.overlapping) == ([], [], [])
    assert result.finished + result.failed == result.accepted


def test_a_job_claimed_by_a_worker_that_died_before_starting_it_runs_within_30_seconds_spending_no_retry(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """The state a worker SIGKILLed between its claim and the job's start leaves: the job in an intermediate list.

    The claim is made with the workers' own claim script; no worker that could start
    it is alive. A worker started afterwards gives it back after the grace period
    (not at once: a live claimer starts its claim within milliseconds) and runs it.
    The dead worker was cleaning the queue, too: it left the queue's maintenance lock
    behind (a pass recovers nothing until that expires; it lasted a minute once).
    """
    log = tmp_path / "runs.log"
    [job_id] = enqueue_tallies(log, 1, 0.1)
    origin = redis.hget(CatalogJob.key_for(job_id), "origin").decode()  # type: ignore[union-attr]
    queue_key = f"rq:queue:{origin}"
    claimed = lua(redis, CLAIM_SCRIPT)(keys=[queue_key], args=[CatalogJob.redis_job_namespace_prefix], client=redis)
    assert claimed[1] == job_id.encode() and redis.lrange(f"{queue_key}:intermediate", 0, -1) == [job_id.encode()]
    assert Queue(origin, connection=redis).acquire_maintenance_lock()
    claimed_at = time.monotonic()
    output = tmp_path / "worker.log"
    final = run_until_final([str(BIN / "rq"), "worker"], output, redis, job_id, timeout=60)
    ran_after = time.monotonic() - claimed_at

    assert final[job_id] == "finished"
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]
    assert CLAIM_GRACE_SECONDS <= ran_after <= RECOVERY_BOUND
    assert redis.hget(CatalogJob.key_for(job_id), "retries_left") == b"5"  # given back, not failed
    given_back = [line for line in output.read_text().splitlines() if job_id in line and "before starting" in line]
    assert len(given_back) == 1 and "stopped before starting it; back at the front of" in given_back[0]
    SUMMARIES.append(f"claimed, never started: given back and finished {ran_after:.1f} s after the claim")


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-job"])
def test_a_worker_waiting_for_redis_stops_at_once_on_sigterm(
    busy: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A process manager's stop must work during an outage too: one SIGTERM, no traceback, exit 0."""
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    log = tmp_path / "runs.log"
    output = tmp_path / "worker.log"
    with redis_server(port, tmp_path / "redis") as server:
        if busy:
            enqueue_tallies(log, 1, 3)
        with open(output, "w") as sink:
            worker = subprocess.Popen([str(BIN / "rq"), "worker"], env=dict(os.environ), cwd=ROOT, stdout=sink,
                                      stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        # Past its start-up (its scheduler thread runs): an outage during start-up is another matter.
        while "Scheduler for" not in output.read_text() or (busy and not log.exists()):
            assert time.monotonic() < deadline and worker.poll() is None, output.read_text()
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    try:
        deadline = time.monotonic() + 30
        while "cannot reach Redis" not in output.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, output.read_text()
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=5)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = output.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "stopping while Redis cannot be reached" in text


def test_a_worker_started_while_redis_is_down_waits_for_it_then_runs_jobs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As a pool's replacement worker during an outage or a partition: it waits, one line per try, no traceback.

    (The plain `rq worker` command itself asks Redis for stale workers before it builds
    its worker: in an outage it exits 1 with one line, for its process manager to restart.)
    """
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    from taskctl.settings import get_settings

    get_settings.cache_clear()
    output = tmp_path / "worker.log"
    with open(output, "w") as sink:
        worker = subprocess.Popen([str(BIN / "rq"), "worker-pool", "-n", "1"], env=dict(os.environ), cwd=ROOT,
                                  stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while output.read_text().count("cannot reach Redis") < 2:
            assert time.monotonic() < deadline and worker.poll() is None, output.read_text()
            time.sleep(0.05)
        with redis_server(port, tmp_path / "redis"):
            job_id = taskctl("enqueue", "add", "2", "3").output.split(" as ")[1].split()[0]
            assert wait_until_final(Redis(port=port), [job_id], timeout=30) == {job_id: "finished"}
    finally:
        stop(worker, timeout=5)
    text = output.read_text()
    assert "Traceback" not in text and "answers again" in text, text
