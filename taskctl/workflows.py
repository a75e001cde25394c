"""Chains, groups and chords, as Celery users know them, built on RQ's dependencies and groups.

- ``chain(a, b, c)``: b starts when a has finished, c when b has. A step that
  fails for good stops the chain: the worker cancels the steps after it, with the
  reason in their meta (``taskctl status`` shows it), instead of leaving them
  deferred forever as RQ would.
- ``group(a, b, c)``: run in parallel (an RQ Group); results collected in order.
- ``chord([a, b, c], callback)``: a group, then ``callback(results, ...)`` once all
  have finished; RQ's multi-job dependency holds the callback back, and the
  worker hands it the group's results, in order, as its first argument.

Steps are immutable calls (Celery's ``.si()``): each gets the arguments given
here, never the previous result, so every call is checked against its job's
signature before anything is enqueued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis import Redis
from rq.group import Group

from taskctl.connection import REDIS_DOWN_ERRORS, connect, unavailable
from taskctl.enqueue import JobRef, Prepared, prepare, rq_data, submit, with_id
from taskctl.exceptions import InvalidArgumentsError, JobFailedError
from taskctl.handle import JobHandle
from taskctl.rqclasses import CHORD_SOURCES, CatalogJob, Queue
from taskctl.settings import Settings, get_settings


@dataclass(frozen=True)
class Call:
    """One step: a job, its arguments, and optionally its queue."""

    job: JobRef
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None

    def prepare(self, settings: Settings) -> Prepared:
        return prepare(self.job, self.args, self.kwargs, queue=self.queue, settings=settings)


def call(job: JobRef, *args: Any, **kwargs: Any) -> Call:
    """``call("send_email", to, subject, body)``: a step for chain, group or chord."""
    return Call(job, args, kwargs)


class ChainHandle:
    def __init__(self, steps: list[JobHandle]) -> None:
        self.steps = steps

    @property
    def status(self) -> str:
        """finished when every step is; failed (or canceled) as soon as one is; else the running step's state."""
        statuses = [step.status for step in self.steps]
        for final in ("failed", "canceled", "stopped"):
            if final in statuses:
                return final
        return "finished" if all(s == "finished" for s in statuses) else next(s for s in statuses if s != "finished")

    def result(self, timeout: float | None = None) -> Any:
        """The last step's return value; JobFailedError naming the step that stopped the chain."""
        if timeout is not None:
            _wait_until_settled(self.steps, timeout)
        for number, step in enumerate(self.steps, 1):
            if step.status == "failed":
                raise JobFailedError(
                    f"chain stopped at step {number}, {step.job.description}: {_error(step)}; the steps after it "
                    "were canceled"
                )
        return self.steps[-1].result()


class GroupHandle:
    def __init__(self, name: str, members: list[JobHandle]) -> None:
        self.name = name
        self.members = members

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's return value, in the order given; JobFailedError if one failed."""
        if timeout is not None:
            _wait_until_settled(self.members, timeout)
        return [member.result() for member in self.members]


class ChordHandle:
    def __init__(self, group: GroupHandle, callback: JobHandle) -> None:
        self.group = group
        self.callback = callback

    def result(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            _wait_until_settled([*self.group.members, self.callback], timeout)
        failed = [m for m in self.group.members if m.status == "failed"]
        if failed:
            raise JobFailedError(f"chord callback not run: {failed[0].job.description} failed: {_error(failed[0])}")
        return self.callback.result()


def chain(*steps: Call, connection: Redis | None = None, settings: Settings | None = None) -> ChainHandle:
    """Enqueue steps that run one after the other."""
    if not steps:
        raise InvalidArgumentsError("a chain needs at least one step")
    settings = settings or get_settings()
    prepared = [step.prepare(settings) for step in steps]
    connection = connection or connect(settings)
    handles: list[JobHandle] = []
    try:
        for step in prepared:
            handles.append(submit(step, connection, settings, depends_on=[handles[-1].id] if handles else None))
    except Exception:
        _undo(handles, connection)
        raise
    return ChainHandle(handles)


def group(*members: Call, connection: Redis | None = None, settings: Settings | None = None) -> GroupHandle:
    """Enqueue calls that run in parallel, as one RQ Group."""
    if not members:
        raise InvalidArgumentsError("a group needs at least one call")
    settings = settings or get_settings()
    prepared = [with_id(member.prepare(settings)) for member in members]
    connection = connection or connect(settings)
    rq_group = Group.create(connection=connection)
    jobs: dict[str, CatalogJob] = {}
    try:
        for name in dict.fromkeys(p.queue for p in prepared):
            datas = [rq_data(p, settings) for p in prepared if p.queue == name]
            jobs.update((job.id, job) for job in rq_group.enqueue_many(Queue(name, connection=connection), datas))
    except REDIS_DOWN_ERRORS as exc:
        _undo([JobHandle(job) for job in jobs.values()], connection)
        raise unavailable(settings.redis_url, exc) from None
    return GroupHandle(rq_group.name, [JobHandle(jobs[str(p.job_id)]) for p in prepared])


def chord(
    members: Sequence[Call], callback: Call, connection: Redis | None = None, settings: Settings | None = None
) -> ChordHandle:
    """Enqueue a group, then ``callback(results, *args, **kwargs)`` once every member has finished.

    The callback is checked first; ``group`` checks every member before it enqueues any.
    """
    settings = settings or get_settings()
    # The callback's first parameter receives the results: check the rest of the call with a stand-in.
    checked = prepare(callback.job, [[], *callback.args], callback.kwargs, queue=callback.queue, settings=settings)
    handle = group(*members, connection=connection, settings=settings)
    connection = connection or connect(settings)
    ids = [m.id for m in handle.members]
    final = replace(checked, args=list(callback.args), meta={CHORD_SOURCES: ids})
    try:
        callback_handle = submit(final, connection, settings, depends_on=ids)
    except Exception:
        _undo(handle.members, connection)
        raise
    return ChordHandle(handle, callback_handle)


def _undo(handles: Sequence[JobHandle], connection: Redis) -> None:
    """Remove the jobs of a workflow that could not be enqueued whole: no half-chain is left to run."""
    for handle in handles:
        try:
            handle.job.cancel()
            handle.job.delete()
        except Exception:  # Redis may be the reason we are here: nothing more can be done
            pass


def _error(handle: JobHandle) -> str:
    from taskctl.status import report

    return report(handle.job).error or handle.status


def _wait_until_settled(handles: Sequence[JobHandle], timeout: float) -> None:
    """Wait until every job is final, or one has failed (what follows it will be canceled)."""
    import time

    from taskctl.exceptions import WaitTimeoutError
    from taskctl.status import FINAL_STATES

    deadline = time.monotonic() + timeout
    while True:
        statuses = [h.job.get_status(refresh=True) for h in handles]
        if all(s in FINAL_STATES for s in statuses) or "failed" in statuses:
            return
        if time.monotonic() >= deadline:
            pending = [h.id for h, s in zip(handles, statuses, strict=True) if s not in FINAL_STATES]
            raise WaitTimeoutError(f"still running after {timeout:g}s: {', '.join(pending)}")
        time.sleep(0.1)
