"""A busy worker's one script per job (taskctl.hotpath): what it costs Redis, and what tools read of it.

The cost is counted by Redis itself (INFO commandstats, whose counts include the
commands a script runs), with real `rq worker` processes; what a job leaves is
compared with what RQ's own success path leaves (the forking worker's).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import rq
from redis import Redis

from taskctl.enqueue import enqueue_call, enqueue_many, prepare
from taskctl.rqclasses import CatalogJob, Queue
from tests.conftest import FORKING, ROOT, worker_command
from tests.effects import wait_for


def commands(redis: Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in redis.info("commandstats").items()}


def burst(*queues: str, worker_class: str = "taskctl.worker.Worker") -> None:
    subprocess.run(worker_command("--burst", *queues, worker_class=worker_class), cwd=ROOT, check=True, timeout=120,
                   capture_output=True)  # fmt: skip


def test_a_busy_worker_spends_one_script_and_14_commands_on_each_job_that_keeps_no_result(
    configured: str, redis: Redis
) -> None:
    jobs = 1000
    enqueue_many([prepare("add_quietly", (2, 3)) for _ in range(jobs)], redis)
    before = commands(redis)
    burst("default")  # each empty queue before it in priority order would cost one LPOP per job more
    after = commands(redis)
    spent = {name: after[name] - before.get(name, 0) for name in after}
    # One script per job, plus the few the worker and its scheduler send to start, to find nothing and to stop.
    assert jobs <= spent["evalsha"] <= jobs + 30
    # Start-up, maintenance and teardown are a few hundred commands in all, whatever the count of jobs.
    assert sum(spent.values()) - 200 <= 14 * jobs, sorted(spent.items(), key=lambda item: -item[1])
    assert not redis.keys("rq:job:*") and not redis.keys("rq:results:*") and not redis.keys("rq:execution*")
    assert redis.zcard("rq:finished:default") == redis.zcard("rq:wip:default") == 0


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
