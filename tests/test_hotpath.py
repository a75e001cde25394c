"""A busy worker's one script per job (taskctl.hotpath): what it costs Redis, and what tools read of it.

The cost is counted by Redis itself (INFO commandstats, whose counts include the
commands a script runs), with real `rq worker` processes; what a job leaves is
compared with what RQ's own success path leaves (the forking worker's).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import rq
from redis import Redis

from taskctl import hotpath
from taskctl.enqueue import enqueue_call, enqueue_many, prepare
from taskctl.rqclasses import CatalogJob, Queue
from tests.conftest import FORKING, ROOT, worker_command
from tests.effects import wait_for


def commands(redis: Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in redis.info("commandstats").items()}


def burst(*queues: str, worker_class: str = "taskctl.worker.Worker") -> None:
    subprocess.run(worker_command("--burst", *queues, worker_class=worker_class), cwd=ROOT, check=True, timeout=120,
                   capture_output=True)  # fmt: skip


def test_a_busy_worker_on_short_jobs_starts_up_to_eight_per_script_and_spends_under_9_commands_on_each(
    configured: str, redis: Redis
) -> None:
    jobs = 1000
    enqueue_many([prepare("add_quietly", (2, 3)) for _ in range(jobs)], redis)
    before = commands(redis)
    burst("default")  # each empty queue before it in priority order would cost one LPOP per step more
    after = commands(redis)
    spent = {name: after[name] - before.get(name, 0) for name in after}
    # One script per 8 jobs (TASKCTL_PREFETCH) once the first steps have found the jobs short (about
    # 7 commands per job); a step that took long (a loaded machine) starts the doubling again.
    assert jobs / 8 <= spent["evalsha"] <= jobs / 4, spent["evalsha"]
    # Start-up, maintenance and teardown are a few hundred commands in all, whatever the count of jobs.
    assert sum(spent.values()) - 200 <= 9 * jobs, sorted(spent.items(), key=lambda item: -item[1])
    assert not redis.keys("rq:job:*") and not redis.keys("rq:results:*") and not redis.keys("rq:execution*")
    assert redis.zcard("rq:finished:default") == redis.zcard("rq:wip:default") == 0


def test_with_prefetch_off_a_busy_worker_spends_one_script_per_job(configured: str, redis: Redis) -> None:
    jobs = 300
    enqueue_many([prepare("add_quietly", (2, 3)) for _ in range(jobs)], redis)
    before = commands(redis)
    subprocess.run(worker_command("--burst", "default"), cwd=ROOT, check=True, timeout=120, capture_output=True,
                   env={**os.environ, "TASKCTL_PREFETCH": "1"})  # fmt: skip
    spent = commands(redis)["evalsha"] - before.get("evalsha", 0)
    assert jobs <= spent <= jobs + 30
    assert not redis.keys("rq:job:*")


def test_a_job_the_step_finished_looks_as_rqs_own_success_path_leaves_it(configured: str, redis: Redis) -> None:
    by_rq = enqueue_call("add", (2, 3)).id
    burst(worker_class=FORKING)  # RQ's handle_job_success, in a work-horse
    # The second of two jobs is started by the step that records the first.
    first, by_step = enqueue_call("add", (1, 1)).id, enqueue_call("add", (2, 3)).id
    burst()

    rqs, ours = (CatalogJob.fetch(job_id, connection=redis) for job_id in (by_rq, by_step))
    assert (ours.get_status(), ours.return_value()) == ("finished", 5)
    assert set(redis.hkeys(ours.key)) == set(redis.hkeys(rqs.key))
    assert abs(redis.ttl(ours.key) - redis.ttl(rqs.key)) <= 5 and redis.ttl(ours.key) > 80_000
    mine, theirs = ours.latest_result(), rqs.latest_result()
    assert mine is not None and theirs is not None
    assert (
        (mine.type, mine.return_value) == (theirs.type, theirs.return_value) == (rq.results.Result.Type.SUCCESSFUL, 5)
    )
    assert len(mine.execution_id) == len(theirs.execution_id) == 32
    fields = [set(fields) for _, fields in redis.xrange(f"rq:results:{by_step}")]
    assert fields == [set(fields) for _, fields in redis.xrange(f"rq:results:{by_rq}")]
    assert abs(redis.ttl(f"rq:results:{by_step}") - redis.ttl(f"rq:results:{by_rq}")) <= 5
    finished = Queue("default", connection=redis).finished_job_registry.get_job_ids()
    assert set(finished) == {by_rq, first, by_step}
    assert redis.zcard("rq:wip:default") == 0 and not redis.keys("rq:execution*")


def test_while_a_stepped_job_runs_rq_and_the_dashboard_see_the_worker_busy_with_it(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    first, second = enqueue_call("slow", (0.2,)).id, enqueue_call("slow", (3,)).id
    process = subprocess.Popen(worker_command(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis.hget(CatalogJob.key_for(second), "status") == b"started", 20, "the second job started")
        job = CatalogJob.fetch(second, connection=redis)
        [worker] = rq.Worker.all(connection=redis)
        assert (worker.get_state(), worker.get_current_job_id()) == ("busy", second)
        assert [e.worker_name for e in job.get_executions()] == [worker.name]
        assert Queue("default", connection=redis).started_job_registry.get_job_ids() == [second]
        assert CatalogJob.fetch(first, connection=redis).get_status() == "finished"
        wait_for(lambda: redis.hget(CatalogJob.key_for(second), "status") == b"finished", 20, "the second job ended")
        wait_for(lambda: rq.Worker.all(connection=redis)[0].get_state() == "idle", 10, "the worker idle")
        assert rq.Worker.all(connection=redis)[0].successful_job_count == 2
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_a_recovered_run_loses_its_execution_records_too(configured: str, redis: Redis) -> None:
    job_id = enqueue_call("add", (1, 2), backoff=0).id
    queue = Queue("default", connection=redis)
    redis.lrem(queue.key, 1, job_id)
    redis.hset(CatalogJob.key_for(job_id), mapping={"status": "started", "taskctl_execution": "run1"})
    # As the step writes them: no TTL until the run's first heartbeat, which never came.
    redis.hset(f"rq:execution:{job_id}:run1", mapping={"id": "run1", "job_id": job_id})
    redis.zadd(f"rq:executions:{job_id}", {"run1": time.time() + 60})
    redis.zadd(queue.started_job_registry.key, {f"{job_id}:run1": 1})

    queue.started_job_registry.cleanup()

    assert redis.hget(CatalogJob.key_for(job_id), "status") == b"queued"  # retried
    assert not redis.exists(f"rq:execution:{job_id}:run1", f"rq:executions:{job_id}")


def test_a_job_with_dependents_is_recorded_rqs_way_and_its_dependents_run(configured: str, redis: Redis) -> None:
    from taskctl.workflows import call, chain

    # The first step outlasts a second, so the worker's statistics are due when its end is sent.
    handle = chain(call("slow", 1.2), call("add", 3, 4), call("add", 5, 6))
    process = subprocess.Popen(worker_command("default"), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        ids = [step.id for step in handle.steps]
        wait_for(lambda: all(redis.hget(CatalogJob.key_for(i), "status") == b"finished" for i in ids), 30, "all done")
        assert [CatalogJob.fetch(i, connection=redis).return_value() for i in ids[1:]] == [7, 11]
        # Counted once each, whichever way their success was recorded.
        wait_for(lambda: rq.Worker.all(connection=redis)[0].successful_job_count == 3, 10, "the worker's count")
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_jobs_a_step_started_but_their_worker_never_began_go_back_to_the_front_of_their_queue(
    configured: str, redis: Redis
) -> None:
    queue = Queue("default", connection=redis)
    ids = [enqueue_call("add", (n, 1)).id for n in range(4)]
    registry = queue.started_job_registry.key
    index = "rq:worker:test:executions"
    outcomes, started = hotpath.send_step(
        redis, "rq:worker:test", index, [(queue.key, registry)], "test", ended=[], execution_ids=["r1", "r2", "r3"],
        started_at_text="2026-12-01T00:00:00.000000Z", started_at=time.time(), lease_seconds=15, set_busy=True,
        successes=0, working_seconds=0.0,
    ).collect()  # fmt: skip
    assert (outcomes, [s.job_id for s in started]) == ([], ids[:3])
    assert [redis.hget(CatalogJob.key_for(i), "status") for i in ids] == [b"started"] * 3 + [b"queued"]

    assert hotpath.give_back(redis, index, [(s, registry) for s in started[1:]]) == 2

    assert [i.decode() for i in redis.lrange(queue.key, 0, -1)] == ids[1:]  # in their order, at the front
    assert [redis.hget(CatalogJob.key_for(i), "status") for i in ids] == [b"started"] + [b"queued"] * 3
    assert [m.decode() for m in redis.zrange(registry, 0, -1)] == [f"{ids[0]}:r1"]
    assert {m.decode() for m in redis.smembers(index)} == {f"{ids[0]}:r1"}
    assert not redis.exists(f"rq:execution:{ids[1]}:r2", f"rq:executions:{ids[1]}")
    # Given back twice (a retried reply): nothing more happens.
    assert hotpath.give_back(redis, index, [(s, registry) for s in started[1:]]) == 0
    assert redis.llen(queue.key) == 3


def test_behind_a_long_job_the_jobs_its_step_started_are_given_back_to_other_workers(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """Short jobs are started several per step; one that runs long does not hold up the others.

    The jobs started with it that it keeps waiting go back to their queue for any worker
    (here a second one), and the runs it follows are recorded at once, not after it.
    """
    log = tmp_path / "runs.log"
    tally = [prepare("tally", (str(log), f"q{n}", 0)) for n in range(70)]
    # The 44th job runs 4 s: wherever the first worker's steps of 8 begin, it is started with others.
    tally[43] = prepare("tally", (str(log), "long", 4))
    ids = enqueue_many(tally, redis)
    first = subprocess.Popen(worker_command("default"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "start long " in log.read_text(), 30, "the long job started")
        # The run before it is recorded within a second or so (by the worker's monitor), long before it ends.
        wait_for(lambda: redis.hget(CatalogJob.key_for(ids[42]), "status") == b"finished", 2.5, "the one before done")
        assert "end long " not in log.read_text()
        burst("default")  # a second worker: it finds the jobs given back
        lines = [line.split() for line in log.read_text().splitlines()]
        long_ended = [float(at) for kind, token, _, at in lines if (kind, token) == ("end", "long")]
        assert not long_ended, "the second worker finished the rest before the long job ended"
        assert sorted(token for kind, token, _, _ in lines if kind == "start") == sorted(
            [f"q{n}" for n in range(70) if n != 43] + ["long"]
        )  # each began once
        given_back = [i for i in ids[44:] if redis.hget(CatalogJob.key_for(i), "taskctl_runs") == b"2"]
        assert given_back, "some jobs behind the long one had been started with it, then given back"
        assert {redis.hget(CatalogJob.key_for(i), "status") for i in ids[44:]} == {b"finished"}
    finally:
        first.terminate()
        first.wait(timeout=15)
    assert redis.hget(CatalogJob.key_for(ids[43]), "status") == b"finished"


def test_the_batch_a_worker_claimed_ahead_while_a_long_job_began_goes_back_to_other_workers(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """The next step goes out as a batch's last jobs begin (Worker._look_ahead): a long one there holds nothing.

    With batches of 2 (TASKCTL_PREFETCH=2), every job past the first few begins with a
    step sent ahead: the long one's monitor reads that step's reply and gives its jobs
    back, so a second worker runs them, and everything else, before the long job ends.
    """
    log = tmp_path / "runs.log"
    tally = [prepare("tally", (str(log), f"q{n}", 0)) for n in range(40)]
    tally[20] = prepare("tally", (str(log), "long", 4))
    ids = enqueue_many(tally, redis)
    env = {**os.environ, "TASKCTL_PREFETCH": "2"}
    first = subprocess.Popen(worker_command("default"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: log.exists() and "start long " in log.read_text(), 30, "the long job started")
        wait_for(lambda: redis.hget(CatalogJob.key_for(ids[19]), "status") == b"finished", 2.5, "the one before done")
        subprocess.run(worker_command("--burst", "default"), cwd=ROOT, env=env, check=True, timeout=120,
                       capture_output=True)  # fmt: skip
        lines = [line.split() for line in log.read_text().splitlines()]
        assert ("end", "long") not in [(kind, token) for kind, token, _, _ in lines], "the rest ran before it ended"
        assert sorted(token for kind, token, _, _ in lines if kind == "start") == sorted(
            [f"q{n}" for n in range(40) if n != 20] + ["long"]
        )  # each began once
        given_back = [i for i in ids[21:] if redis.hget(CatalogJob.key_for(i), "taskctl_runs") == b"2"]
        assert len(given_back) >= 2, "the batch claimed ahead of the long job was given back"
    finally:
        first.terminate()
        first.wait(timeout=15)
    assert {redis.hget(CatalogJob.key_for(i), "status") for i in ids} == {b"finished"}


def test_short_jobs_begun_in_a_batch_log_one_line_each_and_a_long_one_among_them_its_start_while_it_runs(
    configured: str, redis: Redis, tmp_path: Path
) -> None:
    """Two lines per job, start and end, are a job run alone; a job of a batch of short ones logs one.

    Its start would come a millisecond before its end; one line, at the end, names the job,
    its id and "Job OK". One that turns out long among them has its start logged by the
    worker's monitor while it runs (within about half a second), then RQ's "Job OK" line.
    """
    log = tmp_path / "runs.log"
    calls = [prepare("tally", (str(log), f"q{n}", 0)) for n in range(60)]
    calls[40] = prepare("tally", (str(log), "long", 2))
    ids = enqueue_many(calls, redis)
    output = tmp_path / "worker.log"
    with output.open("w") as out:
        worker = subprocess.Popen(worker_command("default"), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "start long " in log.read_text() if log.exists() else False, 30, "the long job started")
        long_id = ids[40]
        wait_for(lambda: long_id in output.read_text(), 2.0, "the long job's start line, while it runs")
        assert "end long " not in log.read_text()
        assert f"({long_id}): Job OK" not in output.read_text()
        wait_for(lambda: all(redis.hget(CatalogJob.key_for(i), "status") == b"finished" for i in ids), 30, "all done")
        time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=15)
    lines = output.read_text().splitlines()
    per_job = {i: [line for line in lines if i in line] for i in ids}
    assert all(per_job.values()), "every job is logged"
    started_line, ended_line = per_job[long_id]  # its start while it ran, then RQ's end line
    assert "'long', 2)" in started_line and started_line.endswith(f"({long_id})")
    assert ended_line.endswith(f"Job OK ({long_id})")
    single = [i for i, found in per_job.items() if len(found) == 1]
    assert len(single) >= 40, "most of the short jobs were begun in batches"
    for job_id in single:
        assert f"'q{ids.index(job_id)}', 0) ({job_id}): Job OK" in per_job[job_id][0]
    assert all(len(found) == 2 and found[1].endswith(f"Job OK ({i})") for i, found in per_job.items()
               if i not in single)  # fmt: skip


def test_a_job_deleted_between_the_steps_script_and_the_read_of_its_hash_is_not_run_and_leaves_no_run(
    configured: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue("default", connection=redis)
    ids = [enqueue_call("add", (n, 1)).id for n in range(3)]
    registry, index = queue.started_job_registry.key, "rq:worker:test:executions"
    ask_hashes = hotpath._ask_hashes

    def deleted_first(link: Any, jobs: list[hotpath.Started]) -> None:
        """Another client deletes one job between the step's two round trips."""
        redis.delete(CatalogJob.key_for(ids[1]))
        ask_hashes(link, jobs)

    monkeypatch.setattr(hotpath, "_ask_hashes", deleted_first)
    outcomes, started = hotpath.send_step(
        redis, "rq:worker:test", index, [(queue.key, registry)], "test", ended=[], execution_ids=["r1", "r2", "r3"],
        started_at_text="2026-12-01T00:00:00.000000Z", started_at=time.time(), lease_seconds=15, set_busy=True,
        successes=0, working_seconds=0.0,
    ).collect()  # fmt: skip
    assert (outcomes, [s.job_id for s in started]) == ([], [ids[0], ids[2]])
    assert all(s.job_hash[b"status"] == b"started" for s in started)
    assert {m.decode() for m in redis.zrange(registry, 0, -1)} == {f"{ids[0]}:r1", f"{ids[2]}:r3"}
    assert {m.decode() for m in redis.smembers(index)} == {f"{ids[0]}:r1", f"{ids[2]}:r3"}
    assert not redis.exists(f"rq:execution:{ids[1]}:r2", f"rq:executions:{ids[1]}", CatalogJob.key_for(ids[1]))
    assert redis.llen(queue.key) == 0


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_step_loads_its_script_again_when_the_server_lost_it_and_reads_hashes_in_either_protocol(
    configured: str, redis: Redis, protocol: int
) -> None:
    queue = Queue("default", connection=redis)
    ids = [enqueue_call("add", (n, 1)).id for n in range(2)]
    registry, index = queue.started_job_registry.key, "rq:worker:test:executions"
    client = Redis.from_url(configured, protocol=protocol)
    redis.script_flush()  # as after a restart, or a failover to a replica that never saw it
    _, started = hotpath.send_step(
        client, "rq:worker:test", index, [(queue.key, registry)], "test", ended=[], execution_ids=["r1", "r2"],
        started_at_text="2026-12-01T00:00:00.000000Z", started_at=time.time(), lease_seconds=15, set_busy=True,
        successes=0, working_seconds=0.0,
    ).collect()  # fmt: skip
    assert [s.job_id for s in started] == ids
    assert [(s.job_hash[b"status"], s.job_hash[b"worker_name"], s.token) for s in started] == [
        (b"started", b"test", 1)
    ] * 2
    assert CatalogJob.fetch(ids[0], connection=redis).get_status() == "started"
