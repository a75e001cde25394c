"""After an outage: 20,000 failed jobs of three causes, and one cause requeued, paced, interrupted, resumed.

Real `rq worker` processes run the jobs; each run logs itself, so the counts are of
what ran, not of what the statuses say.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from redis import Redis

from taskctl.enqueue import enqueue_many, prepare
from tests.conftest import BIN, ROOT, taskctl, worker_command
from tests.effects import wait_for

JOBS = 20_000
SERVICES = ("mail", "push", "stock")
#: The outage's causes as `taskctl failed` folds them (tests/testjobs.py raises them).
CAUSES = {
    "mail": "ConnectionRefusedError: [Errno <n>] mail-<n> refused the connection",
    "push": "TimeoutError: push gateway timed out after <n> s",
    "stock": "RuntimeError: inventory answered <n> for order <n>",
}
#: Half the speed of an unpaced requeue here (about 2,400 a second): the pace is what the timing shows.
RATE = 1000


def run_workers(count: int, timeout: float, logs: Path) -> None:
    """Real `rq worker --burst` processes side by side, until the queues are empty.

    Their output goes to files: each failure logs its traceback, and a pipe read one
    worker after the other would hold the others back once it is full.
    """
    logs.mkdir(exist_ok=True)
    workers = []
    for n in range(count):
        with open(logs / f"worker-{n}.log", "w") as output:
            workers.append(subprocess.Popen(worker_command("--burst", "-q"), env=dict(os.environ), cwd=ROOT,
                                            stdout=output, stderr=subprocess.STDOUT))  # fmt: skip
    for n, worker in enumerate(workers):
        worker.wait(timeout=timeout)
        assert worker.returncode == 0, (logs / f"worker-{n}.log").read_text()[-3000:]


def runs(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines())


def test_one_cause_requeued_paced_interrupted_and_resumed_puts_each_of_its_jobs_back_once(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    down, log = tmp_path / "down", tmp_path / "runs.log"
    down.mkdir()
    for service in SERVICES:
        (down / service).touch()
    ids = enqueue_many(prepare("outage", [str(log), str(down), SERVICES[n % 3], n]) for n in range(JOBS))
    of = {service: {job_id for n, job_id in enumerate(ids) if n % 3 == i} for i, service in enumerate(SERVICES)}
    run_workers(2, timeout=240, logs=tmp_path / "failing")
    assert runs(log) == Counter(f"{SERVICES[n % 3]} {n}" for n in range(JOBS))

    summary = taskctl("failed", "--limit", "0")
    assert summary.output.splitlines()[0] == f"{JOBS} failed jobs, by job and cause:"
    listed = [re.split(r"\s{2,}", line)[:3] for line in summary.output.splitlines()[2:]]
    assert sorted(listed) == sorted(["outage", CAUSES[s], str(len(of[s]))] for s in SERVICES)

    (down / "mail").unlink()  # the mail server is back: put back its jobs, and only those, 1,000 a second
    command = [str(BIN / "taskctl"), "failed", "requeue", "--cause", "ConnectionRefusedError", "--since", "1h",
               "--rate", f"{RATE}/s"]  # fmt: skip
    first = subprocess.Popen(command, env=dict(os.environ), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: redis.llen("rq:queue:default") >= len(of["mail"]) // 2, 60, "half the mail jobs requeued")
    first.send_signal(signal.SIGINT)
    _, said = first.communicate(timeout=30)
    done_first = redis.llen("rq:queue:default")

    assert first.returncode == 1, said
    # The window as absolute times: "1h" again, later, would be another window.
    interrupted = re.search(r"interrupted after (\d+) job\(s\) were requeued; to go on, run the same command "
                            r"with --since (\S+) --until (\S+) \(it leaves the jobs requeued already alone\)",
                            said)  # fmt: skip
    assert interrupted, said
    assert int(interrupted.group(1)) <= done_first < len(of["mail"])
    began = time.monotonic()
    resumed = taskctl("failed", "requeue", "--cause", "ConnectionRefusedError", "--rate", f"{RATE}/s",
                      "--since", interrupted.group(2), "--until", interrupted.group(3))  # fmt: skip
    took = time.monotonic() - began

    assert resumed.stdout == f"Requeued {len(of['mail']) - done_first} job(s).\n"
    assert re.search(rf"^Requeued \d+ of {len(of['mail']) - done_first} \(\d+%\)$", resumed.stderr, re.MULTILINE)
    assert took >= (len(of["mail"]) - done_first) / RATE - 0.2  # paced: the first batch of a tenth of a second is free
    queued = Counter(job_id.decode() for job_id in redis.lrange("rq:queue:default", 0, -1))
    assert set(queued) == of["mail"] and set(queued.values()) == {1}
    still_failed = {job_id.decode() for job_id in redis.zrange("rq:failed:default", 0, -1)}
    assert still_failed == of["push"] | of["stock"]

    run_workers(2, timeout=120, logs=tmp_path / "recovered")

    assert runs(log) == Counter(
        f"{SERVICES[n % 3]} {n}" for n in range(JOBS) for _ in range(2 if SERVICES[n % 3] == "mail" else 1)
    )
    assert redis.zcard("rq:failed:default") == len(of["push"]) + len(of["stock"])
