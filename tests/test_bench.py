"""The benchmark runs end to end and reports every system (a smoke run: no figure is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_benchmark_completes_and_reports_every_system(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--jobs", "20", "--io-jobs", "4", "--latency-samples", "5", "--repeats", "1",
         "--json", str(out)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["medians"]) == {"taskctl", "rq worker", "rq SimpleWorker", "celery prefork"}
    for system, values in figures["medians"].items():
        # Redis's CPU counters may not move over the smoke run's 20 jobs; everything else must.
        assert values["redis_cpu_us_per_job"] >= 0, (system, values)
        assert all(value > 0 for key, value in values.items() if key != "redis_cpu_us_per_job"), (system, values)
    for system in figures["medians"]:
        assert system in done.stdout
    assert "noop_jobs_per_s vs celery prefork:" in done.stdout
    assert "the ceiling of one Redis" in done.stdout
    assert figures["machine"]["cpus"] == os.cpu_count()
