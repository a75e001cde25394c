"""Builds the dashboard's Flask app from taskctl's settings."""

from __future__ import annotations

import rq_dashboard
import rq_dashboard.web
from flask import Flask
from rq.serializers import JSONSerializer

from taskctl.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("taskctl.web")
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    # Jobs are JSON; the dashboard's default (pickle) could not read them, and would
    # run whatever a planted pickle says.
    rq_dashboard.web.config.serializer = JSONSerializer
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="")
    rq_dashboard.web.setup_rq_connection(app)
    return app
