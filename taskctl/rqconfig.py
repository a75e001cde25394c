"""The settings module for the stock ``rq`` command: ``rq worker -c taskctl.rqconfig``.

RQ reads upper-case names from here; they come from taskctl's Settings, so the
worker talks to the same Redis and listens on the same queues, in the same
priority order, as the CLI enqueues to.
"""

from __future__ import annotations

from taskctl.settings import get_settings

_settings = get_settings()

REDIS_URL = _settings.redis_url
QUEUES = list(_settings.queues)
