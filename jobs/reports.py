"""Report jobs: read the shop database, write a CSV and a standalone HTML page into the reports folder.

A report only reads, so running it twice is harmless: each run writes its own pair of files
under a new name, and never touches another run's.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import secrets
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from jobs.shop import connect
from taskctl.declare import job
from taskctl.exceptions import PermanentError, TransientError
from taskctl.progress import report_progress
from taskctl.settings import get_settings

ReportType = Literal["sales", "inventory"]
REPORT_TYPES: tuple[str, ...] = get_args(ReportType)

_SALES_PARAMS = ("since", "until")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Rows written between two progress reports: often enough to move, rarely enough not to flood Redis.
_PROGRESS_EVERY = 500


@dataclass(frozen=True)
class _Report:
    """A query's result, and what the page says about it."""

    title: str
    scope: str  # the date range, or what the numbers cover
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    summary: str
    chart_label: Callable[[tuple[Any, ...]], str]
    chart_value: Callable[[tuple[Any, ...]], int]
    chart_axis: str  # what the bars measure
    chart_categories: str  # what each bar is
    chart_title: str


@job(queue="low", timeout=600, retries=1, backoff=60)
def generate_report(report_type: ReportType, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a report (CSV, and an HTML page with a chart) from the shop database into the reports folder.

    The ``Literal`` annotation makes the catalog refuse an unknown report type at enqueue
    time, before anything reaches Redis; bad ``params`` (unknown keys, malformed dates) are
    a PermanentError, since no retry can fix them. Both files are written to a temporary
    file in the reports folder and renamed into place, so a reader (a web page listing the
    folder, a download) never sees half a report.
    """
    if report_type not in REPORT_TYPES:
        raise PermanentError(f"unknown report type {report_type!r}; expected one of {', '.join(REPORT_TYPES)}")
    if params is not None and not isinstance(params, dict):
        raise PermanentError(f"params must be a JSON object or null, got {params!r}")
    params = params or {}
    generated_at = datetime.now(UTC)
    try:
        with closing(connect()) as conn:
            if report_type == "sales":
                since, until = _sales_range(params)
                report = _sales(conn, since, until)
            else:
                if params:
                    raise PermanentError(
                        f"the inventory report takes no params, got {sorted(params)}; pass null or {{}}"
                    )
                report = _inventory(conn)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise TransientError(f"the shop database is busy, try again later: {exc}") from exc
        raise

    count = len(report.rows)
    total = count + 2  # the query, each row, the HTML page
    report_progress(1, total, f"queried {count} rows")

    folder = get_settings().reports_dir
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{report_type}-{generated_at.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
    csv_path = folder / f"{stem}.csv"
    html_path = folder / f"{stem}.html"

    def rows_written(done: int) -> None:
        if done % _PROGRESS_EVERY == 0 and done < count:
            report_progress(1 + done, total, f"wrote {done} of {count} rows")

    _write_atomic(csv_path, _csv_text(report, rows_written))
    try:
        report_progress(count + 1, total, f"wrote {count} rows to CSV")
        _write_atomic(html_path, _html_page(report, generated_at))
    except BaseException:
        csv_path.unlink(missing_ok=True)  # no CSV without its page
        raise
    report_progress(total, total, f"done: {count} rows")
    return {
        "report_type": report_type,
        "rows": count,
        "csv": str(csv_path.resolve()),
        "html": str(html_path.resolve()),
    }


# Parameters.


def _sales_range(params: dict[str, Any]) -> tuple[date | None, date | None]:
    unknown = sorted(set(params) - set(_SALES_PARAMS))
    if unknown:
        raise PermanentError(
            f"unknown sales report params {unknown}; expected only 'since' and 'until' (dates as YYYY-MM-DD)"
        )
    since, until = _date_param(params, "since"), _date_param(params, "until")
    if since and until and since > until:
        raise PermanentError(f"'since' ({since.isoformat()}) is after 'until' ({until.isoformat()})")
    return since, until


def _date_param(params: dict[str, Any], key: str) -> date | None:
    raw = params.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not _DATE.fullmatch(raw):
        raise PermanentError(f"{key!r} must be a date as YYYY-MM-DD, got {raw!r}")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise PermanentError(f"{key!r} must be a date as YYYY-MM-DD, got {raw!r} (no such day)") from None


# Queries.


def _sales(conn: sqlite3.Connection, since: date | None, until: date | None) -> _Report:
    # Quantities are summed per order first: joining items straight onto orders would count
    # an order's total once per item.
    where, args = ["o.status = 'confirmed'"], []
    if since:
        where.append("date(o.created_at) >= ?")
        args.append(since.isoformat())
    if until:
        where.append("date(o.created_at) <= ?")
        args.append(until.isoformat())
    rows = [
        tuple(row)
        for row in conn.execute(
            "SELECT date(o.created_at) AS day, COUNT(*), COALESCE(SUM(i.quantity), 0), COALESCE(SUM(o.total_cents), 0)"
            " FROM orders o"
            " LEFT JOIN (SELECT order_id, SUM(quantity) AS quantity FROM order_items GROUP BY order_id) i"
            " ON i.order_id = o.id"
            f" WHERE {' AND '.join(where)}"
            " GROUP BY day ORDER BY day",
            args,
        )
    ]
    scope = "all time"
    if since and until:
        scope = f"{since.isoformat()} to {until.isoformat()}"
    elif since:
        scope = f"from {since.isoformat()} on"
    elif until:
        scope = f"up to {until.isoformat()}"
    orders, items, revenue = (sum(row[i] for row in rows) for i in (1, 2, 3))
    return _Report(
        title="Sales report",
        scope=scope,
        columns=("date", "orders", "items", "revenue_cents"),
        rows=rows,
        summary=(
            f"{len(rows)} day{'' if len(rows) == 1 else 's'} with confirmed orders: {orders} orders, {items} items, "
            f"revenue {_money(revenue)} ({revenue} cents)"
        ),
        chart_label=lambda row: str(row[0]),
        chart_value=lambda row: int(row[3]),
        chart_axis="Revenue (cents)",
        chart_categories="Day (UTC)",
        chart_title="Revenue per day",
    )


def _inventory(conn: sqlite3.Connection) -> _Report:
    rows = [
        tuple(row)
        for row in conn.execute(
            "SELECT p.sku, p.name, p.price_cents, p.stock,"
            " COALESCE((SELECT SUM(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id"
            "           WHERE oi.sku = p.sku AND o.status = 'confirmed'), 0)"
            " FROM products p ORDER BY p.sku"
        )
    ]
    stock, ordered = sum(row[3] for row in rows), sum(row[4] for row in rows)
    return _Report(
        title="Inventory report",
        scope="stock now, and quantities in confirmed orders",
        columns=("sku", "name", "price_cents", "stock", "ordered_quantity"),
        rows=rows,
        summary=f"{len(rows)} products: {stock} in stock, {ordered} ordered in confirmed orders",
        chart_label=lambda row: str(row[0]),
        chart_value=lambda row: int(row[3]),
        chart_axis="Stock (units)",
        chart_categories="SKU",
        chart_title="Stock per SKU",
    )


# Output.


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same folder and rename: the name appears only when complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_text(report: _Report, rows_written: Callable[[int], None]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(report.columns)
    for done, row in enumerate(report.rows, start=1):
        writer.writerow([_cell(value) for value in row])
        rows_written(done)
    return out.getvalue()


def _cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (=, +, -, @) is kept as text with a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _money(cents: int) -> str:
    return f"{cents // 100:,}.{cents % 100:02d}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_page(report: _Report, generated_at: datetime) -> str:
    generated = generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    header = "".join(f'<th scope="col">{_e(column)}</th>' for column in report.columns)
    body = (
        "\n".join("<tr>" + "".join(f"<td>{_e(value)}</td>" for value in row) + "</tr>" for row in report.rows)
        or f'<tr><td colspan="{len(report.columns)}">No rows.</td></tr>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(report.title)} ({_e(report.scope)})</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }}
td {{ font-variant-numeric: tabular-nums; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>{_e(report.title)}: {_e(report.scope)}</h1>
<p class="generated">Generated {_e(generated)}</p>
<p class="summary">{_e(report.summary)}</p>
{_svg_chart(report)}
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""


def _svg_chart(report: _Report) -> str:
    """A bar chart drawn by hand: one bar per row, a value axis with ticks, labels under the bars."""
    width, height = 800, 360
    left, right, top, bottom = 80, 20, 20, 90
    plot_w, plot_h = width - left - right, height - top - bottom
    labels = [report.chart_label(row) for row in report.rows]
    values = [report.chart_value(row) for row in report.rows]
    peak = _nice_ceiling(max(values, default=0))
    desc = (
        f"{report.chart_title}: {len(values)} bar{'' if len(values) == 1 else 's'}"
        + (f", from {labels[0]} to {labels[-1]}, highest {max(values)}" if values else ", no data")
        + "."
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        ' role="img" aria-labelledby="chart-title chart-desc">',
        f'<title id="chart-title">{_e(report.chart_title)}</title>',
        f'<desc id="chart-desc">{_e(desc)}</desc>',
    ]
    # Value axis: ticks and grid lines.
    for step in range(5):
        tick = peak * step // 4
        y = top + plot_h - plot_h * step / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick}</text>'
        )
    parts.append(
        f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle"'
        f' font-size="12">{_e(report.chart_axis)}</text>'
    )
    parts.append(
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>'
    )
    if not values:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle"'
            ' font-size="14" fill="#666">No data</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle"'
        f' font-size="12">{_e(report.chart_categories)}</text>'
    )
    slot = plot_w / max(len(values), 1)
    bar_w = min(slot * 0.8, 60.0)
    # At most about 30 labels under the bars, so that they stay readable.
    every = max(1, -(-len(values) // 30))
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        bar_h = plot_h * value / peak if peak else 0
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h - bar_h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" fill="#4a78b5">'
            f"<title>{_e(label)}: {value}</title></rect>"
        )
        if index % every == 0:
            cx, cy = left + index * slot + slot / 2, top + plot_h + 12
            parts.append(
                f'<text transform="translate({cx:.1f} {cy:.1f}) rotate(-45)" text-anchor="end"'
                f' font-size="11">{_e(_shorten(label))}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_ceiling(value: int) -> int:
    """The axis top: four ticks of a round step (1, 2 or 5 times a power of ten) reaching the highest bar."""
    if value <= 0:
        return 0
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if 4 * magnitude * factor >= value:
                return 4 * magnitude * factor
        magnitude *= 10


def _shorten(label: str, limit: int = 16) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
