"""The one way taskctl opens Redis: from the settings, with bounded waits.

A command must fail within seconds, naming the URL it tried, when Redis is down;
redis-py's defaults would wait for the OS's TCP timeout instead.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

from taskctl.exceptions import RedisUnavailableError
from taskctl.settings import Settings, get_settings, mask_url, parse_sentinel_url

#: What redis-py raises when the server is away; callers catch these.
REDIS_DOWN_ERRORS = (RedisConnectionError, RedisTimeoutError, MasterNotFoundError, ConnectionError, OSError)
#: What the first command of a connection nobody PINGed raises when no Redis answers (see
#: one_command_client): those, a wrong password (a ConnectionError), or something that is not Redis.
NO_REDIS_ERRORS = (*REDIS_DOWN_ERRORS, InvalidResponse)

#: How redis-py is told not to name itself (CLIENT SETINFO): ``driver_info`` from redis-py 8 on
#: (where ``lib_name`` is deprecated), ``lib_name`` and ``lib_version`` before.
_ANONYMOUS: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)
#: Options of a connection that opens with nothing but the command it was opened for (see one_command_client).
ONE_COMMAND_OPTIONS: dict[str, Any] = {
    # RESP2, every Redis's own default, needs no HELLO; redis-py 8's default, RESP3, costs HELLO
    # and then CLIENT MAINT_NOTIFICATIONS (which only RESP3 carries): two round trips.
    "protocol": 2,
    # A new connection is checked by its first command; redis-py would PING before it.
    "health_check_interval": 0,
    **_ANONYMOUS,
}


def redis_from_url(
    url: str, connect_timeout: float = 3.0, sentinel_password: str = "", one_command: bool = False
) -> Redis:
    """A client for a redis://, rediss://, unix:// or redis+sentinel:// URL.

    Through Sentinel the client asks the sentinels for the current master on every
    new connection, so after a failover it finds the new master by itself. For
    ``one_command``, see :func:`one_command_client`.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        # Replies come in milliseconds; 30 s only bounds a server that accepted and hung.
        "socket_timeout": 30,
        "health_check_interval": 30,
    }
    if one_command:
        options.update(ONE_COMMAND_OPTIONS)
    target = parse_sentinel_url(url)
    if target is None:
        return Redis.from_url(url, **options)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
        list(target.instances),
        sentinel_kwargs={"password": sentinel_password or None, "socket_timeout": connect_timeout},
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **options,
    )
    master: Redis = sentinel.master_for(target.master)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
    return master


def get_redis(settings: Settings | None = None) -> Redis:
    settings = settings or get_settings()
    return redis_from_url(settings.redis_url, settings.redis_connect_timeout, settings.sentinel_password)


def one_command_client(settings: Settings | None = None) -> Redis:
    """A client for a process that opens Redis for one command and exits, as `taskctl enqueue` does.

    With redis-py 8's defaults a new connection costs five round trips before its
    first command (PING, HELLO 3, CLIENT MAINT_NOTIFICATIONS, two CLIENT SETINFO),
    and :func:`connect` adds a PING: worth it for a process that lives and reuses
    its connections, not for one that sends a single transaction. Here the
    connection's first write is that command (AUTH and SELECT still come first
    when the URL has a password or a database other than 0). Nothing checks the
    server beforehand: the command's own error says it is away, and callers turn
    it into RedisUnavailableError as they do when :func:`connect`'s PING fails.
    A library name in CLIENT LIST is of no use for a process that lives a second.
    """
    settings = settings or get_settings()
    return redis_from_url(
        settings.redis_url, settings.redis_connect_timeout, settings.sentinel_password, one_command=True
    )


_answered: dict[tuple[str, float], Redis] = {}


def connect(settings: Settings | None = None) -> Redis:
    """The process's client for the configured Redis, or RedisUnavailableError naming the URL.

    The first call checks the server with a PING; later calls reuse the client and
    its connection pool (a web app enqueues on every request), and a Redis that goes
    away later fails the command itself, which callers turn into the same error.
    """
    settings = settings or get_settings()
    key = (settings.redis_url, settings.redis_connect_timeout)
    if key in _answered:
        return _answered[key]
    client = get_redis(settings)
    try:
        client.ping()
    except (*REDIS_DOWN_ERRORS, RedisError) as exc:
        # RedisError too: a wrong password, or something that is not Redis on that port.
        raise unavailable(settings.redis_url, exc) from None
    _answered[key] = client
    return client


def unavailable(url: str, exc: BaseException) -> RedisUnavailableError:
    return RedisUnavailableError(f"cannot reach Redis at {mask_url(url)}: {exc}")


def wait_until_answers(
    client: Redis, log: logging.Logger, url: str, stopping: Callable[[], bool] = lambda: False
) -> bool:
    """Block until Redis answers a PING again, retrying with backoff (0.5 s doubling to 5 s); True then.

    For long-running processes (workers, the scheduler): they outlive an outage
    instead of exiting, and carry on once Redis (or a new Sentinel master) is back.
    False as soon as ``stopping()`` says the process was asked to stop meanwhile:
    one waiting for Redis must still stop when its process manager says so.
    """
    delay = 0.5
    while True:
        try:
            client.ping()
        except REDIS_DOWN_ERRORS as exc:
            log.error("cannot reach Redis at %s: %s; retrying in %gs", mask_url(url), exc, delay)
            retry_at = time.monotonic() + delay
            while time.monotonic() < retry_at:
                if stopping():
                    return False
                time.sleep(0.1)
            delay = min(delay * 2, 5)  # back at work within 5 s of the outage's end
        else:
            log.info("Redis at %s answers again", mask_url(url))
            return True


_scripts: dict[str, Script] = {}


def lua(connection: Redis, source: str) -> Script:
    """A Lua script, registered once per process: redis-py loads it on a server that lacks it (after a restart)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = connection.register_script(source)
    return script
