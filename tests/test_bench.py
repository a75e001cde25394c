"""The benchmark runs end to end and reports every system (a smoke run: no figure is asserted)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import ROOT

SYSTEMS = {"taskctl", "rq worker", "rq SimpleWorker", "celery prefork", "dramatiq", "huey"}
FIGURES = {
    "enqueue_one", "enqueue_bulk", "idle_rss_mb", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "noop_jobs_per_s", "io_jobs_per_s", "io_rss_mb", "io_jobs_per_s_per_gb", "redis_commands_per_job",
    "redis_cpu_us_per_job", "redis_cpu_us_per_report",
}  # fmt: skip
#: What the report states of each goal of issue 19, and the earlier ones it keeps.
GOAL_LINES = [
    "noop_jobs_per_s vs huey:",
    "noop_jobs_per_s vs celery prefork:",
    "Redis commands per job:",
    "redis_cpu_us_per_job vs huey:",
    "one Redis core, as measured:",
    "one Redis core, without the bench's INCR:",
    "enqueue->start p99 at idle:",
    "io_jobs_per_s_per_gb vs celery prefork:",
    "enqueue_bulk vs rq worker:",
    "noop_jobs_per_s vs rq worker:",
    "bulk enqueue:",
]
#: Tiny sizes for the outbox section (bench.outbox), which runs by default too.
OUTBOX_SIZES = ["--outbox-calls", "20", "--outbox-rows", "200", "--outbox-commits", "5"]
#: What the outbox section prints: its three tables' headings, a row per database, and its goals (issue 20).
OUTBOX_LINES = [
    "what one enqueue costs the application, µs per call",
    "  SQLite: outbox call / enqueue ",
    "  PostgreSQL: outbox call / enqueue ",
    "the relay: Relay.relay_once in a loop",
    "commit-to-queued: python -m taskctl.relay running",
    "goals of issue 20 (this run):",
    "relay throughput, SQLite:",
    "relay throughput, PostgreSQL:",
    "commit-to-queued p99, SQLite (poll 0.2 s):",
    "commit-to-queued p99, PostgreSQL (NOTIFY):",
]
OUTBOX_FIGURES = {
    "plain_enqueue_us", "txn_us", "txn_outbox_us", "outbox_call_us", "outbox_row_us", "txn_then_enqueue_us",
    "relay_rows_per_s", "relay_passes", "relay_commands_per_row", "relay_redis_cpu_us_per_row",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
}  # fmt: skip


def left_behind(redis_url: str) -> list[str]:
    """Processes still running with the bench's REDIS_URL: workers (or their children) it failed to end."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.environ().get("REDIS_URL") == redis_url and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid}: {' '.join(process.info['cmdline'] or [])}")
    return found


def test_the_benchmark_completes_and_reports_every_system(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        # The queue systems; the outbox section has a smoke test of its own (below).
        [sys.executable, "-m", "bench", "--jobs", "20", "--io-jobs", "4", "--latency-samples", "5", "--repeats", "1",
         "--workers", "1", "--systems", ",".join(sorted(SYSTEMS)), "--json", str(out)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["medians"]) == SYSTEMS
    for system, values in figures["medians"].items():
        assert set(values) == FIGURES, system
        # Redis's CPU counters may not move over the smoke run's 20 jobs; everything else must.
        cpu = {"redis_cpu_us_per_job", "redis_cpu_us_per_report"}
        assert all(values[key] >= 0 for key in cpu), (system, values)
        assert all(value > 0 for key, value in values.items() if key not in cpu), (system, values)
    for system in figures["medians"]:
        assert system in done.stdout
    for line in GOAL_LINES:
        assert line in done.stdout, line
    assert "the ceiling of one Redis" in done.stdout
    assert figures["machine"]["cpus"] == os.cpu_count()
    # huey's and Dramatiq's consumers fork children that outlive a parent killed alone.
    assert left_behind(figures["redis_url"]) == []


def test_the_outbox_section_runs_alone_and_reports_both_databases(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--systems", "outbox", "--repeats", "1", "--json", str(out), *OUTBOX_SIZES],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    for line in OUTBOX_LINES:
        assert line in done.stdout, line
    assert "goals of issue 19" not in done.stdout  # the queue systems were not run
    figures = json.loads(out.read_text())
    assert figures["medians"] == {}
    assert set(figures["outbox"]["medians"]) == {"sqlite", "postgresql"}
    for database, values in figures["outbox"]["medians"].items():
        assert set(values) == OUTBOX_FIGURES, database
        # Redis's CPU counters may not move over 200 rows; a difference of two timings may be below zero.
        measured = OUTBOX_FIGURES - {"relay_redis_cpu_us_per_row", "outbox_row_us"}
        assert all(values[key] > 0 for key in measured), (database, values)
    # The relay processes it started (python -m taskctl.relay, one per database) are gone.
    assert left_behind(figures["redis_url"]) == []


def test_the_limits_section_reports_what_each_kind_of_limit_costs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--systems", "limits", "--jobs", "20", "--repeats", "1", "--workers", "1",
         "--json", str(out)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    medians = json.loads(out.read_text())["limits"]["medians"]
    assert set(medians) == {"unlimited", "concurrency limit", "rate limit"}
    for label, values in medians.items():
        assert values["jobs_per_s"] > 0 and values["commands_per_job"] > 1, label
        assert label in done.stdout
    assert "limits (issue 21): taskctl no-op jobs under a limit that never binds" in done.stdout


def test_the_failures_section_reports_summary_requeue_and_delete_beside_stock_rqs_way(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--systems", "failures", "--failed", "300", "--rq-sample", "30",
         "--repeats", "1", "--json", str(out)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    medians = json.loads(out.read_text())["failures"]["medians"]
    for key in (
        "summary_s",
        "cli_summary_s",
        "rq_summary_s",
        "requeue_jobs_per_s",
        "rq_requeue_jobs_per_s",
        "delete_jobs_per_s",
        "rq_delete_jobs_per_s",
        "summary_commands_per_job",
        "requeue_commands_per_job",
    ):
        assert medians[key] > 0, key
    assert "failed jobs at scale (issue 22): 300 failed jobs of 3 causes" in done.stdout
    for label in (
        "summary, in-process",
        "requeue one cause, jobs/s",
        "delete the rest, jobs/s",
        "goal: `taskctl failed` on 300 failed jobs in a few seconds",
    ):
        assert label in done.stdout, label
