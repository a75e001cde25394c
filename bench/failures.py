"""Failed jobs at scale (issue 22): ``python -m bench --systems failures`` runs this section alone.

``--failed N`` failed jobs (100,000 by default) of three causes, a third each, are
written the way RQ's failure path writes them, by RQ's own calls (``Job._handle_failure``:
the FailedJobRegistry entry and a result holding the compressed traceback; then the
status and the end time), a thousand jobs per transaction, each traceback from a
real raise. Running that many failing jobs through workers would take minutes and
measure the workers' failure path, not what is measured here:

1. The summary: ``taskctl.failures.find_failed`` and ``summarize`` in this process,
   then ``taskctl failed`` as a user runs it (a process, start to end).
2. Requeue of one cause (a third), unpaced: ``requeue_failed(cause=...)``.
3. Delete of the rest: ``delete_failed(all_jobs=True)``.

Each with Redis's commands and CPU per job from its own counters. Beside each, what a
script on stock RQ does for the same (its peers have nothing of the kind: Celery,
Dramatiq and huey keep no failed jobs to list), timed on ``--rq-sample`` jobs and
scaled: the summary by ``Job.fetch`` and ``latest_result`` per job, the requeue by
``FailedJobRegistry.requeue``, the delete by ``Job.delete``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
#: The three causes, as a job would raise them (each message differs from job to job by numbers).
RAISES: list[Callable[[int], Exception]] = [
    lambda n: ConnectionRefusedError(111, f"mail-{n % 3} refused the connection"),
    lambda n: TimeoutError(f"push gateway timed out after {5 + n % 3}.0 s"),
    lambda n: RuntimeError(f"inventory answered 503 for order {n}"),
]
REQUEUED_CAUSE = "ConnectionRefusedError"
Counters = Callable[[Redis], tuple[int, float]]


def _traceback(n: int) -> str:
    try:
        raise RAISES[n % 3](n)
    except Exception:
        return traceback.format_exc()


def write_failed(redis: Redis, count: int) -> list[str]:
    """``count`` failed jobs of bench.jobs.noop on queue default, as a worker's failure path leaves them."""
    from rq.job import JobStatus

    from taskctl.enqueue import enqueue_many, prepare
    from taskctl.rqclasses import CatalogJob

    ids = enqueue_many((prepare("noop") for _ in range(count)), redis)
    redis.delete("rq:queue:default")  # taken by a worker, which then failed them
    for start in range(0, count, 1000):
        with redis.pipeline() as pipe:
            for n, job in enumerate(CatalogJob.fetch_many(ids[start : start + 1000], connection=redis), start):
                assert job is not None
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                job.ended_at = datetime.now(UTC)
                job._handle_failure(_traceback(n), pipe)  # saves the job (its registry entry's add does)
            pipe.execute()
    return ids


def _cost(redis: Redis, counters: Counters, action: Callable[[], object], jobs: int) -> tuple[float, float, float]:
    """Seconds, Redis commands per job and Redis CPU µs per job of ``action``."""
    calls, cpu = counters(redis)
    began = time.perf_counter()
    action()
    took = time.perf_counter() - began
    calls_after, cpu_after = counters(redis)
    return took, (calls_after - calls) / jobs, (cpu_after - cpu) / jobs * 1e6


def run(url: str, env: dict[str, str], count: int, sample: int, counters: Counters) -> dict[str, float]:
    """One repeat: every figure, on a Redis emptied first."""
    from rq.job import Job
    from rq.registry import FailedJobRegistry
    from rq.serializers import JSONSerializer

    from taskctl.failed_actions import delete_failed, requeue_failed
    from taskctl.failures import failure_filter, find_failed, summarize
    from taskctl.settings import load_settings

    redis = Redis.from_url(url)
    settings = load_settings(env)
    figures: dict[str, float] = {}

    redis.flushdb()
    write_failed(redis, count)

    def summary() -> None:
        assert len(summarize(find_failed(redis, settings, failure_filter(settings)).matched)) == 3

    figures["summary_s"], figures["summary_commands_per_job"], figures["summary_cpu_us_per_job"] = _cost(
        redis, counters, summary, count
    )
    began = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "taskctl"), "failed"], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    figures["cli_summary_s"] = time.perf_counter() - began

    registry = FailedJobRegistry("default", connection=redis, serializer=JSONSerializer)
    some = registry.get_job_ids(0, sample - 1)

    def rq_summary() -> None:
        for job_id in some:
            job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
            job.latest_result()

    took, figures["rq_summary_commands_per_job"], figures["rq_summary_cpu_us_per_job"] = _cost(
        redis, counters, rq_summary, len(some)
    )
    figures["rq_summary_s"] = took / len(some) * count

    third = len(range(0, count, 3))
    figures["requeue_s"], figures["requeue_commands_per_job"], figures["requeue_cpu_us_per_job"] = _cost(
        redis, counters, lambda: requeue_failed(cause=REQUEUED_CAUSE, connection=redis, settings=settings), third
    )
    redis.delete("rq:queue:default")
    rest = registry.get_job_ids()
    rq_requeued = rest[:sample]

    def rq_requeue() -> None:
        for job_id in rq_requeued:
            registry.requeue(job_id)

    took, figures["rq_requeue_commands_per_job"], figures["rq_requeue_cpu_us_per_job"] = _cost(
        redis, counters, rq_requeue, len(rq_requeued)
    )
    figures["rq_requeue_jobs_per_s"] = len(rq_requeued) / took
    figures["requeue_jobs_per_s"] = third / figures["requeue_s"]

    rq_deleted = [Job.fetch(job_id, connection=redis, serializer=JSONSerializer) for job_id in rest[sample:][:sample]]

    def rq_delete() -> None:
        for job in rq_deleted:
            job.delete()

    took, figures["rq_delete_commands_per_job"], figures["rq_delete_cpu_us_per_job"] = _cost(
        redis, counters, rq_delete, len(rq_deleted)
    )
    figures["rq_delete_jobs_per_s"] = len(rq_deleted) / took
    left = registry.count
    took, figures["delete_commands_per_job"], figures["delete_cpu_us_per_job"] = _cost(
        redis, counters, lambda: delete_failed(all_jobs=True, connection=redis, settings=settings), left
    )
    figures["delete_jobs_per_s"] = left / took
    assert registry.count == 0
    redis.flushdb()
    return figures


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def report(figures: dict[str, float], count: int, sample: int, repeats: int) -> None:
    f = figures
    print(f"\nfailed jobs at scale (issue 22): {count:,} failed jobs of 3 causes, medians of {repeats} repeat(s);")
    print(f"stock RQ's way timed on {sample:,} jobs and scaled (commands and CPU per job as measured):")
    print(f"  {'':<34}{'taskctl':>10}{'cmds/job':>10}{'CPU/job':>10}{'stock RQ':>11}{'cmds/job':>10}{'CPU/job':>10}"
          f"{'ratio':>8}")  # fmt: skip
    rows = [
        ("summary, in-process", f"{f['summary_s']:.2f} s", "summary", f"{f['rq_summary_s']:.1f} s",
         f["rq_summary_s"] / f["summary_s"]),
        ("requeue one cause, jobs/s", f"{f['requeue_jobs_per_s']:,.0f}", "requeue",
         f"{f['rq_requeue_jobs_per_s']:,.0f}", f["requeue_jobs_per_s"] / f["rq_requeue_jobs_per_s"]),
        ("delete the rest, jobs/s", f"{f['delete_jobs_per_s']:,.0f}", "delete", f"{f['rq_delete_jobs_per_s']:,.0f}",
         f["delete_jobs_per_s"] / f["rq_delete_jobs_per_s"]),
    ]  # fmt: skip
    for label, ours, key, theirs, ratio in rows:
        print(f"  {label:<34}{ours:>10}{f[key + '_commands_per_job']:>10.2f}{f[key + '_cpu_us_per_job']:>7.1f} µs"
              f"{theirs:>11}{f['rq_' + key + '_commands_per_job']:>10.2f}{f['rq_' + key + '_cpu_us_per_job']:>7.1f} µs"
              f"{ratio:>7.1f}x")  # fmt: skip
    print(f"  {'summary, `taskctl failed` process':<34}{f['cli_summary_s']:>8.2f} s")
    met = f["cli_summary_s"] <= 5
    print(f"  goal: `taskctl failed` on {count:,} failed jobs in a few seconds (<= 5 s): "
          f"{f['cli_summary_s']:.2f} s {'MET' if met else 'NOT MET'}")  # fmt: skip
