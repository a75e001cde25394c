"""The settings module for the stock ``rq`` command: ``rq worker -c taskctl.rqconfig``.

RQ reads upper-case names from here; they come from taskctl's Settings, so the
worker talks to the same Redis and listens on the same queues, in the same
priority order, as the CLI enqueues to.
"""

from __future__ import annotations

from taskctl.settings import get_settings

_settings = get_settings()
_sentinel = _settings.sentinel

QUEUES = list(_settings.queues)
if _sentinel is None:
    REDIS_URL = _settings.redis_url
else:  # RQ reads Sentinel from a dictionary, not from a URL
    SENTINEL = {
        "INSTANCES": list(_sentinel.instances),
        "MASTER_NAME": _sentinel.master,
        "DB": _sentinel.db,
        "USERNAME": _sentinel.username,
        "PASSWORD": _sentinel.password,
        "SSL": _sentinel.ssl,
        "SOCKET_TIMEOUT": 30,
        "SENTINEL_KWARGS": {"password": _settings.sentinel_password or None},
    }
