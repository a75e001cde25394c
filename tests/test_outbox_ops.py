"""Operating the outbox: `taskctl outbox` and its subcommands, the outbox in stats, status, doctor, /metrics, the page.

Rows are written as an application writes them (``taskctl.outbox.enqueue`` on its
own sqlite3 or psycopg connection, committed); stuck rows are made by the real
relay (a row naming a job that is not in the catalog) or by setting the reason in SQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from taskctl import outbox, outbox_db, outbox_ops
from taskctl.exceptions import NoSuchOutboxRowError
from taskctl.outbox_db import TABLE, schema
from taskctl.relay import Relay
from taskctl.settings import get_settings
from taskctl.web.app import create_app
from tests.conftest import free_port, taskctl
from tests.test_failures import fields


class Outbox:
    """The configured outbox database, as the application (writes) and the test (checks) reach it."""

    def __init__(self, url: str, connect: Callable[[], Any], placeholder: str) -> None:
        self.url = url
        self._connect = connect
        self._mark = placeholder

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            cursor = conn.execute(statement.replace("?", self._mark), params)
            found = cursor.fetchall() if cursor.description else []
            conn.commit()
            return [tuple(row) for row in found]
        finally:
            conn.close()

    def write(self, job: str, *args: Any, job_id: str | None = None, age: float = 0.0) -> str:
        """A committed row, as a web request writes it; ``age``: seconds it has waited already."""
        conn = self._connect()
        try:
            handle = outbox.enqueue_call(conn, job, args, job_id=job_id)
            conn.commit()
        finally:
            conn.close()
        if age:
            self.sql(f"UPDATE {TABLE} SET created_at = ? WHERE job_id = ?", (time.time() - age, handle.id))
        return handle.id

    def stick(self, job_id: str, reason: str, job: str = "add") -> None:
        """A row the relay gave up on (written and marked in SQL: the relay would move a good one)."""
        self.sql(
            f"INSERT INTO {TABLE} (job_id, job, call, created_at, stuck_reason, stuck_at) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, job, '{"args":[1,2],"kwargs":{},"queue":"default","job_timeout":null,"retries":null,'
             '"backoff":null,"unique":false,"due":null}', time.time() - 5, reason, time.time()),
        )  # fmt: skip

    def state(self) -> dict[str, str | None]:
        """job id -> its stuck reason (None: waiting)."""
        return {str(job_id): reason for job_id, reason in self.sql(f"SELECT job_id, stuck_reason FROM {TABLE}")}


def use(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> None:
    monkeypatch.setenv("TASKCTL_OUTBOX_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def lite(configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Outbox:
    """An SQLite outbox with its table, as the application's first row leaves it (the row then deleted)."""
    path = tmp_path / "app.sqlite3"
    use(monkeypatch, f"sqlite:///{path}")
    box = Outbox(f"sqlite:///{path}", lambda: sqlite3.connect(path), "?")
    box.write("add", 0, 0, job_id="first")
    box.sql(f"DELETE FROM {TABLE}")
    return box


@pytest.fixture
def pg(configured: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Outbox:
    use(monkeypatch, postgres_url)
    box = Outbox(postgres_url, lambda: psycopg.connect(postgres_url), "%s")
    box.write("add", 0, 0, job_id="first")
    box.sql(f"DELETE FROM {TABLE}")
    return box


@pytest.fixture(params=["sqlite", "postgresql"])
def box(request: pytest.FixtureRequest) -> Outbox:
    """Both databases, for the summary, retry and delete."""
    return request.getfixturevalue("lite" if request.param == "sqlite" else "pg")  # type: ignore[no-any-return]


@pytest.fixture
def unreachable(configured: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An outbox URL where nothing listens."""
    url = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/shop"
    use(monkeypatch, url)
    return url


def lines(output: str) -> list[str]:
    return output.splitlines()


# --- taskctl outbox -----------------------------------------------------------------------------------------------


def test_the_summary_shows_the_figures_then_the_stuck_rows_with_their_reasons(box: Outbox) -> None:
    box.write("add", 1, 2, job_id="old", age=120)
    box.write("add", 3, 4, job_id="new")
    box.stick("bad", "InvalidQueueError: unknown queue 'gone'")

    result = taskctl("outbox")

    assert result.exit_code == 0, result.output
    out = lines(result.output)
    assert out[:4] == [f"Database: {box.url}", "Waiting:  2 row(s), oldest 120s", "Stuck:    1 row(s)", ""]
    assert out[4].split() == ["JOB", "ID", "JOB", "WRITTEN", "AT", "STUCK", "AT", "REASON"]
    assert out[5].startswith("bad     add  ") and out[5].endswith("  InvalidQueueError: unknown queue 'gone'")
    assert out[6:] == [
        "",
        "Fix the cause, then `taskctl outbox retry JOB_ID...` (or --all); "
        "`taskctl outbox delete JOB_ID...` drops rows for good.",
    ]


def test_a_row_naming_a_job_not_in_the_catalog_is_stuck_by_the_relay_and_listed(lite: Outbox) -> None:
    lite.sql(f"INSERT INTO {TABLE} (job_id, job, call, created_at) VALUES ('gone-1', 'retired_job', ?, ?)",
             ('{"args":[],"kwargs":{},"queue":"default","job_timeout":null,"retries":null,"backoff":null,'
              '"unique":false,"due":null}', time.time()))  # fmt: skip

    assert Relay().relay_once().stuck == 1
    result = taskctl("outbox")

    assert "Stuck:    1 row(s)" in result.output
    (row,) = [line for line in lines(result.output) if line.startswith("gone-1")]
    assert "UnknownJobError: unknown job 'retired_job'" in row


def test_the_summary_lists_at_most_limit_stuck_rows(lite: Outbox) -> None:
    for number in range(3):
        lite.stick(f"s{number}", "UnknownJobError: gone")

    out = lines(taskctl("outbox", "--limit", "2").output)

    assert [line.split()[0] for line in out[5:7]] == ["s0", "s1"]
    assert out[7] == "... and 1 more (--limit)"
    assert taskctl("outbox", "--limit", "0").exit_code == 2


def test_without_a_database_file_the_summary_says_no_table_and_creates_nothing(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "never.sqlite3"
    use(monkeypatch, f"sqlite:///{path}")

    result = taskctl("outbox")

    assert (result.exit_code, lines(result.output)) == (
        0,
        [f"Database: sqlite:///{path}", "No outbox table: no row was ever written (`taskctl outbox init` creates it)."],
    )
    assert not path.exists()


def test_an_unreachable_database_exits_1_naming_it_masked(unreachable: str) -> None:
    for args in (["outbox"], ["outbox", "retry", "--all"], ["outbox", "delete", "x"]):
        result = taskctl(*args)
        assert result.exit_code == 1, args
        masked = unreachable.replace(":s3cret@", ":***@")
        assert result.output.startswith(f"Error: cannot reach the outbox database {masked}: "), args
        assert "s3cret" not in result.output


# --- retry and delete ---------------------------------------------------------------------------------------------


def test_retry_clears_the_reason_and_the_relay_then_makes_the_job(box: Outbox) -> None:
    box.stick("fixed", "RedisUnavailableError: was down")
    box.stick("other", "UnknownJobError: gone")

    result = taskctl("outbox", "retry", "fixed")

    assert (result.exit_code, result.output) == (0, "Retried 1 stuck row(s).\n")
    assert box.state() == {"fixed": None, "other": "UnknownJobError: gone"}
    assert Relay().relay_once().moved == 1
    assert fields(taskctl("status", "fixed").output)["status"] == "queued"


def test_retry_all_clears_every_stuck_row_and_counts_only_those(box: Outbox) -> None:
    box.stick("a", "x")
    box.stick("b", "y")
    box.write("add", 1, 2, job_id="waiting")

    assert taskctl("outbox", "retry", "--all").output == "Retried 2 stuck row(s).\n"
    assert box.state() == {"a": None, "b": None, "waiting": None}
    assert taskctl("outbox", "retry", "--all").output == "Retried 0 stuck row(s).\n"


def test_retry_of_a_waiting_row_changes_nothing_and_says_so(lite: Outbox) -> None:
    lite.stick("stuck", "x")
    lite.write("add", 1, 2, job_id="waiting")

    result = taskctl("outbox", "retry", "stuck", "waiting", "stuck")

    assert result.output == (
        "Retried 1 stuck row(s); 1 named row(s) were not stuck: they wait for the relay already.\n"
    )


def test_an_unknown_id_exits_2_naming_it_and_changes_nothing(box: Outbox) -> None:
    box.stick("known", "x")

    for command in ("retry", "delete"):
        result = taskctl("outbox", command, "known", "nope")
        assert result.exit_code == 2, command
        assert lines(result.output)[-1] == (
            "Error: no outbox row holds job id 'nope'; nothing changed "
            "(the relay may have moved it to Redis meanwhile: see `taskctl status JOB_ID`)"
        )
    assert box.state() == {"known": "x"}


@pytest.mark.parametrize("command", ["retry", "delete"])
def test_retry_and_delete_need_ids_or_all_but_not_both(lite: Outbox, command: str) -> None:
    for args in ([], ["x", "--all"]):
        result = taskctl("outbox", command, *args)
        assert result.exit_code == 2
        assert lines(result.output)[-1] == "Error: give job ids or --all (not both)"


def test_delete_by_id_takes_stuck_and_waiting_rows(box: Outbox) -> None:
    box.stick("stuck", "x")
    box.write("add", 1, 2, job_id="mistake")
    box.write("add", 3, 4, job_id="keep")

    result = taskctl("outbox", "delete", "stuck", "mistake")

    assert (result.exit_code, result.output) == (0, "Deleted 2 row(s).\n")
    assert box.state() == {"keep": None}


def test_delete_all_takes_the_stuck_rows_and_never_a_waiting_one(box: Outbox) -> None:
    box.stick("a", "x")
    box.stick("b", "y")
    box.write("add", 1, 2, job_id="waiting")

    assert taskctl("outbox", "delete", "--all").output == "Deleted 2 row(s).\n"
    assert box.state() == {"waiting": None}


def test_the_python_api_on_the_applications_connection_batches_its_statements(lite: Outbox, tmp_path: Path) -> None:
    ids = [f"s{number}" for number in range(1200)]
    conn = sqlite3.connect(tmp_path / "app.sqlite3")
    conn.executemany(
        f"INSERT INTO {TABLE} (job_id, job, call, created_at, stuck_reason) VALUES (?, 'add', '{{}}', 0, 'x')",
        [(job_id,) for job_id in ids],
    )
    conn.commit()
    statements: list[str] = []
    db = outbox_db.wrap(conn)
    execute = db.execute
    db.execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)  # type: ignore[method-assign]

    assert outbox_ops.outbox_stats(db) == outbox_ops.OutboxStats(waiting=0, stuck=1200, oldest_age=0.0)
    assert outbox_ops.retry(db, ids) == 1200
    assert outbox_ops.delete(db, [*ids[:600], *ids[:600]]) == 600  # each id once

    # has_table + the figures; then per write BEGIN, has_table, 3 (2) chunks to check, as many to change, COMMIT.
    assert len(statements) == 2 + (1 + 1 + 3 + 3 + 1) + (1 + 1 + 2 + 2 + 1)
    assert outbox_ops.find_row(conn, "s0") is None
    row = outbox_ops.find_row(conn, "s600")
    assert row is not None and (row.job_id, row.job, row.stuck, row.created_at) == ("s600", "add", False, 0.0)
    with pytest.raises(NoSuchOutboxRowError, match="'s0', 'nope'"):
        outbox_ops.retry(conn, ["s600", "s0", "nope"])


# --- init and schema ----------------------------------------------------------------------------------------------


def test_init_creates_the_table_once_and_says_so(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "new.sqlite3"
    use(monkeypatch, f"sqlite:///{path}")

    first, second = taskctl("outbox", "init"), taskctl("outbox", "init")

    assert (first.exit_code, first.output) == (0, f"Created table {TABLE} in sqlite:///{path}.\n")
    assert second.output == f"Found table {TABLE} in sqlite:///{path}; nothing to do.\n"
    assert lines(taskctl("outbox").output)[1:] == ["Waiting:  0 row(s), oldest 0s", "Stuck:    0 row(s)"]


def test_init_on_postgresql(configured: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, postgres_url)

    assert taskctl("outbox", "init").output == f"Created table {TABLE} in {postgres_url}.\n"
    assert taskctl("outbox", "init").output.startswith("Found table")


def test_schema_prints_the_ddl_of_the_configured_dialect_or_the_one_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert taskctl("outbox", "schema").output == schema("sqlite")
    assert taskctl("outbox", "schema", "--dialect", "postgresql").output == schema("postgresql")
    use(monkeypatch, "postgresql://app@db.invalid/shop")  # printed, never connected to
    assert taskctl("outbox", "schema").output == schema("postgresql")
    bad = taskctl("outbox", "schema", "--dialect", "mysql")
    assert bad.exit_code == 2 and "'mysql' is not one of 'sqlite', 'postgresql'" in bad.output
    assert not (tmp_path / "x.sqlite3").exists()


# --- stats, status, doctor ----------------------------------------------------------------------------------------


def test_stats_has_an_outbox_line(lite: Outbox) -> None:
    assert lines(taskctl("stats").output)[-1] == "Outbox: 0 waiting, oldest 0s, 0 stuck"
    lite.write("add", 1, 2, age=30)
    lite.stick("s", "x")

    result = taskctl("stats")

    assert lines(result.output)[-2:] == ["Scheduler: 0 waiting, 0 overdue", "Outbox: 1 waiting, oldest 30s, 1 stuck"]


def test_stats_says_when_there_is_no_outbox_or_it_does_not_answer(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, f"sqlite:///{tmp_path / 'none.sqlite3'}")
    assert lines(taskctl("stats").output)[-1] == "Outbox: none (no table)"
    url = f"postgresql://app:pw@127.0.0.1:{free_port()}/shop"
    use(monkeypatch, url)

    result = taskctl("stats")

    assert result.exit_code == 0
    assert "Workers alive: 0 (0 busy)" in result.output
    outbox_line = lines(result.output)[-1]
    assert outbox_line.startswith(
        f"Outbox: unavailable: cannot reach the outbox database {url.replace(':pw@', ':***@')}"
    )


def test_status_of_a_row_that_waits_in_the_outbox(lite: Outbox) -> None:
    job_id = lite.write("add", 1, 2)

    result = taskctl("status", job_id)

    assert result.exit_code == 0, result.output
    shown = fields(result.output)
    assert (shown["id"], shown["job"], shown["call"], shown["queue"]) == (job_id, "add", "add(1, 2)", "default")
    assert shown["status"] == "waiting in the outbox (committed, not yet moved to Redis by the relay)"
    assert "written at" in shown and "stuck at" not in shown
    Relay().relay_once()
    assert fields(taskctl("status", job_id).output)["status"] == "queued"


def test_status_of_a_stuck_row_gives_its_reason_and_the_way_out(lite: Outbox) -> None:
    lite.stick("s1", "InvalidArgumentsError: add: parameter b: 'x' is not an integer")

    shown = fields(taskctl("status", "s1").output)

    assert shown["status"] == "stuck in the outbox: InvalidArgumentsError: add: parameter b: 'x' is not an integer"
    assert shown["next"] == "fix the cause, then `taskctl outbox retry s1`; or `taskctl outbox delete s1`"


def test_status_of_an_id_neither_knows_is_still_no_such_job(lite: Outbox) -> None:
    result = taskctl("status", "nope")

    assert result.exit_code == 2
    assert "Error: no job with id 'nope' (never enqueued, or expired after its TTL)" in result.output


def test_status_of_an_unknown_id_with_the_outbox_unreachable_exits_1(unreachable: str) -> None:
    result = taskctl("status", "nope")

    assert result.exit_code == 1
    assert result.output.startswith("Error: no job with id 'nope' (never enqueued, or expired after its TTL); "
                                    "the outbox could not be asked: cannot reach the outbox database")  # fmt: skip


def outbox_findings(output: str) -> list[str]:
    """The doctor's findings under its "Outbox at ..." heading."""
    shown = lines(output)
    start = next(number for number, line in enumerate(shown) if line.startswith("Outbox at ")) + 1
    return [line.strip() for line in shown[start:] if line.startswith("  [")]


def test_doctor_passes_while_rows_move(lite: Outbox) -> None:
    lite.write("add", 1, 2, age=5)

    result = taskctl("doctor")

    assert result.exit_code == 0, result.output
    assert f"Outbox at {lite.url}" in lines(result.output)
    assert outbox_findings(result.output) == ["[ok] outbox: 1 waiting, oldest 5s"]


def test_doctor_fails_when_a_row_waits_longer_than_the_threshold(lite: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    lite.write("add", 1, 2, age=45)
    use(monkeypatch, lite.url, TASKCTL_OUTBOX_MAX_AGE="30")

    result = taskctl("doctor")

    assert result.exit_code == 1
    assert outbox_findings(result.output) == [
        "[error] outbox: 1 waiting, oldest 45s, more than TASKCTL_OUTBOX_MAX_AGE (30s): "
        "is the relay running? Start it with `python -m taskctl.relay`"
    ]
    assert result.output.endswith("Error: 1 problem(s) found\n")


def test_doctor_fails_on_stuck_rows_and_names_the_command_to_see_them(lite: Outbox) -> None:
    lite.stick("s", "x")

    result = taskctl("doctor")

    assert result.exit_code == 1
    assert outbox_findings(result.output) == [
        "[ok] outbox: 0 waiting, oldest 0s",
        "[error] outbox stuck rows: 1 row(s) the relay cannot make jobs; see why with `taskctl outbox`, "
        "then `taskctl outbox retry` or `taskctl outbox delete` them",
    ]


def test_doctor_says_not_in_use_without_a_table_and_fails_when_the_database_does_not_answer(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, f"sqlite:///{tmp_path / 'none.sqlite3'}")
    unused = taskctl("doctor")
    assert unused.exit_code == 0, unused.output
    assert outbox_findings(unused.output) == ["[ok] outbox: not in use (no outbox table)"]
    use(monkeypatch, f"postgresql://app@127.0.0.1:{free_port()}/shop")

    down = taskctl("doctor")

    assert down.exit_code == 1
    (finding,) = outbox_findings(down.output)
    assert finding.startswith("[error] outbox: cannot reach the outbox database postgresql://app@127.0.0.1:")


# --- /metrics and the Outbox page ---------------------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[FlaskClient]:
    """The dashboard in this process (create_app reads the settings the test set)."""
    yield create_app().test_client()


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def test_metrics_export_the_outbox(lite: Outbox, client: FlaskClient) -> None:
    lite.write("add", 1, 2, age=20)
    lite.write("add", 3, 4)
    lite.stick("s", "x")

    found = scrape(client)

    assert found[("taskctl_outbox_up", ())] == 1
    assert found[("taskctl_outbox_rows", (("state", "waiting"),))] == 2
    assert found[("taskctl_outbox_rows", (("state", "stuck"),))] == 1
    assert 20 <= found[("taskctl_outbox_oldest_row_age_seconds", ())] < 30


def test_metrics_say_the_outbox_is_down_and_still_export_the_rest(unreachable: str, client: FlaskClient) -> None:
    found = scrape(client)

    assert found[("taskctl_outbox_up", ())] == 0
    assert ("taskctl_outbox_rows", (("state", "waiting"),)) not in found
    assert found[("taskctl_workers_alive", ())] == 0


def test_the_outbox_page_shows_the_figures_and_the_stuck_rows_as_text(lite: Outbox, client: FlaskClient) -> None:
    lite.write("add", 1, 2, age=12)
    lite.stick("s1", "UnknownJobError: <script>alert(1)</script>")

    response = client.get("/outbox")
    page = response.get_data(as_text=True)

    assert response.status_code == 200
    assert '<a href="/outbox" class="nav-link">Outbox</a>' in page
    assert f'<code id="outbox-database">{lite.url}</code>' in page
    assert '<td id="outbox-waiting">1</td>' in page and '<td id="outbox-stuck">1</td>' in page
    assert '<td id="outbox-oldest">12s (<code>taskctl doctor</code> fails past 60s)</td>' in page
    assert "<td>s1</td><td>add(1, 2)</td><td>default</td>" in page
    assert "<td>UnknownJobError: &lt;script&gt;alert(1)&lt;/script&gt;</td>" in page
    assert "<script>alert(1)" not in page
    assert client.get("/0/view/outbox", follow_redirects=True).status_code == 200  # /outbox, as for Schedules


def test_the_outbox_page_says_when_there_is_no_outbox_or_it_does_not_answer(
    configured: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, f"sqlite:///{tmp_path / 'none.sqlite3'}")
    assert "Not in use: no outbox table" in create_app().test_client().get("/outbox").get_data(as_text=True)
    use(monkeypatch, f"postgresql://app:pw@127.0.0.1:{free_port()}/shop")

    response = create_app().test_client().get("/outbox")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Unavailable: cannot reach the outbox database postgresql://app:***@127.0.0.1:" in page
    assert ":pw@" not in page
