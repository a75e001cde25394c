"""generate_report: called directly on a seeded shop database, then enqueued by the CLI and run by a real worker."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

import jobs.reports
from jobs.orders import process_order
from jobs.reports import generate_report
from jobs.shop import add_product, connect, create_order, seed_demo
from taskctl.exceptions import PermanentError
from taskctl.settings import get_settings
from tests.conftest import run_burst_worker, taskctl
from tests.test_enqueue_cli import job_id_from

EVIL_NAME = '<script>alert(1)</script> & "Mug"'

SALES_HEADER = ["date", "orders", "items", "revenue_cents"]
# What the `shop` fixture's confirmed orders add up to, per day.
ALL_SALES = [
    ["2025-12-31", "1", "1", "2500"],
    ["2026-01-05", "2", "6", "5800"],  # 2 MUG (2400); 1 TSHIRT + 3 STICKER (3400)
    ["2026-01-07", "1", "1", "1500"],  # the pending order of 5 MUG that day does not count
    ["2026-01-09", "1", "1", "999"],
]
INVENTORY = [
    ["sku", "name", "price_cents", "stock", "ordered_quantity"],
    ["EVIL", EVIL_NAME, "999", "3", "1"],
    ["MUG", "Coffee mug", "1200", "50", "2"],
    ["POSTER", "Poster", "1500", "10", "1"],
    ["STICKER", "Sticker pack", "300", "200", "3"],
    ["TSHIRT", "T-shirt", "2500", "20", "2"],
]


def place(conn: sqlite3.Connection, day: str, items: list[dict[str, Any]], confirm: bool = True) -> int:
    order_id = create_order(conn, "ann@example.com", 7, items)
    if confirm:
        assert process_order(order_id)["changed"]
    conn.execute("UPDATE orders SET created_at = ? WHERE id = ?", (f"{day}T10:30:00+00:00", order_id))
    return order_id


@pytest.fixture
def shop() -> Iterator[sqlite3.Connection]:
    """The demo products, one with a hostile name, and orders spread over four days (one pending)."""
    conn = connect()
    seed_demo(conn)
    add_product(conn, "EVIL", EVIL_NAME, 999, 3)
    place(conn, "2025-12-31", [{"sku": "TSHIRT", "quantity": 1}])
    place(conn, "2026-01-05", [{"sku": "MUG", "quantity": 2}])
    place(conn, "2026-01-05", [{"sku": "TSHIRT", "quantity": 1}, {"sku": "STICKER", "quantity": 3}])
    place(conn, "2026-01-07", [{"sku": "POSTER", "quantity": 1}])
    place(conn, "2026-01-07", [{"sku": "MUG", "quantity": 5}], confirm=False)
    place(conn, "2026-01-09", [{"sku": "EVIL", "quantity": 1}])
    yield conn
    conn.close()


def read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


class Page(HTMLParser):
    """What the tests look at in a report page: the doctype, the tags, the title, the table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = ""
        self.tags: list[str] = []
        self.open: list[str] = []
        self.title = ""
        self.svg_titles: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self.open and self.open[-1] == "title":
            if "svg" in self.open:
                self.svg_titles.append(data)
            else:
                self.title += data


def parse_page(path: str) -> Page:
    page = Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    page.close()
    assert page.doctype.lower() == "doctype html"
    assert page.open == [], "every element is closed"
    return page


def report_files() -> list[str]:
    folder = get_settings().reports_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# Called directly: no Redis, no worker.


def test_sales_report_counts_confirmed_orders_per_day(shop: sqlite3.Connection) -> None:
    result = generate_report("sales")

    assert result["report_type"] == "sales"
    assert result["rows"] == 4
    assert read_csv(result["csv"]) == [SALES_HEADER, *ALL_SALES]
    csv_path, html_path = Path(result["csv"]), Path(result["html"])
    assert csv_path.is_absolute() and html_path.is_absolute()
    assert csv_path.parent == html_path.parent == get_settings().reports_dir.resolve()
    assert csv_path.stem == html_path.stem and csv_path.stem.startswith("sales-")
    assert report_files() == sorted([csv_path.name, html_path.name]), "no temporary file is left behind"


def test_sales_report_html_shows_the_same_numbers_and_a_chart(shop: sqlite3.Connection) -> None:
    result = generate_report("sales")

    page = parse_page(result["html"])
    text = Path(result["html"]).read_text(encoding="utf-8")
    assert "Sales report" in page.title and "all time" in page.title
    assert {"html", "head", "body", "h1", "svg", "rect", "table"} <= set(page.tags)
    assert page.tags.count("rect") == 4  # one bar per day
    assert page.svg_titles[0] == "Revenue per day"
    assert "desc" in page.tags and "Revenue (cents)" in text and "Day (UTC)" in text  # the axis labels
    assert page.rows == [SALES_HEADER, *ALL_SALES]
    assert "4 days with confirmed orders: 5 orders, 9 items, revenue 107.99 (10799 cents)" in text


def test_sales_report_filters_on_inclusive_dates(shop: sqlite3.Connection) -> None:
    between = generate_report("sales", {"since": "2026-01-05", "until": "2026-01-07"})
    since = generate_report("sales", {"since": "2026-01-01"})
    until = generate_report("sales", {"until": "2026-01-05"})
    one_day = generate_report("sales", {"since": "2026-01-09", "until": "2026-01-09"})
    nothing = generate_report("sales", {"since": "2026-01-06", "until": "2026-01-06"})

    assert read_csv(between["csv"])[1:] == ALL_SALES[1:3]
    assert read_csv(since["csv"])[1:] == ALL_SALES[1:]
    assert read_csv(until["csv"])[1:] == ALL_SALES[:2]
    assert read_csv(one_day["csv"])[1:] == ALL_SALES[3:]
    assert (nothing["rows"], read_csv(nothing["csv"])) == (0, [SALES_HEADER])
    assert "2026-01-05 to 2026-01-07" in parse_page(between["html"]).title


def test_pending_orders_are_left_out(shop: sqlite3.Connection) -> None:
    pending = place(shop, "2026-01-20", [{"sku": "POSTER", "quantity": 4}], confirm=False)
    assert generate_report("sales")["rows"] == 4

    process_order(pending)
    rows = read_csv(generate_report("sales")["csv"])

    assert rows[-1] == ["2026-01-20", "1", "4", "6000"]


def test_a_hostile_product_name_is_escaped_in_the_page(shop: sqlite3.Connection) -> None:
    result = generate_report("inventory")

    text = Path(result["html"]).read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;Mug&quot;" in text
    assert [row[1] for row in parse_page(result["html"]).rows if row[0] == "EVIL"] == [EVIL_NAME]
    assert read_csv(result["csv"])[1][1] == EVIL_NAME  # the CSV keeps the name as it is


def test_a_product_name_that_is_a_formula_stays_text_in_the_csv(shop: sqlite3.Connection) -> None:
    add_product(shop, "CALC", '=HYPERLINK("http://evil.example","click")', 100, 1)

    rows = read_csv(generate_report("inventory")["csv"])

    assert [row[1] for row in rows if row[0] == "CALC"] == ['\'=HYPERLINK("http://evil.example","click")']


def test_inventory_report_rows(shop: sqlite3.Connection) -> None:
    result = generate_report("inventory", {})

    assert result["rows"] == 5
    assert read_csv(result["csv"]) == INVENTORY
    page = parse_page(result["html"])
    assert page.rows == INVENTORY
    assert page.tags.count("rect") == 5
    assert page.svg_titles[0] == "Stock per SKU"
    assert Path(result["csv"]).name.startswith("inventory-")


def test_an_empty_database_gives_a_valid_empty_report() -> None:
    for report_type, header in (("sales", SALES_HEADER), ("inventory", INVENTORY[0])):
        result = generate_report(report_type)  # type: ignore[arg-type]

        assert result["rows"] == 0
        assert read_csv(result["csv"]) == [header]
        page = parse_page(result["html"])
        assert "svg" in page.tags and "rect" not in page.tags
        assert page.rows[0] == header
        assert "No data" in Path(result["html"]).read_text(encoding="utf-8")


def test_progress_is_reported_up_to_done_equals_total(
    shop: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, str]] = []
    monkeypatch.setattr(
        jobs.reports, "report_progress", lambda done, total, message="": calls.append((done, total, message))
    )
    monkeypatch.setattr(jobs.reports, "_PROGRESS_EVERY", 2)

    generate_report("sales")

    assert [done for done, _, _ in calls] == [1, 3, 5, 6]  # queried; 2 rows; all 4 rows in the CSV; the page
    assert {total for _, total, _ in calls} == {6}
    assert calls[-1][2] == "done: 4 rows"


def test_a_failed_page_leaves_no_files(shop: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(jobs.reports, "_html_page", broken)

    with pytest.raises(RuntimeError, match="disk full"):
        generate_report("sales")

    assert report_files() == []


@pytest.mark.parametrize(
    ("report_type", "params", "message"),
    [
        ("sales", "2026-01-01", "params must be a JSON object"),
        ("sales", ["since"], "params must be a JSON object"),
        ("sales", {"from": "2026-01-01"}, r"unknown sales report params \['from'\]; expected only 'since' and 'until'"),
        ("sales", {"since": "01/02/2026"}, "'since' must be a date as YYYY-MM-DD, got '01/02/2026'"),
        ("sales", {"since": 20260101}, "'since' must be a date as YYYY-MM-DD, got 20260101"),
        ("sales", {"until": "20260101"}, "'until' must be a date as YYYY-MM-DD"),
        ("sales", {"until": "2026-02-30"}, r"'until' must be a date as YYYY-MM-DD, got '2026-02-30' \(no such day\)"),
        ("sales", {"since": "2026-02-01", "until": "2026-01-01"}, r"'since' \(2026-02-01\) is after 'until'"),
        ("inventory", {"since": "2026-01-01"}, r"the inventory report takes no params, got \['since'\]"),
        ("weekly", None, "unknown report type 'weekly'; expected one of sales, inventory"),
    ],
    ids=[
        "params-text",
        "params-list",
        "unknown-key",
        "since-us-format",
        "since-number",
        "until-compact",
        "until-no-such-day",
        "since-after-until",
        "inventory-with-params",
        "unknown-type",
    ],
)
def test_invalid_params_are_permanent_and_write_nothing(
    shop: sqlite3.Connection, report_type: Any, params: Any, message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        generate_report(report_type, params)

    assert report_files() == []


# On a real worker.


def test_cli_enqueue_runs_on_a_worker_with_progress_in_meta(
    configured: str, redis: Redis, shop: sqlite3.Connection
) -> None:
    enqueued = taskctl("enqueue", "generate_report", "sales", '{"since": "2026-01-01"}')
    assert enqueued.exit_code == 0, enqueued.output
    assert "on queue low" in enqueued.output
    job_id = job_id_from(enqueued.output)

    run_burst_worker()

    shown = taskctl("result", job_id)
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.output)
    assert (result["report_type"], result["rows"]) == ("sales", 3)
    assert Path(result["csv"]).is_file() and Path(result["html"]).is_file()
    assert read_csv(result["csv"])[1:] == ALL_SALES[1:]
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.meta["progress"] == {"done": 5, "total": 5, "message": "done: 3 rows"}
    status = taskctl("status", job_id)
    assert "done: 3 rows" in status.output


def test_an_unknown_report_type_is_refused_at_enqueue(configured: str, redis: Redis) -> None:
    refused = taskctl("enqueue", "generate_report", "weekly")

    assert refused.exit_code == 2
    assert "is not one of 'sales', 'inventory'" in refused.output
    assert redis.dbsize() == 0
