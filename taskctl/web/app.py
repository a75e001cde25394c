"""The dashboard's Flask app: rq-dashboard's pages, made safe to expose, plus what operators need.

rq-dashboard's own pages are served under their usual paths, from its own
templates with every value inserted as text (``stock_templates`` says why).
Added: auth, CSRF and read-only guards (``security``), a Schedules page for
rq-scheduler's jobs, a Failures page (by job and cause, with filtered
requeue and delete), a Limits page, an Outbox page, ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import rq
import rq_dashboard
import rq_dashboard.web
from flask import Blueprint, Flask, Response, current_app, render_template, request, url_for
from jinja2 import ChoiceLoader, FileSystemLoader, PrefixLoader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from rq.job import requeue_job
from rq.serializers import JSONSerializer

from taskctl.connection import REDIS_DOWN_ERRORS, get_redis
from taskctl.foreign import taskctl_worker_names
from taskctl.rqclasses import CatalogJob
from taskctl.settings import Settings, get_settings, mask_url
from taskctl.web.metrics import registry_for
from taskctl.web.security import refusal
from taskctl.web.stock_templates import StockTemplates
from taskctl.when import show_time

TEMPLATES = Path(__file__).parent / "templates"

pages = Blueprint("taskctl_web", __name__)


class _JobId(str):
    def decode(self, *args: Any) -> str:
        return str(self)


class _DashboardJob(CatalogJob):
    """How rq-dashboard reads jobs: JSON only, and dependency ids it can read.

    Its job page calls ``.decode()`` on each dependency id, which rq 3 gives as
    ``str``: the page of every job with dependencies (a chain's later steps)
    answered 500. The ids stay strings for everything else.
    """

    @property
    def dependency_ids(self) -> list[str]:
        return [_JobId(job_id) for job_id in super().dependency_ids]


class _JsonWorker(rq.Worker):
    """How rq-dashboard reads workers: a busy one's current job as a CatalogJob."""

    job_class = CatalogJob


def _json_only() -> None:
    """Make every job rq-dashboard reads JSON, never pickle.

    Its views fetch jobs with rq's default serializer in places (delete, requeue,
    a busy worker's current job on the Workers page), which would unpickle a
    job's data or meta: code execution for whoever can write to Redis. Its
    module-level names are the only seam it offers.
    """
    rq_dashboard.web.config.serializer = JSONSerializer
    rq_dashboard.web.Job = _DashboardJob
    rq_dashboard.web.Worker = _JsonWorker

    def requeue_json(job_id: str, connection: Redis) -> Any:
        return requeue_job(job_id, connection=connection, serializer=JSONSerializer)

    rq_dashboard.web.requeue_job = requeue_json


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    _json_only()
    # rq-dashboard's pages ask for the app's /static (and mount theirs there too): serve its files.
    app = Flask("taskctl.web", static_folder=str(Path(rq_dashboard.__file__).parent / "static"))
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url  # it reads redis+sentinel:// URLs too
    app.config["RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD"] = settings.sentinel_password or None
    app.config["TASKCTL_SETTINGS"] = settings
    app.config["TASKCTL_REDIS"] = get_redis(settings)
    # Our templates first (a navbar with a Schedules link), then rq-dashboard's own, rewritten,
    # ahead of its blueprint's loader that would serve them as they are; also reachable as
    # "stock/..." so ours can wrap them instead of copying them.
    stock = StockTemplates()
    app.jinja_loader = ChoiceLoader([FileSystemLoader(TEMPLATES), stock, PrefixLoader({"stock": stock})])
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="")
    app.register_blueprint(pages)
    rq_dashboard.web.setup_rq_connection(app)

    @app.before_request
    def guard() -> Response | None:
        return refusal(request, settings)

    @app.after_request
    def mark_foreign_workers(response: Response) -> Response:
        if request.endpoint == "rq_dashboard.list_workers" and response.is_json:
            data = response.get_json()
            _mark_foreign(data.get("workers", []))
            response.set_data(json.dumps(data))
        return response

    return app


#: Shown after the name of a worker that is not taskctl's, on the Workers page.
FOREIGN_MARK = "NOT A TASKCTL WORKER: it fails taskctl's jobs; see taskctl doctor"


def _mark_foreign(workers: list[dict[str, Any]]) -> None:
    ours = taskctl_worker_names(_redis(), [str(w.get("name")) for w in workers])
    for worker in workers:
        if worker.get("name") not in ours:
            worker["name"] = f"{worker.get('name')} ({FOREIGN_MARK})"


def _settings() -> Settings:
    settings: Settings = current_app.config["TASKCTL_SETTINGS"]
    return settings


def _redis() -> Redis:
    connection: Redis = current_app.config["TASKCTL_REDIS"]
    return connection


@pages.route("/healthz")
def healthz() -> Response:
    try:
        _redis().ping()
    except REDIS_DOWN_ERRORS as exc:
        return Response(f"redis unavailable at {_settings().redis_url_masked}: {exc}\n", 503, mimetype="text/plain")
    return Response("ok\n", 200, mimetype="text/plain")


@pages.route("/metrics")
def metrics() -> Response:
    try:
        body = generate_latest(registry_for(_redis(), _settings()))
    except REDIS_DOWN_ERRORS as exc:
        return Response(f"redis unavailable at {_settings().redis_url_masked}: {exc}\n", 503, mimetype="text/plain")
    return Response(body, 200, mimetype=CONTENT_TYPE_LATEST)


@pages.route("/schedules", defaults={"instance_number": 0})
@pages.route("/<int:instance_number>/view/schedules")
def schedules(instance_number: int) -> Response:
    from taskctl.rqscheduler import make_scheduler
    from taskctl.schedules import scheduled_runs

    settings = _settings()
    runs = scheduled_runs(make_scheduler(settings, _redis()))
    zone = settings.tz
    return _page(
        "taskctl/schedules.html",
        "schedules",
        instance_number,
        periodic=[(run, show_time(run.next_run, zone)) for run in runs if run.name],
        delayed=[(run, show_time(run.next_run, zone)) for run in runs if not run.name],
        timezone=settings.timezone,
        now=show_time(datetime.now(UTC), zone),
    )


@pages.route("/limits", defaults={"instance_number": 0})
@pages.route("/<int:instance_number>/view/limits")
def limits(instance_number: int) -> Response:
    """Each concurrency limit (slots in use, jobs waiting, for how long) and rate limit (starts, jobs set aside)."""
    from taskctl.limits import limit_stats, rate_stats

    settings = _settings()
    return _page(
        "taskctl/limits.html",
        "limits",
        instance_number,
        limits=limit_stats(_redis()),
        rates=rate_stats(_redis()),
        now=show_time(datetime.now(UTC), settings.tz),
        timezone=settings.timezone,
    )


#: Latest failures the Failures page lists under its summary; `taskctl failed --limit N` shows more.
FAILURES_PAGE_ROWS = 50
#: The Failures page's filters: the options of `taskctl failed`, by the same names.
FAILURE_FILTERS = ("job", "queue", "cause", "since", "until")


@pages.route("/failures", defaults={"instance_number": 0})
@pages.route("/<int:instance_number>/view/failures")
def failures(instance_number: int) -> Response:
    """Failed jobs by job and cause, filtered as `taskctl failed` filters them, with requeue and delete."""
    return _failures_page(instance_number, _filters(request.args))


@pages.route("/failures/<action>", methods=["POST"], defaults={"instance_number": 0})
@pages.route("/<int:instance_number>/failures/<action>", methods=["POST"])
def act_on_failures(instance_number: int, action: str) -> Response:
    """Requeue or delete what the page showed: its filters, up to the moment it was shown (``pinned``).

    Unpaced: a web request is no place for a requeue that takes minutes; the page gives
    the `taskctl failed requeue ... --rate` command for that. Refused unless it is a
    POST from the dashboard's own pages (``security``).
    """
    from taskctl.exceptions import TaskctlError
    from taskctl.failed_actions import delete_failed, requeue_failed

    if action not in ("requeue", "delete"):
        return Response(f"no such action {action!r}; expected requeue or delete\n", 404, mimetype="text/plain")
    filters = _filters(request.form)
    chosen: dict[str, Any] = {**filters, "until": filters["until"] or request.form.get("pinned") or None}
    act = requeue_failed if action == "requeue" else delete_failed
    try:
        outcome = act(connection=_redis(), settings=_settings(), **chosen)
    except TaskctlError as exc:
        return _failures_page(instance_number, filters, problem=str(exc))
    left = f"; {len(outcome.left)} were no longer failed and were left alone" if outcome.left else ""
    notice = f"{'Requeued' if action == 'requeue' else 'Deleted'} {len(outcome.done)} job(s){left}."
    return _failures_page(instance_number, filters, notice=notice, strict=False)


def _filters(values: Any) -> dict[str, str | None]:
    return {name: (values.get(name) or "").strip() or None for name in FAILURE_FILTERS}


def _failures_page(
    instance_number: int,
    filters: dict[str, str | None],
    notice: str | None = None,
    problem: str | None = None,
    strict: bool = True,
) -> Response:
    import shlex

    from taskctl.exceptions import TaskctlError
    from taskctl.failures import Listing, list_failed

    settings = _settings()
    zone = settings.tz
    now = datetime.now(UTC)
    found = Listing(0, 0, [], [])
    try:
        found = list_failed(**filters, limit=FAILURES_PAGE_ROWS, connection=_redis(), settings=settings, strict=strict)
    except TaskctlError as exc:
        problem = problem or str(exc)
    given = {name: value for name, value in filters.items() if value is not None}
    page = url_for("taskctl_web.failures", instance_number=instance_number)
    causes = [
        (cause, show_time(cause.first_failed, zone), show_time(cause.last_failed, zone),
         f"{page}?{urlencode({**given, 'job': cause.job, 'cause': cause.cause})}")
        for cause in found.causes
    ]  # fmt: skip
    options = " ".join(f"--{name} {shlex.quote(value)}" for name, value in given.items() if name != "until")
    command = f"taskctl failed requeue {options} --until {filters['until'] or now.isoformat()} --rate 50/s"
    return _page(
        "taskctl/failures.html",
        "failures",
        instance_number,
        400 if problem else 200,
        filters=filters,
        queues=settings.queues,
        pinned=now.isoformat(),
        found=found,
        causes=causes,
        latest=[(failed, show_time(failed.failed_at, zone)) for failed in found.latest],
        notice=notice,
        problem=problem,
        read_only=settings.dashboard_read_only,
        command=" ".join(command.split()),
        timezone=settings.timezone,
        now=show_time(now, zone),
    )


#: Stuck rows the Outbox page lists; `taskctl outbox --limit N` shows more.
OUTBOX_PAGE_ROWS = 100


@pages.route("/outbox", defaults={"instance_number": 0})
@pages.route("/<int:instance_number>/view/outbox")
def outbox(instance_number: int) -> Response:
    """Read-only: retry and delete stay with the CLI, where the operator names rows and sees the count."""
    from taskctl.exceptions import OutboxUnavailableError
    from taskctl.outbox_ops import OutboxRow, OutboxStats, opened, outbox_stats, stuck_rows

    settings = _settings()
    zone = settings.tz

    def when(stamp: float | None) -> str:
        return show_time(datetime.fromtimestamp(stamp, UTC) if stamp is not None else None, zone)

    found: OutboxStats | None = None
    stuck: list[OutboxRow] = []
    problem: str | None = None
    try:
        with opened(settings, timeout=2.0) as db:
            found = outbox_stats(db)
            stuck = stuck_rows(db, OUTBOX_PAGE_ROWS) if found.stuck else []
    except OutboxUnavailableError as exc:
        found, stuck, problem = None, [], str(exc)
    return _page(
        "taskctl/outbox.html",
        "outbox",
        instance_number,
        database=mask_url(settings.outbox_database),
        problem=problem,
        stats=found,
        oldest=f"{found.oldest_age:.0f}s" if found else "-",
        max_age=f"{settings.outbox_max_age:g}s",
        stuck=[(row, when(row.created_at), when(row.stuck_at)) for row in stuck],
        more=found.stuck - len(stuck) if found else 0,
        timezone=settings.timezone,
        now=show_time(datetime.now(UTC), zone),
    )


def _page(template: str, tab: str, instance_number: int, status: int = 200, **context: Any) -> Response:
    """One of our pages inside rq-dashboard's layout, which needs these values of its own pages."""
    settings = _settings()
    body = render_template(
        template,
        current_instance=instance_number,
        instance_list=[mask_url(settings.redis_url)],
        rq_url_prefix="/",
        rq_dashboard_version=rq_dashboard.web.rq_dashboard_version,
        rq_version=rq.__version__,
        active_tab=tab,
        deprecation_options_usage=False,
        poll_interval=current_app.config.get("RQ_DASHBOARD_POLL_INTERVAL", 2500),
        **context,
    )
    return Response(body, status, headers={"Cache-Control": "no-store"})
