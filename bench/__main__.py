"""``python -m bench``: taskctl against stock RQ and Celery, same jobs, same Redis, one run.

Starts its own redis-server on a free port (append-only file, as in production),
then for each repeat, alternating the systems: enqueue rates (one at a time and
bulk), processing rates for no-op and 50 ms I/O-bound jobs with two (--workers) job-running
processes each, worker memory (RSS, children included), and enqueue-to-start
latency at idle; and what each job costs Redis (commands and CPU, from Redis's own
counters), with the ceiling that puts on a whole fleet sharing one Redis. Prints a
table and the ratios the goals are stated in, and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SYSTEMS = ("taskctl", "rq worker", "rq SimpleWorker", "celery prefork")
#: Job-running processes per system, unless --workers says otherwise.
WORKERS = 2


def worker_command(system: str, url: str, processes: int = WORKERS) -> list[str]:
    rq = [str(BIN / "rq"), "worker", "-u", url, "--logging_level", "WARNING"]
    return {
        # As shipped: the plain command is taskctl's where taskctl is installed (taskctl_rq.pth).
        "taskctl": [str(BIN / "rq"), "worker-pool", "-n", str(processes), "--logging-level", "WARNING", "default"],
        # Stock RQ must be asked for by name in this environment.
        "rq worker": [*rq, "-w", "rq.worker.Worker", "default"],
        "rq SimpleWorker": [*rq, "-w", "rq.SimpleWorker", "default"],
        "celery prefork": [str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-c", str(processes),
                           "--pool=prefork", "-l", "WARNING", "--without-gossip", "--without-mingle",
                           "--without-heartbeat"],
    }[system]  # fmt: skip


@contextmanager
def workers(system: str, url: str, env: dict[str, str], count: int = WORKERS) -> Iterator[list[psutil.Process]]:
    # Celery and `rq worker-pool` (taskctl's): one parent, `count` children.
    parents = 1 if system in ("celery prefork", "taskctl") else count
    command = worker_command(system, url, count)
    quiet = subprocess.DEVNULL
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=quiet, stderr=quiet) for _ in range(parents)]
    time.sleep((1.5 if parents == count else 3) + 0.2 * count)  # ready and idle
    try:
        yield [psutil.Process(p.pid) for p in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    return total / 2**20


class Client:
    """Enqueue and count completions the way each system's users would."""

    def __init__(self, system: str, url: str) -> None:
        self.system, self.url = system, url
        self.redis = Redis.from_url(url)
        if system == "celery prefork":
            from bench import celery_app

            self.celery = celery_app

    def enqueue_one(self, job: str, *args: Any) -> Any:
        if self.system == "taskctl":
            from taskctl.enqueue import enqueue

            return enqueue(job, *args)
        if self.system == "celery prefork":
            return getattr(self.celery, job).delay(*args)
        from rq import Queue

        from bench import jobs

        return Queue("default", connection=self.redis).enqueue(getattr(jobs, job), *args)

    def enqueue_bulk(self, job: str, count: int) -> None:
        if self.system == "taskctl":
            from taskctl.enqueue import enqueue_many, prepare

            enqueue_many([prepare(job) for _ in range(count)], self.redis, batch_size=1000)
        elif self.system == "celery prefork":
            task = getattr(self.celery, job)
            with self.celery.app.producer_or_acquire() as producer:
                for _ in range(count):
                    task.apply_async(producer=producer)
        else:
            from rq import Queue

            from bench import jobs

            queue = Queue("default", connection=self.redis)
            for start in range(0, count, 1000):
                batch = [Queue.prepare_data(getattr(jobs, job)) for _ in range(min(1000, count - start))]
                with self.redis.pipeline() as pipeline:
                    queue.enqueue_many(batch, pipeline=pipeline)
                    pipeline.execute()

    def done(self) -> int:
        if self.system == "celery prefork":
            return sum(1 for _ in self.redis.scan_iter("celery-task-meta-*", count=1000))
        return int(self.redis.zcard("rq:finished:default"))

    def latency(self, samples: int) -> list[float]:
        self._result(self.enqueue_one("stamp", time.time()))  # not counted: the client's own first call warms it up
        found = []
        for _ in range(samples):
            handle = self.enqueue_one("stamp", time.time())
            found.append(self._result(handle) * 1000)
            time.sleep(0.02)
        return found

    def _result(self, handle: Any) -> float:
        if self.system == "celery prefork":
            return float(handle.get(timeout=10))
        job = getattr(handle, "job", handle)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            value = job.return_value(refresh=True)
            if value is not None:
                return float(value)
            # The latency is measured by the job itself (its start minus the enqueue time), so
            # polling faster would only take CPU from the system being measured.
            time.sleep(0.005)
        raise TimeoutError("no result within 10 s")


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def drain(client: Client, job: str, count: int, processes: list[psutil.Process], timeout: float) -> tuple[float, float]:
    """Jobs per second and peak RSS (MB) for `count` jobs, enqueued in bulk to running workers."""
    client.redis.flushdb()
    started = time.perf_counter()
    client.enqueue_bulk(job, count)
    peaks = [0.0]
    wait_until_done(client, job, count, timeout, 0.05, lambda: peaks.append(rss_mb(processes)))
    return count / (time.perf_counter() - started), max(*peaks, rss_mb(processes))


def wait_until_done(
    client: Client, job: str, count: int, timeout: float, poll: float, each: Callable[[], object] = lambda: None
) -> None:
    """Until ``count`` jobs are done, calling ``each`` at every look; TimeoutError after ``timeout`` s."""
    deadline = time.perf_counter() + timeout
    while client.done() < count:
        each()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{client.system}: {client.done()} of {count} {job} jobs done after {timeout} s")
        time.sleep(poll)


def redis_counters(redis: Redis) -> tuple[int, float]:
    """Commands Redis has run (those inside Lua scripts included) and the CPU seconds it has used."""
    calls = sum(int(stats["calls"]) for stats in redis.info("commandstats").values())
    cpu = redis.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def redis_cost(
    client: Client, system: str, url: str, env: dict[str, str], jobs: int, count: int
) -> tuple[float, float]:
    """Redis commands and CPU microseconds per no-op job, for the workers alone.

    The jobs are queued before the workers start, so the enqueue is not counted; what is
    counted besides the jobs (the workers' start-up, idle heartbeats, this script's
    polling, a few commands a second) is small beside thousands of jobs.
    """
    client.redis.flushdb()
    client.enqueue_bulk("noop", jobs)
    calls_before, cpu_before = redis_counters(client.redis)
    with workers(system, url, env, count):
        wait_until_done(client, "noop", jobs, 600, 0.2)
        calls_after, cpu_after = redis_counters(client.redis)
    return (calls_after - calls_before) / jobs, (cpu_after - cpu_before) / jobs * 1e6


def run_system(
    system: str, url: str, env: dict[str, str], jobs: int, io_jobs: int, samples: int, count: int = WORKERS
) -> dict[str, float]:
    client = Client(system, url)
    figures: dict[str, float] = {}
    client.redis.flushdb()
    figures["enqueue_one"] = jobs / timed(lambda: [client.enqueue_one("noop") for _ in range(jobs)])
    client.redis.flushdb()
    figures["enqueue_bulk"] = jobs / timed(lambda: client.enqueue_bulk("noop", jobs))
    client.redis.flushdb()
    with workers(system, url, env, count) as processes:
        figures["idle_rss_mb"] = rss_mb(processes)
        latencies = sorted(client.latency(samples))
        figures["latency_p50_ms"] = statistics.median(latencies)
        figures["latency_p95_ms"] = latencies[int(0.95 * (len(latencies) - 1))]
        figures["latency_p99_ms"] = latencies[int(0.99 * (len(latencies) - 1))]
        figures["noop_jobs_per_s"], _ = drain(client, "noop", jobs, processes, timeout=600)
        io_rate, io_rss = drain(client, "io_wait", io_jobs, processes, timeout=600)
        figures["io_jobs_per_s"], figures["io_rss_mb"] = io_rate, io_rss
        figures["io_jobs_per_s_per_gb"] = io_rate / (io_rss / 1024)
    figures["redis_commands_per_job"], figures["redis_cpu_us_per_job"] = redis_cost(
        client, system, url, env, jobs, count
    )
    client.redis.flushdb()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per measurement (default 2000)")
    parser.add_argument("--io-jobs", type=int, default=200, help="50 ms jobs per measurement (default 200)")
    parser.add_argument("--latency-samples", type=int, default=200, help="jobs timed one by one at idle")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"job-running processes per system (default {WORKERS})")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs of every system, alternating (default 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where the figures go")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",")]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s) {', '.join(sorted(unknown))}; expected some of: {', '.join(SYSTEMS)}")

    from taskctl.stack import redis_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, REDIS_URL=url, TASKCTL_JOB_PACKAGES="jobs,bench.jobs",
               PYTHONPATH=str(ROOT))  # fmt: skip
    os.environ.update({k: env[k] for k in ("REDIS_URL", "TASKCTL_JOB_PACKAGES")})
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as data, redis_server(port, Path(data)):
        redis_version = Redis.from_url(url).info("server")["redis_version"]
        for repeat in range(args.repeats):
            for system in systems if repeat % 2 == 0 else reversed(systems):
                print(f"repeat {repeat + 1}/{args.repeats}: {system} ...", file=sys.stderr, flush=True)
                runs[system].append(
                    run_system(system, url, env, args.jobs, args.io_jobs, args.latency_samples, args.workers)
                )
    medians = {s: {k: statistics.median(r[k] for r in runs[s]) for k in runs[s][0]} for s in systems}
    report(medians)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "redis": redis_version}  # fmt: skip
    args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)},
                                     "medians": medians, "runs": runs}, indent=2))  # fmt: skip
    print(f"\nfigures written to {args.json}")
    return 0


def report(medians: dict[str, dict[str, float]]) -> None:
    columns = [("enqueue_one", "enqueue/s"), ("enqueue_bulk", "bulk/s"), ("noop_jobs_per_s", "no-op/s"),
               ("io_jobs_per_s", "50ms/s"), ("io_rss_mb", "RSS MB"), ("io_jobs_per_s_per_gb", "50ms/s/GB"),
               ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"), ("latency_p99_ms", "p99 ms")]  # fmt: skip
    print(f"{'system':<16}" + "".join(f"{title:>11}" for _, title in columns))
    for system, figures in medians.items():
        print(f"{system:<16}" + "".join(f"{figures[key]:>11.1f}" for key, _ in columns))
    print("\nwhat each no-op job costs Redis, and the ceiling of one Redis (one core) for a whole fleet:")
    for system, figures in medians.items():
        cpu = figures["redis_cpu_us_per_job"]
        ceiling = f"{1e6 / cpu:,.0f} jobs/s" if cpu > 0 else "(too few jobs to measure)"
        commands = figures["redis_commands_per_job"]
        print(f"  {system:<16}{commands:>6.1f} commands, {cpu:>6.1f} µs of Redis CPU: {ceiling}")
    ours = medians.get("taskctl")
    if not ours:
        return
    print("\nratios (taskctl / other):")
    goals = [
        ("celery prefork", "noop_jobs_per_s", 1.0),
        ("rq worker", "noop_jobs_per_s", 4.0),
        ("celery prefork", "io_jobs_per_s_per_gb", 1.0),
        ("rq worker", "enqueue_bulk", 3.0),
    ]
    for other, key, goal in goals:
        if other in medians:
            ratio = ours[key] / medians[other][key]
            print(f"  {key} vs {other}: {ratio:.2f}x (goal >= {goal}x) {'met' if ratio >= goal else 'NOT met'}")
    print(f"  enqueue->start p99: {ours['latency_p99_ms']:.1f} ms (goal <= 5 ms) "
          f"{'met' if ours['latency_p99_ms'] <= 5 else 'NOT met'}")  # fmt: skip
    print(f"  bulk enqueue: {ours['enqueue_bulk']:.0f} jobs/s (goal >= 10,000) "
          f"{'met' if ours['enqueue_bulk'] >= 10_000 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
