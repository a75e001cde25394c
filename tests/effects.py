"""What the runs of `fenced_steps` jobs really did: read from their log and their rows, never from Redis.

Each run logs its start and every write it attempted ("wrote" when the database took it,
"refused" when the fence turned it down), and every write it was allowed to make is a
row in the ``effects`` table, in commit order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: A lease of 5 s (renewed every second, 4 s of grace), given up 1 s before it runs out, and
#: maintenance every second: a freeze or a partition plays out in seconds, not minutes.
SHORT_LEASE_ENV = {"TASKCTL_JOB_MONITORING_INTERVAL": "1", "TASKCTL_HEARTBEAT_GRACE": "4",
                   "TASKCTL_LEASE_MARGIN": "1", "TASKCTL_MAINTENANCE_INTERVAL": "1"}  # fmt: skip


@dataclass
class Run:
    job: str
    token: int
    pid: int
    start: float
    activity: list[tuple[str, float]] = field(default_factory=list)  # (wrote | refused | end, when)

    @property
    def ended(self) -> bool:
        return any(kind == "end" for kind, _ in self.activity)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def read_runs(log: Path) -> dict[tuple[str, int], Run]:
    runs: dict[tuple[str, int], Run] = {}
    if not log.exists():
        return runs
    for line in log.read_text().splitlines():
        kind, name, token, pid, moment = line.split()
        if kind == "start":
            runs[(name, int(token))] = Run(name, int(token), int(pid), float(moment))
        else:
            runs[(name, int(token))].activity.append((kind, float(moment)))
    return runs


@dataclass
class Effects:
    """The audit: every list empty means every job done, once in effect, no stale write accepted."""

    runs: dict[tuple[str, int], Run]
    unfinished: list[str]  # jobs whose last run did not write every step
    stale_accepted: list[tuple[str, int]]  # a write taken from a run older than one that had written
    overlapping: list[tuple[str, int]]  # a write taken from a run after a newer run of the job had started
    refused: int  # writes the fence turned down

    def line(self) -> str:
        return (
            f"runs={len(self.runs)} unfinished={len(self.unfinished)} overlapping in effect={len(self.overlapping)} "
            f"stale writes accepted={len(self.stale_accepted)} stale writes refused={self.refused}"
        )


def audit_effects(database: Path, log: Path, jobs: list[str], steps: int) -> Effects:
    runs = read_runs(log)
    rows = sqlite3.connect(database).execute("SELECT name, token, step, at FROM effects ORDER BY rowid").fetchall()
    writes: dict[str, list[tuple[int, int, float]]] = {name: [] for name in jobs}
    for name, token, step, at in rows:
        writes[name].append((token, step, at))
    unfinished = [name for name, done in writes.items() if not _last_run_complete(done, steps)]
    stale = [(name, token) for name, done in writes.items() for i, (token, _, _) in enumerate(done)
             if any(t > token for t, _, _ in done[:i])]  # fmt: skip
    overlapping = [(name, token) for name, done in writes.items() for token, _, at in done
                   if any(r.job == name and r.token > token and r.start < at for r in runs.values())]  # fmt: skip
    refused = sum(1 for r in runs.values() for kind, _ in r.activity if kind == "refused")
    return Effects(runs, unfinished, stale, overlapping, refused)


def _last_run_complete(writes: list[tuple[int, int, float]], steps: int) -> bool:
    if not writes:
        return False
    last = max(token for token, _, _ in writes)
    return sorted(step for token, step, _ in writes if token == last) == list(range(steps))


def superseded(runs: dict[tuple[str, int], Run], run: Run) -> list[Run]:
    """The newer runs of the same job."""
    return [other for other in runs.values() if other.job == run.job and other.token > run.token]


def active_after_newer_start(runs: dict[tuple[str, int], Run], run: Run) -> list[float]:
    """When this run did anything (wrote, tried to, ended) after a newer run of its job had started."""
    starts = [other.start for other in superseded(runs, run)]
    return [at for _, at in run.activity if starts and at > min(starts)]
