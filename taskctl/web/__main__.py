"""``python -m taskctl.web``: serve the dashboard on the configured address."""

from __future__ import annotations

import logging
import sys

from werkzeug.serving import run_simple

from taskctl.doctor import warn_if_unsafe
from taskctl.exceptions import TaskctlError
from taskctl.settings import get_settings
from taskctl.web.app import create_app
from taskctl.web.security import check_exposure


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s web %(levelname)s %(message)s")
    try:
        settings = get_settings()
        check_exposure(settings)
    except TaskctlError as exc:
        logging.error("%s", exc)
        return 1
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise
    app = create_app(settings)
    warn_if_unsafe(app.config["TASKCTL_REDIS"], logging.getLogger("taskctl.web"))
    url = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
    access = "read-only" if settings.dashboard_read_only else "read-write"
    auth = "with basic auth" if settings.dashboard_username else "no auth (loopback only)"
    logging.info("dashboard on %s (%s, %s; Redis %s)", url, access, auth, settings.redis_url_masked)
    run_simple(settings.dashboard_host, settings.dashboard_port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
