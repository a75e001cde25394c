"""``python -m taskctl.web``: serve the dashboard on the configured address."""

from __future__ import annotations

import logging
import sys

from werkzeug.serving import run_simple

from taskctl.settings import get_settings
from taskctl.web.app import create_app


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s web %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise
    app = create_app(settings)
    url = f"http://{settings.dashboard_host}:{settings.dashboard_port}"
    logging.info("dashboard on %s (Redis %s)", url, settings.redis_url_masked)
    run_simple(settings.dashboard_host, settings.dashboard_port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
