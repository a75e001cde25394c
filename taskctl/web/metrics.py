"""/metrics: the figures to alert on, in Prometheus's text format.

A collector reads Redis at scrape time, so every process (and every replica of
the web process) reports the same numbers, with no state of its own. Another
reads the outbox's database; that one going away is a figure
(``taskctl_outbox_up 0``), not a failed scrape, so that Redis's figures, and the
alert on the outbox itself, still arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis

from taskctl.exceptions import OutboxUnavailableError
from taskctl.limits import limit_stats, rate_stats
from taskctl.outbox_ops import opened, outbox_stats
from taskctl.settings import Settings
from taskctl.stats import queue_stats, scheduler_stats, workers

STATES = ("queued", "started", "finished", "failed", "deferred", "scheduled")


class TaskctlCollector(Collector):
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("taskctl_queue_jobs", "Jobs per queue and state.", labels=["queue", "state"])
        oldest = GaugeMetricFamily(
            "taskctl_queue_oldest_job_age_seconds",
            "How long the job at the head of the queue has waited (0: empty queue).",
            labels=["queue"],
        )
        for stats in queue_stats(self.connection, self.settings):
            for state in STATES:
                jobs.add_metric([stats.name, state], getattr(stats, state))
            oldest.add_metric([stats.name], stats.oldest_queued_age)
        yield jobs
        yield oldest
        alive = workers(self.connection)
        by_state = GaugeMetricFamily("taskctl_workers", "Live workers by state.", labels=["state"])
        for state in sorted({w.state for w in alive} | {"busy", "idle"}):
            by_state.add_metric([state], sum(1 for w in alive if w.state == state))
        yield by_state
        yield GaugeMetricFamily("taskctl_workers_alive", "Workers that have sent a heartbeat recently.", len(alive))
        scheduled = scheduler_stats(self.connection)
        yield GaugeMetricFamily("taskctl_scheduler_jobs", "Delayed and periodic jobs held by rq-scheduler.",
                                scheduled.waiting)  # fmt: skip
        yield GaugeMetricFamily(
            "taskctl_scheduler_overdue_jobs",
            "Jobs more than 60 s past their time and not enqueued: no scheduler process is running.",
            scheduled.overdue,
        )
        yield from _per_limit(
            (("taskctl_limit_running", "Jobs holding a concurrency limit's slot: queued or running."),
             ("taskctl_limit_waiting", "Jobs waiting for a slot of a concurrency limit."),
             ("taskctl_limit_oldest_wait_seconds",
              "How long the longest-waiting job of a concurrency limit has waited (0: none waits).")),
            [(limit.name, (limit.running, limit.waiting, limit.oldest_wait)) for limit in limit_stats(self.connection)],
        )  # fmt: skip
        yield from _per_limit(
            (("taskctl_rate_recent_starts", "Starts of a rate limit in its last period."),
             ("taskctl_rate_waiting", "Jobs set aside by a rate limit until they may start."),
             ("taskctl_rate_clears_in_seconds",
              "Seconds until the last job a rate limit set aside may start (0: none waits).")),
            [(rate.name, (rate.recent_starts, rate.waiting, rate.clears_in)) for rate in rate_stats(self.connection)],
        )  # fmt: skip


def _per_limit(
    gauges: Sequence[tuple[str, str]], limits: Iterable[tuple[str, Sequence[float]]]
) -> list[GaugeMetricFamily]:
    """One gauge family per (name, help), labelled by limit: each limit's values, in the gauges' order."""
    families = [GaugeMetricFamily(name, description, labels=["limit"]) for name, description in gauges]
    for limit, values in limits:
        for family, value in zip(families, values, strict=True):
            family.add_metric([limit], value)
    return families


class OutboxCollector(Collector):
    #: Seconds a scrape waits for the outbox's database: well within Prometheus's default 10 s scrape timeout.
    TIMEOUT = 2.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with opened(self.settings, timeout=self.TIMEOUT) as db:
                found = outbox_stats(db)
        except OutboxUnavailableError:
            yield GaugeMetricFamily("taskctl_outbox_up", "1 when the outbox's database answers, else 0.", 0)
            return
        yield GaugeMetricFamily("taskctl_outbox_up", "1 when the outbox's database answers, else 0.", 1)
        rows = GaugeMetricFamily(
            "taskctl_outbox_rows",
            "Outbox rows: waiting for the relay, or stuck (the relay gave up; an operator must retry or delete).",
            labels=["state"],
        )
        rows.add_metric(["waiting"], found.waiting)
        rows.add_metric(["stuck"], found.stuck)
        yield rows
        yield GaugeMetricFamily(
            "taskctl_outbox_oldest_row_age_seconds",
            "How long the oldest waiting outbox row has waited (0: none); growing means no relay runs.",
            found.oldest_age,
        )


def registry_for(connection: Redis, settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskctlCollector(connection, settings))
    registry.register(OutboxCollector(settings))
    return registry
