"""Checks of the Redis that taskctl runs on, and of the workers on it, for what its guarantees assume.

A Redis with an eviction policy drops job hashes and queue entries without an
error when memory runs out; one without persistence loses every queued job when
it restarts. Workers, the scheduler and the web process warn about both when
they start; ``taskctl doctor`` reports them with the Redis version, and names
every worker on that Redis that is not taskctl's (``taskctl.foreign``). For
the outbox, it says whether rows move: a row that has waited long means no relay
runs, and a stuck row is a call that will never run until someone decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ResponseError

from taskctl.exceptions import OutboxUnavailableError
from taskctl.foreign import HOW_TO_START_ONE, WHAT_IT_DOES_WRONG, foreign_workers
from taskctl.outbox_ops import opened, outbox_stats
from taskctl.settings import Settings


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warning", "unknown" or "error"
    subject: str
    message: str


def check_redis(connection: Redis) -> list[Finding]:
    version = str(connection.info("server").get("redis_version", "?"))
    findings = [
        Finding("ok" if _at_least(version, (6, 2)) else "warning", "redis version",
                version if _at_least(version, (6, 2)) else f"{version}: taskctl needs 6.2 or newer (LMOVE)")
    ]  # fmt: skip
    try:
        config = {**connection.config_get("maxmemory-policy"), **connection.config_get("appendonly")}
    except ResponseError as exc:
        return [
            *findings,
            Finding(
                "unknown",
                "maxmemory-policy",
                f"could not check ({exc}; CONFIG is disabled, a managed Redis?): "
                "make sure it is noeviction, or full memory silently drops jobs",
            ),
            Finding("unknown", "persistence", "could not check: make sure the append-only file is on"),
        ]
    policy = config.get("maxmemory-policy", "?")
    findings.append(
        Finding("ok", "maxmemory-policy", policy)
        if policy == "noeviction"
        else Finding(
            "warning",
            "maxmemory-policy",
            f"{policy}: when memory is full Redis silently drops jobs and "
            "queue entries; set maxmemory-policy noeviction (see deploy/redis.conf)",
        )
    )
    aof = config.get("appendonly", "?")
    findings.append(
        Finding("ok", "persistence", "append-only file on")
        if aof == "yes"
        else Finding(
            "warning",
            "persistence",
            "append-only file off: a Redis restart loses every queued job; "
            "set appendonly yes and appendfsync everysec (see deploy/redis.conf)",
        )
    )
    return findings


def check_workers(connection: Redis) -> list[Finding]:
    """An error for each live worker that is not taskctl's; one "ok" line when there is none."""
    foreign = foreign_workers(connection)
    if not foreign:
        return [Finding("ok", "workers", "every live worker is taskctl's")]
    return [
        Finding("error", f"worker {w.name}", f"{w.describe()}: {WHAT_IT_DOES_WRONG}; {HOW_TO_START_ONE}")
        for w in foreign
    ]


def check_outbox(settings: Settings) -> list[Finding]:
    """Rows move and none is stuck; "not in use" (ok) when no row was ever written, an error when it cannot be asked.

    Age is the alarm, not the count: a busy shop has rows waiting all the time,
    but with a relay running none waits for more than a moment.
    """
    try:
        with opened(settings) as db:
            found = outbox_stats(db)
    except OutboxUnavailableError as exc:
        return [Finding("error", "outbox", str(exc))]
    if not found.has_table:
        return [Finding("ok", "outbox", "not in use (no outbox table)")]
    waiting = f"{found.waiting} waiting, oldest {found.oldest_age:.0f}s"
    findings = [
        Finding("ok", "outbox", waiting)
        if found.oldest_age <= settings.outbox_max_age
        else Finding(
            "error",
            "outbox",
            f"{waiting}, more than TASKCTL_OUTBOX_MAX_AGE ({settings.outbox_max_age:g}s): "
            "is the relay running? Start it with `python -m taskctl.relay`",
        )
    ]
    if found.stuck:
        findings.append(
            Finding(
                "error",
                "outbox stuck rows",
                f"{found.stuck} row(s) the relay cannot make jobs; see why with `taskctl outbox`, "
                "then `taskctl outbox retry` or `taskctl outbox delete` them",
            )
        )
    return findings


def warn_if_unsafe(connection: Redis, log: logging.Logger) -> None:
    """Log a prominent warning for each setting that puts jobs at risk (called when a process starts)."""
    try:
        findings = check_redis(connection)
    except Exception as exc:  # a check must never stop a worker from starting
        log.warning("could not check the Redis settings: %s", exc)
        return
    for finding in findings:
        if finding.level != "ok":
            log.warning("*** Redis %s: %s", finding.subject, finding.message)


def _at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum
