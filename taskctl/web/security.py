"""What makes the dashboard safe to expose: who may see it, and which requests may change state.

Stock rq-dashboard has no authentication by default, its destructive actions are
plain POSTs (requeue-all even accepts GET) with no CSRF protection, and it binds
to every interface. Here: loopback unless credentials are set; with credentials,
every request but /healthz needs them; state changes only by POST from the
dashboard's own pages (Origin or Referer checked), never by GET; and a read-only
mode refuses them all.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import Request, Response

from taskctl.exceptions import SettingsError
from taskctl.settings import Settings

#: rq-dashboard's endpoints that change or delete jobs.
DESTRUCTIVE_ENDPOINTS = frozenset(
    {
        "rq_dashboard.delete_job_view",
        "rq_dashboard.requeue_job_view",
        "rq_dashboard.requeue_all",
        "rq_dashboard.empty_queue",
        "rq_dashboard.compact_queue",
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Answered without credentials: load balancers and orchestrators probe it.
PUBLIC_ENDPOINTS = frozenset({"taskctl_web.healthz"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without credentials: a dashboard can delete every job."""
    if is_loopback(settings.dashboard_host):
        return
    if not (settings.dashboard_username and settings.dashboard_password):
        raise SettingsError(
            f"refusing to serve the dashboard on {settings.dashboard_host}: beyond loopback it needs credentials; "
            "set TASKCTL_DASHBOARD_USERNAME and TASKCTL_DASHBOARD_PASSWORD (in the environment or .env), "
            "or bind to 127.0.0.1"
        )


def _authorized(request: Request, settings: Settings) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), settings.dashboard_username.encode())
    password_ok = hmac.compare_digest((auth.password or "").encode(), settings.dashboard_password.encode())
    return user_ok and password_ok


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_origin(request: Request) -> bool:
    own = _origin(request.host_url)
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return _origin(origin) == own
    referer = request.headers.get("Referer")
    return referer is not None and _origin(referer) == own


def refusal(request: Request, settings: Settings) -> Response | None:
    """The response that refuses this request, or None when it may go on."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if settings.dashboard_username and not _authorized(request, settings):
        return Response(
            "authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="taskctl dashboard", charset="UTF-8"'}
        )
    changes_state = request.endpoint in DESTRUCTIVE_ENDPOINTS or request.method not in SAFE_METHODS
    if not changes_state:
        return None
    if settings.dashboard_read_only:
        return Response("the dashboard is read-only (TASKCTL_DASHBOARD_READ_ONLY)\n", 403)
    if request.method in SAFE_METHODS:
        return Response(f"{request.method} cannot change state; use POST from the dashboard\n", 403)
    if not _same_origin(request):
        return Response("cross-site request refused: it did not come from the dashboard's own pages\n", 403)
    return None
