"""Concurrency limits (taskctl.limits): declared, checked, and held across real worker processes.

Overlaps are counted from what the runs logged (tests.testjobs.tally: a line at each
start and end), never from a status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from taskctl.declare import job
from taskctl.enqueue import enqueue_call
from taskctl.exceptions import InvalidArgumentsError, SettingsError
from taskctl.settings import get_settings, load_settings
from taskctl.stack import stop
from tests.conftest import ROOT, SUMMARIES, taskctl, worker_command
from tests.test_faults import wait_until_final


@pytest.fixture
def workers(configured: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Real `rq worker` processes as the deployment files run them (settings in ``env``), stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(worker_command(), cwd=ROOT, env=dict(os.environ, **env),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=5)


def runs(log: Path) -> dict[str, list[tuple[float, float | None]]]:
    """Each token's runs as (start, end) times, from the run log; an end of None: cut off."""
    found: dict[str, list[tuple[float, float | None]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, token, _pid, moment = line.split()
        if kind == "start":
            found.setdefault(token, []).append((float(moment), None))
        else:
            start, _ = found[token][-1]
            found[token][-1] = (start, float(moment))
    return found


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans under way at one moment (an end before a start at the same moment)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def finished_spans(found: dict[str, list[tuple[float, float | None]]], prefix: str) -> list[tuple[float, float]]:
    return [(s, e) for token, spans in found.items() if token.startswith(prefix) for s, e in spans if e is not None]


def test_a_bad_concurrency_declaration_fails_at_import_naming_the_job() -> None:
    def send(to: str) -> None: ...

    with pytest.raises(ValueError, match=r"job send: concurrency must be a whole number, 1 or more, got 0"):
        job(concurrency=0)(send)
    with pytest.raises(ValueError, match=r"job send: concurrency_key 'domain' names no parameter of the job; "
                                         r"expected one of \['to'\]"):  # fmt: skip
        job(concurrency=2, concurrency_key="domain")(send)
    with pytest.raises(ValueError, match=r"job send: concurrency_key needs its limit \(concurrency\) too"):
        job(concurrency_key="to")(send)
    with pytest.raises(ValueError, match=r"job send: rate 'ten/s' is not starts per period; expected e.g. 20/s, 100/m"):
        job(rate="ten/s")(send)
    with pytest.raises(ValueError, match=r"job send: rate '10/fortnight' is not starts per period"):
        job(rate="10/fortnight")(send)
    with pytest.raises(ValueError, match=r"job send: rate '0/s' is not starts per period"):
        job(rate="0/s")(send)
    with pytest.raises(ValueError, match=r"job send: burst must be a whole number from 1 to the rate's 10, got 11"):
        job(rate="10/s", burst=11)(send)
    with pytest.raises(ValueError, match=r"job send: rate_key 'domain' names no parameter of the job"):
        job(rate="10/s", rate_key="domain")(send)
    with pytest.raises(ValueError, match=r"job send: a job takes a concurrency limit or a rate limit, not both"):
        job(rate="10/s", concurrency=2)(send)
    assert job(rate="5/30s", burst=2, rate_key=lambda to: to.split("@")[1])(send) is send


def test_a_bad_concurrency_setting_or_call_is_refused_with_what_is_expected(configured: str, redis: Redis) -> None:
    with pytest.raises(SettingsError, match=r"TASKCTL_CONCURRENCY: 'send_email=0' is not job=N"):
        load_settings({"TASKCTL_CONCURRENCY": "send_email=0"})
    assert load_settings({"TASKCTL_CONCURRENCY": "send_email=2, update_stock=1"}).concurrency == (
        ("send_email", 2), ("update_stock", 1))  # fmt: skip

    with pytest.raises(InvalidArgumentsError, match=r"add: concurrency must be a whole number, 1 or more; got 0"):
        enqueue_call("add", (1, 2), concurrency=0)
    result = taskctl("enqueue", "add", "1", "2", "--concurrency", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--concurrency': 0 is not in the range x>=1." in result.output
    result = taskctl("enqueue", "add", "1", "2", "--rate", "fast")
    assert result.exit_code == 2
    assert "add: rate 'fast' is not starts per period; expected e.g. 20/s, 100/m, 5/30s" in result.output
    with pytest.raises(SettingsError, match=r"TASKCTL_RATES: 'send_email=10/fortnight' is not job=RATE"):
        load_settings({"TASKCTL_RATES": "send_email=10/fortnight"})
    result = taskctl("enqueue", "update_stock", "/tmp/x", "sku-1", "t", "0", "--job-id", "u1", "--unique")
    assert result.exit_code == 2
    assert "update_stock: unique and a concurrency limit do not go together" in result.output
    assert redis.keys("*") == []  # nothing half-done


def test_a_job_over_its_limit_waits_outside_its_queue_and_its_status_says_for_what(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs.log")
    outputs = [taskctl("enqueue", "update_stock", log, "sku-1", f"t{i}", "0").output for i in range(3)]
    other = taskctl("enqueue", "update_stock", log, "sku-2", "t9", "0").output
    ids = [line.split(" as ")[1].split()[0] for line in outputs]

    assert outputs[0].endswith("on queue default\n") and other.endswith("on queue default\n")
    assert outputs[1].endswith("on queue default, waiting for its concurrency limit\n")
    assert len(redis.lrange("rq:queue:default", 0, -1)) == 2  # one per SKU; the others wait outside it
    status = taskctl("status", ids[2]).output
    assert "status:        rate_limited\n" in status
    assert "waiting for:   limit update_stock:sku-1: 1 of 1 at once in use; 2 waiting\n" in status


def test_the_settings_replace_a_declared_limit_and_a_call_replaces_both(
    configured: str, redis: Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs.log")
    monkeypatch.setenv("TASKCTL_CONCURRENCY", "update_stock=2")
    get_settings.cache_clear()
    outputs = [taskctl("enqueue", "update_stock", log, "sku-1", f"t{i}", "0").output for i in range(3)]
    assert ["waiting" in output for output in outputs] == [False, False, True]
    outputs = [taskctl("enqueue", "add", "1", "2", "--concurrency", "1").output for i in range(2)]
    assert ["waiting" in output for output in outputs] == [False, True]
    assert redis.hget("rq:rl:taskctl:add", "concurrency") == b"1"


def run_beside_unlimited(
    workers: Callable[..., subprocess.Popen[bytes]],
    redis: Redis,
    log: Path,
    job: str,
    prefix: str,
    count: int,
    seconds: float,
    plain_seconds: float,
) -> tuple[list[str], dict[str, list[tuple[float, float | None]]]]:
    """``count`` limited tallies (tokens ``prefix``0...) and 40 unlimited ones (P0...), on `high` and `default` in
    turn, run by 4 workers: all finish, each limited job once. Their ids, and the runs log."""
    limited = [enqueue_call(job, (str(log), f"{prefix}{i}", seconds), queue=("high", "default")[i % 2]).id
               for i in range(count)]  # fmt: skip
    plain = [enqueue_call("tally", (str(log), f"P{i}", plain_seconds), queue=("high", "default")[i % 2]).id
             for i in range(40)]  # fmt: skip
    for _ in range(4):
        workers()

    final = wait_until_final(redis, limited + plain, timeout=120)

    assert set(final.values()) == {"finished"}, final
    found = runs(log)
    assert sorted(len(found[f"{prefix}{i}"]) for i in range(count)) == [1] * count  # each ran once
    return limited, found


def test_four_workers_on_two_queues_never_run_more_than_the_limit_and_unlimited_jobs_go_on(
    workers: Callable[..., subprocess.Popen[bytes]],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """Limit 2 for the job, on `high` and `default`; unlimited jobs on the same queues are not held up."""
    _, found = run_beside_unlimited(workers, redis, tmp_path / "runs.log", "limited_tally", "L", 24, 0.2, 0.05)

    limited_spans = finished_spans(found, "L")
    SUMMARIES.append(
        f"limits: concurrency 2, 4 workers, 2 queues, 24 jobs: at most {most_at_once(limited_spans)} "
        f"at once; 40 unlimited jobs on the same queues all ended before the last limited one began"
    )
    assert most_at_once(limited_spans) == 2  # the limit, reached, never passed
    # 24 limited jobs of 0.2 s, two at a time, take 2.4 s at least; the unlimited ones, queued behind
    # them, all ended while limited jobs still waited their turn.
    last_plain_end = max(e for _, e in finished_spans(found, "P"))
    assert last_plain_end < max(s for s, _ in limited_spans)


def test_a_limit_per_key_runs_keys_side_by_side_and_never_one_key_twice(
    workers: Callable[..., subprocess.Popen[bytes]],
    redis: Redis,
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs.log"
    ids = [enqueue_call("update_stock", (str(log), f"sku-{i % 3}", f"t{i}", 0.1)).id for i in range(18)]
    for _ in range(4):
        workers()

    final = wait_until_final(redis, ids, timeout=60)

    assert set(final.values()) == {"finished"}, final
    found = runs(log)
    per_sku = [most_at_once(finished_spans(found, f"sku-{k}/")) for k in range(3)]
    assert per_sku == [1, 1, 1]
    assert most_at_once([span for k in range(3) for span in finished_spans(found, f"sku-{k}/")]) > 1


def test_a_worker_killed_holding_a_slot_gives_it_back_within_the_recovery_bound(
    workers: Callable[..., subprocess.Popen[bytes]],
    redis: Redis,
    tmp_path: Path,
) -> None:
    """Limit 1 per SKU: the run of a SIGKILLed worker is retried and the job behind it runs; nothing leaks.

    With a lease of 3 s (heartbeats every 1 s, 2 s of grace) and a maintenance pass every
    second, a dead worker's runs are recovered within about 4 s (30 s with the defaults).
    """
    log = tmp_path / "runs.log"
    first = enqueue_call("update_stock", (str(log), "sku-1", "first", 2.0)).id
    second = enqueue_call("update_stock", (str(log), "sku-1", "second", 0.1)).id
    quick = {"TASKCTL_JOB_MONITORING_INTERVAL": "1", "TASKCTL_HEARTBEAT_GRACE": "2",
             "TASKCTL_MAINTENANCE_INTERVAL": "1"}  # fmt: skip
    victim = workers(**quick)
    deadline = time.monotonic() + 30
    while "first" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    workers(**quick)

    final = wait_until_final(redis, [first, second], timeout=60)
    recovered_after = time.monotonic() - killed_at

    assert final == {first: "finished", second: "finished"}
    found = runs(log)
    assert [end is None for _, end in found["sku-1/first"]] == [True, False]  # cut off by the kill, then run again
    assert len(found["sku-1/second"]) == 1
    assert most_at_once(finished_spans(found, "sku-1/")) == 1
    SUMMARIES.append(
        f"limits: a worker SIGKILLed holding the only slot of a key: its run retried and the job "
        f"behind it finished {recovered_after:.1f} s after the kill"
    )
    assert recovered_after < 4 + 2.1 + 5  # the recovery bound, the two runs after it, and slack for a slow machine
    assert redis.zcard("rq:rl:taskctl:update_stock:sku-1:allowed") == 0  # no slot left held


def test_a_rate_limit_starts_no_more_than_its_budget_in_any_window_and_unlimited_jobs_go_on(
    workers: Callable[..., subprocess.Popen[bytes]], redis: Redis, tmp_path: Path
) -> None:
    """20 per second, 4 workers on 2 queues: any one-second window of starts, slid over the run, holds 20 at most."""
    # Each ran once (asserted there): set aside, never failed.
    paced, found = run_beside_unlimited(workers, redis, tmp_path / "runs.log", "paced_tally", "R", 70, 0.0, 0.01)

    starts = sorted(s for s, _ in finished_spans(found, "R"))
    in_any_second = max(sum(1 for t in starts if first <= t < first + 1.0) for first in starts)
    SUMMARIES.append(
        f"limits: rate 20/s, 4 workers, 2 queues, 70 jobs: at most {in_any_second} starts in any "
        f"second, over {starts[-1] - starts[0]:.2f} s; each ran once, no retry spent"
    )
    assert 15 <= in_any_second <= 20  # the budget, used and never passed
    assert starts[-1] - starts[0] >= 70 / 20 - 1  # 70 starts at 20 a second take 2.5 s at least
    assert max(e for _, e in finished_spans(found, "P")) < starts[-1]  # the unlimited ones did not wait
    assert redis.zcard("taskctl:rate:due") == 0
    assert {redis.hget(f"rq:job:{i}", "retries_left") for i in paced} == {b"3"}  # set aside, never charged


def test_a_job_set_aside_by_its_rate_says_when_it_may_start(configured: str, redis: Redis, tmp_path: Path) -> None:
    from taskctl.rqclasses import Queue

    log = str(tmp_path / "runs.log")
    ids = [enqueue_call("paced_tally", (log, f"t{i}", 0.0), rate="1/m").id for i in range(2)]
    queue = Queue("default", connection=redis)
    first = Queue.dequeue_any([queue], None, connection=redis)  # a worker's claim: the first may start
    second = Queue.dequeue_any([queue], None, connection=redis)  # the second is set aside for a minute

    assert first is not None and first[0].id == ids[0] and second is None
    status = taskctl("status", ids[1]).output
    assert "status:        rate_limited\n" in status
    assert re.search(
        r"waiting for:   rate limit paced_tally \(1/60s\): may start in (59|60)\.\d s; 1 waiting\n", status
    )
    stats = taskctl("stats").output
    assert re.search(
        r"RATE LIMIT +RATE +STARTS IN PERIOD +WAITING +CLEARS IN\npaced_tally +1/60s +1 +1 +(59|60)\.\ds", stats
    )


def test_a_limited_job_in_a_group_is_refused_and_nothing_is_written(configured: str, redis: Redis) -> None:
    from taskctl.workflows import Call, group

    with pytest.raises(InvalidArgumentsError, match=r"update_stock: a job with a limit cannot be part of a group"):
        group(Call("add", (1, 2)), Call("update_stock", ("/tmp/x", "sku-1", "t", 0.0)))
    assert redis.keys("*") == []


def test_an_idle_worker_asked_to_wait_under_a_millisecond_does_not_block_forever(
    configured: str, redis_url: str
) -> None:
    """Redis reads a BLPOP timeout in whole milliseconds and takes 0 for "forever".

    A job set aside by its rate limit makes an idle worker wait exactly until it is due,
    which may be under a millisecond away; a worker once slept 15 s there.
    """
    from rq.exceptions import DequeueTimeout

    from taskctl.rqclasses import Queue

    client = Redis.from_url(redis_url, socket_timeout=3)  # a wait Redis took for "forever" ends in TimeoutError
    started = time.monotonic()
    with pytest.raises(DequeueTimeout):
        Queue.dequeue_any([Queue("default", connection=client)], 0.0005, connection=client)
    assert time.monotonic() - started < 1
