"""``python -m bench``: taskctl against stock RQ, Celery, Dramatiq and huey, same jobs, same Redis, one run.

Starts its own redis-server on a free port (append-only file, as in production),
then for each repeat, alternating the systems: enqueue rates (one at a time and
bulk), processing rates for no-op and 50 ms I/O-bound jobs with two (--workers) job-running
processes each, worker memory (RSS, children included), and enqueue-to-start
latency at idle; and what each job costs Redis (commands and CPU, from Redis's own
counters), with the ceiling that puts on a whole fleet sharing one Redis. Prints a
table and the ratios the goals are stated in, and writes the figures as JSON.

No system keeps results (the peers are tuned so, and taskctl's bench jobs declare
``result_ttl=0``), so completions and latencies are reported by the jobs themselves, in
the same commands for every system: see bench.jobs.

The section ``outbox`` (in --systems, run by default; ``--systems outbox`` runs it
alone) measures the outbox of issue 20 on SQLite and on a PostgreSQL server of its own:
the cost of an enqueue in the application's transaction, the relay's throughput and
commit-to-queued latency (see bench.outbox). The sections ``limits`` (issue 21) and
``failures`` (issue 22: summary, requeue and delete of --failed jobs, see bench.failures)
run by default too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
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

from bench import failures, free_port, outbox
from bench.jobs import DONE_KEY, STAMPS_KEY

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SYSTEMS = ("taskctl", "rq worker", "rq SimpleWorker", "celery prefork", "dramatiq", "huey")
#: What --systems also takes that is not a queue system: measured in turn with them, reported apart.
SECTIONS = ("outbox", "limits", "failures")
#: The limits section's jobs: none, a concurrency limit and a rate limit, neither ever binding.
LIMIT_JOBS = (("unlimited", "noop"), ("concurrency limit", "noop_limited"), ("rate limit", "noop_paced"))
#: Job-running processes per system, unless --workers says otherwise.
WORKERS = 2
#: Systems whose one command starts a parent that runs the job-running processes as its children.
POOLED = ("taskctl", "celery prefork", "dramatiq", "huey")
#: Redis commands each measured job issues itself (noop's INCR), counted in every system's figures.
JOB_OWN_COMMANDS = 1
#: How long the client waits for one stamp job's report before the run is taken as broken.
STAMP_TIMEOUT_S = 10


def worker_command(system: str, url: str, processes: int = WORKERS) -> list[str]:
    rq = [str(BIN / "rq"), "worker", "-u", url, "--logging_level", "WARNING"]
    return {
        # As shipped, the Procfile's command: INFO logs, every configured queue in priority order
        # (the plain command is taskctl's where taskctl is installed: taskctl_rq.pth).
        "taskctl": [str(BIN / "rq"), "worker-pool", "-n", str(processes)],
        # Stock RQ must be asked for by name in this environment.
        "rq worker": [*rq, "-w", "rq.worker.Worker", "default"],
        "rq SimpleWorker": [*rq, "-w", "rq.SimpleWorker", "default"],
        "celery prefork": [str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-c", str(processes),
                           "--pool=prefork", "-l", "WARNING", "--without-gossip", "--without-mingle",
                           "--without-heartbeat"],
        # Its default threads per process, written out; it logs nothing per message at its default level.
        "dramatiq": [str(BIN / "dramatiq"), "-p", str(processes), "-t", "8", "bench.dramatiq_app"],
        # Worker processes, as the other systems here have; -q logs warnings only, as they do.
        "huey": [str(BIN / "huey_consumer"), "bench.huey_app.huey", "-k", "process", "-w", str(processes), "-q"],
    }[system]  # fmt: skip


@contextmanager
def workers(
    system: str, url: str, env: dict[str, str], count: int = WORKERS, settle: bool = True
) -> Iterator[list[psutil.Process]]:
    """The system's workers, started; with ``settle``, given time to be ready and idle before anything is measured."""
    # The pooled systems: one parent, `count` children; stock RQ: `count` workers of their own.
    parents = 1 if system in POOLED else count
    command = worker_command(system, url, count)
    quiet = subprocess.DEVNULL
    # A session (and process group) of its own per worker, so that stop() can reach every process it forked.
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=quiet, stderr=quiet, start_new_session=True)
                 for _ in range(parents)]  # fmt: skip
    if settle:
        time.sleep((1.5 if parents == count else 3) + 0.2 * count)
    try:
        yield [psutil.Process(p.pid) for p in processes]
    finally:
        stop(processes)


def stop(processes: list[subprocess.Popen[bytes]], grace: float = 15) -> None:
    """End each worker and everything it forked, whatever its parent does on SIGTERM.

    The parent is asked first, as an operator would, so that it stops its children itself.
    A child it leaves behind (huey's and Dramatiq's are multiprocessing children, which
    outlive a parent killed after its grace) would go on polling Redis and taking CPU while
    the next system is measured: each is killed, by the pid seen before the stop and by
    process group.
    """
    tree: list[psutil.Process] = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += psutil.Process(process.pid).children(recursive=True)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(tree, timeout=max(0.1, deadline - time.monotonic()))
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        # Whatever was forked after the look at the tree (a pool replacing a child) is still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    return total / 2**20


class Client:
    """Enqueue the way each system's users would; count completions and latencies as the jobs report them."""

    def __init__(self, system: str, url: str) -> None:
        self.system, self.url = system, url
        self.redis = Redis.from_url(url)
        # The peers' apps, imported only for their own system: each makes its broker client on import.
        self.app: Any = None
        if system == "celery prefork":
            from bench import celery_app

            self.app = celery_app
        elif system == "dramatiq":
            from bench import dramatiq_app

            self.app = dramatiq_app
        elif system == "huey":
            from bench import huey_app

            self.app = huey_app

    def enqueue_one(self, job: str, *args: Any) -> None:
        if self.system == "taskctl":
            from taskctl.enqueue import enqueue

            enqueue(job, *args)
        elif self.system == "celery prefork":
            getattr(self.app, job).delay(*args)
        elif self.system == "dramatiq":
            getattr(self.app, job).send(*args)
        elif self.system == "huey":
            getattr(self.app, job)(*args)
        else:
            from rq import Queue

            from bench import jobs

            # As taskctl's bench jobs declare: no result kept, the job deleted as it finishes.
            Queue("default", connection=self.redis).enqueue(getattr(jobs, job), *args, result_ttl=0)

    def enqueue_each(self, job: str, count: int) -> None:
        for _ in range(count):
            self.enqueue_one(job)

    def enqueue_bulk(self, job: str, count: int) -> None:
        if self.system == "taskctl":
            from taskctl.enqueue import enqueue_many, prepare

            enqueue_many([prepare(job) for _ in range(count)], self.redis, batch_size=1000)
        elif self.system == "celery prefork":
            task = getattr(self.app, job)
            with self.app.app.producer_or_acquire() as producer:
                for _ in range(count):
                    task.apply_async(producer=producer)
        elif self.system in ("dramatiq", "huey"):
            # Neither has a bulk enqueue on Redis (their groups, too, enqueue one message at a time).
            self.enqueue_each(job, count)
        else:
            from rq import Queue

            from bench import jobs

            queue = Queue("default", connection=self.redis)
            for start in range(0, count, 1000):
                batch = [Queue.prepare_data(getattr(jobs, job), result_ttl=0) for _ in range(min(1000, count - start))]
                with self.redis.pipeline() as pipeline:
                    queue.enqueue_many(batch, pipeline=pipeline)
                    pipeline.execute()

    def done(self) -> int:
        return int(self.redis.get(DONE_KEY) or 0)

    def latency(self, samples: int) -> list[float]:
        self._stamp()  # not counted: the client's own first call warms it up
        found = []
        for _ in range(samples):
            found.append(self._stamp() * 1000)
            time.sleep(0.02)
        return found

    def _stamp(self) -> float:
        """Enqueue to start, in seconds, as one stamp job measured it: waiting for it costs the system nothing."""
        self.enqueue_one("stamp", time.time())
        reported = self.redis.blpop([STAMPS_KEY], timeout=STAMP_TIMEOUT_S)
        if reported is None:
            raise TimeoutError(f"{self.system}: no stamp job reported within {STAMP_TIMEOUT_S} s")
        return float(reported[1])


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
    client: Client, system: str, url: str, env: dict[str, str], jobs: int, count: int, job: str = "noop"
) -> tuple[float, float]:
    """Redis commands and CPU microseconds per no-op job, for the workers alone.

    The jobs are queued before the workers start, so the enqueue is not counted; what is
    counted besides the jobs (the workers' start-up, idle heartbeats, this script's
    polling, a few commands a second) is small beside thousands of jobs. Nothing here is
    timed, so the workers are not given time to settle.
    """
    client.redis.flushdb()
    client.enqueue_bulk(job, jobs)
    calls_before, cpu_before = redis_counters(client.redis)
    with workers(system, url, env, count, settle=False):
        wait_until_done(client, job, jobs, 600, 0.2)
        calls_after, cpu_after = redis_counters(client.redis)
    return (calls_after - calls_before) / jobs, (cpu_after - cpu_before) / jobs * 1e6


def report_cost(redis: Redis, count: int) -> float:
    """Redis CPU microseconds of what a bench job adds for the measurement (its INCR, one round trip), alone.

    It is in every system's Redis CPU per job; without it is what the system itself
    costs Redis per job, which is what a fleet's ceiling is made of.
    """
    _, before = redis_counters(redis)
    for _ in range(count):
        redis.incr("bench:calibration")
    _, after = redis_counters(redis)
    redis.delete("bench:calibration")
    return (after - before) / count * 1e6


def run_system(
    system: str, url: str, env: dict[str, str], jobs: int, io_jobs: int, samples: int, count: int = WORKERS
) -> dict[str, float]:
    client = Client(system, url)
    figures: dict[str, float] = {}
    client.redis.flushdb()
    figures["enqueue_one"] = jobs / timed(lambda: client.enqueue_each("noop", jobs))
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
    figures["redis_cpu_us_per_report"] = report_cost(client.redis, jobs)
    client.redis.flushdb()
    return figures


def run_limits(url: str, env: dict[str, str], jobs: int, count: int = WORKERS) -> dict[str, dict[str, float]]:
    """taskctl's no-op jobs with no limit, a concurrency limit and a rate limit (neither binding): what each costs."""
    client = Client("taskctl", url)
    figures: dict[str, dict[str, float]] = {}
    with workers("taskctl", url, env, count) as processes:
        for label, job in LIMIT_JOBS:
            figures[label] = {"jobs_per_s": drain(client, job, jobs, processes, timeout=600)[0]}
    for label, job in LIMIT_JOBS:
        commands, cpu = redis_cost(client, "taskctl", url, env, jobs, count, job)
        figures[label] |= {"commands_per_job": commands, "redis_cpu_us_per_job": cpu}
    client.redis.flushdb()
    return figures


def report_limits(medians: dict[str, dict[str, float]]) -> None:
    print("\nlimits (issue 21): taskctl no-op jobs under a limit that never binds, and without one")
    print(f"  {'job':<20}{'jobs/s':>10}{'commands/job':>14}{'Redis CPU/job':>15}{'vs unlimited':>14}")
    base = medians["unlimited"]
    for label, figures in medians.items():
        ratio = figures["jobs_per_s"] / base["jobs_per_s"]
        print(f"  {label:<20}{figures['jobs_per_s']:>10,.0f}{figures['commands_per_job']:>14.1f}"
              f"{figures['redis_cpu_us_per_job']:>12.1f} µs{ratio:>13.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per measurement (default 2000)")
    parser.add_argument("--io-jobs", type=int, default=200, help="50 ms jobs per measurement (default 200)")
    parser.add_argument("--latency-samples", type=int, default=200, help="jobs timed one by one at idle")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"job-running processes per system (default {WORKERS})")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs of every system, alternating (default 3)")
    parser.add_argument("--systems", default=",".join(SYSTEMS + SECTIONS),
                        help="comma-separated subset of: " + ", ".join(SYSTEMS + SECTIONS))  # fmt: skip
    defaults = outbox.Sizes()
    parser.add_argument("--outbox-calls", type=int, default=defaults.calls,
                        help=f"outbox: calls per enqueue-cost figure (default {defaults.calls})")  # fmt: skip
    parser.add_argument("--outbox-rows", type=int, default=defaults.rows,
                        help=f"outbox: rows the relay moves for its throughput (default {defaults.rows})")  # fmt: skip
    parser.add_argument("--outbox-commits", type=int, default=defaults.commits,
                        help=f"outbox: commits timed for commit-to-queued (default {defaults.commits})")  # fmt: skip
    parser.add_argument("--failed", type=int, default=100_000,
                        help="failures: failed jobs summarized, requeued and deleted (default 100000)")  # fmt: skip
    parser.add_argument("--rq-sample", type=int, default=5000,
                        help="failures: jobs stock RQ's way is timed on, then scaled (default 5000)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where the figures go")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",")]
    unknown = set(systems) - set(SYSTEMS + SECTIONS)
    if unknown:
        parser.error(
            f"unknown system(s) {', '.join(sorted(unknown))}; expected some of: {', '.join(SYSTEMS + SECTIONS)}"
        )
    sizes = outbox.Sizes(args.outbox_calls, args.outbox_rows, args.outbox_commits)

    from taskctl.stack import redis_server

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, REDIS_URL=url, TASKCTL_JOB_PACKAGES="jobs,bench.jobs",
               PYTHONPATH=str(ROOT))  # fmt: skip
    os.environ.update({k: env[k] for k in ("REDIS_URL", "TASKCTL_JOB_PACKAGES")})
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems if s in SYSTEMS}
    outbox_runs: list[dict[str, dict[str, float]]] = []
    limit_runs: list[dict[str, dict[str, float]]] = []
    failure_runs: list[dict[str, float]] = []
    databases: dict[str, str] = {}
    postgres_url = ""
    with tempfile.TemporaryDirectory() as data, redis_server(port, Path(data)), contextlib.ExitStack() as stack:
        redis_version = Redis.from_url(url).info("server")["redis_version"]
        if "outbox" in systems:
            postgres_url = stack.enter_context(outbox.postgres(Path(data)))
            databases = outbox.versions(postgres_url)
        for repeat in range(args.repeats):
            for system in systems if repeat % 2 == 0 else reversed(systems):
                print(f"repeat {repeat + 1}/{args.repeats}: {system} ...", file=sys.stderr, flush=True)
                if system == "outbox":
                    outbox_runs.append(outbox.run(url, env, postgres_url, Path(data), sizes, redis_counters))
                    continue
                if system == "failures":
                    failure_runs.append(failures.run(url, env, args.failed, args.rq_sample, redis_counters))
                    continue
                if system == "limits":
                    limit_runs.append(run_limits(url, env, args.jobs, args.workers))
                    continue
                runs[system].append(
                    run_system(system, url, env, args.jobs, args.io_jobs, args.latency_samples, args.workers)
                )
    medians = {s: {k: statistics.median(r[k] for r in runs[s]) for k in runs[s][0]} for s in runs}
    if medians:
        report(medians)
    limit_medians = {
        label: {key: statistics.median(run[label][key] for run in limit_runs) for key in limit_runs[0][label]}
        for label, _ in LIMIT_JOBS
    } if limit_runs else {}  # fmt: skip
    if limit_medians:
        report_limits(limit_medians)
    failure_medians = failures.medians(failure_runs) if failure_runs else {}
    if failure_medians:
        failures.report(failure_medians, args.failed, args.rq_sample, args.repeats)
    outbox_figures: dict[str, Any] = {}
    if outbox_runs:
        outbox_medians = outbox.medians(outbox_runs)
        outbox.report(outbox_medians, databases, args.repeats, sizes, goal)
        outbox_figures = {"databases": databases, "medians": outbox_medians, "runs": outbox_runs}
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "redis": redis_version}  # fmt: skip
    # The Redis URL too, so that a test can look for any process the run left behind (their REDIS_URL).
    args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)},
                                     "redis_url": url, "medians": medians, "runs": runs,
                                     "outbox": outbox_figures,
                                     "limits": {"medians": limit_medians, "runs": limit_runs},
                                     "failures": {"medians": failure_medians, "runs": failure_runs}},
                                    indent=2))  # fmt: skip
    print(f"\nfigures written to {args.json}")
    return 0


def report(medians: dict[str, dict[str, float]]) -> None:
    columns = [("enqueue_one", "enqueue/s"), ("enqueue_bulk", "bulk/s"), ("noop_jobs_per_s", "no-op/s"),
               ("io_jobs_per_s", "50ms/s"), ("io_rss_mb", "RSS MB"), ("io_jobs_per_s_per_gb", "50ms/s/GB"),
               ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"), ("latency_p99_ms", "p99 ms")]  # fmt: skip
    print(f"{'system':<16}" + "".join(f"{title:>11}" for _, title in columns))
    for system, figures in medians.items():
        print(f"{system:<16}" + "".join(f"{figures[key]:>11.1f}" for key, _ in columns))
    print("\nwhat each no-op job costs Redis, and the ceiling of one Redis (one core) for a whole fleet")
    print(f"(each job issues {JOB_OWN_COMMANDS} command of its own for the measurement, included in every row):")
    print("(the INCR alone, one round trip, measured beside each system: 'of it, INCR')")
    print(f"  {'system':<16}{'no-op jobs/s':>13}{'commands/job':>14}{'Redis CPU/job':>15}{'of it, INCR':>13}"
          f"{'ceiling':>15}{'without INCR':>15}")  # fmt: skip
    for system, figures in medians.items():
        cpu, incr = figures["redis_cpu_us_per_job"], figures["redis_cpu_us_per_report"]
        print(f"  {system:<16}{figures['noop_jobs_per_s']:>13,.0f}{figures['redis_commands_per_job']:>14.1f}"
              f"{cpu:>12.1f} µs{incr:>10.1f} µs{ceiling(cpu):>15}{ceiling(cpu - incr):>15}")  # fmt: skip
    ours = medians.get("taskctl")
    if not ours:
        return
    print("\ngoals of issue 19 (taskctl against the others, this run):")
    ratio_goal(medians, "huey", "noop_jobs_per_s", ">=", 1.0)
    ratio_goal(medians, "celery prefork", "noop_jobs_per_s", ">=", 2.0)
    goal(f"Redis commands per job: {ours['redis_commands_per_job']:.1f}", "<= 12",
         ours["redis_commands_per_job"] <= 12)  # fmt: skip
    ratio_goal(medians, "huey", "redis_cpu_us_per_job", "<=", 1.5)
    for label, cpu in (
        ("as measured", ours["redis_cpu_us_per_job"]),
        ("without the bench's INCR", ours["redis_cpu_us_per_job"] - ours["redis_cpu_us_per_report"]),
    ):
        carried = 1e6 / cpu if cpu > 0 else 0.0
        goal(f"one Redis core, {label}: {carried:,.0f} jobs/s", ">= 20,000 jobs/s", carried >= 20_000)
    goal(f"enqueue->start p99 at idle: {ours['latency_p99_ms']:.1f} ms", "<= 5 ms", ours["latency_p99_ms"] <= 5)
    ratio_goal(medians, "celery prefork", "io_jobs_per_s_per_gb", ">=", 1.0)
    ratio_goal(medians, "rq worker", "enqueue_bulk", ">=", 3.0)
    print("issue 9's goals, not restated by issue 19:")
    ratio_goal(medians, "rq worker", "noop_jobs_per_s", ">=", 4.0)
    goal(f"bulk enqueue: {ours['enqueue_bulk']:,.0f} jobs/s", ">= 10,000", ours["enqueue_bulk"] >= 10_000)


def ceiling(cpu_us: float) -> str:
    """Jobs/s that one Redis core carries at that much of its CPU per job."""
    return f"{1e6 / cpu_us:,.0f}/s" if cpu_us > 0 else "(too few)"


def ratio_goal(medians: dict[str, dict[str, float]], other: str, key: str, sense: str, target: float) -> None:
    """taskctl's figure over another system's, against a goal; skipped where that system was not run."""
    if other not in medians:
        return
    theirs = medians[other][key]
    if theirs <= 0:
        # Redis's CPU counters move in steps of milliseconds: a smoke run's few jobs may not move them.
        print(f"  {key} vs {other}: (too few jobs to measure) (goal {sense} {target}x)")
        return
    ratio = medians["taskctl"][key] / theirs
    goal(f"{key} vs {other}: {ratio:.2f}x", f"{sense} {target}x", ratio >= target if sense == ">=" else ratio <= target)


def goal(figure: str, target: str, met: bool) -> None:
    print(f"  {figure} (goal {target}) {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
