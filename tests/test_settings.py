"""Settings: read once from the environment and .env, refused loudly when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskctl.exceptions import SettingsError
from taskctl.settings import Settings, load_settings, mask_url
from tests.conftest import taskctl


def test_defaults_are_safe_for_a_laptop() -> None:
    settings = load_settings({}, env_file=None)

    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queues == ("high", "default", "low")
    assert (settings.dashboard_host, settings.dashboard_port) == ("127.0.0.1", 9181)
    assert settings.failure_ttl == 7 * 86_400


def test_environment_overrides_and_lists_accept_commas_or_spaces() -> None:
    settings = load_settings(
        {"REDIS_URL": "redis://cache:6380/2", "TASKCTL_QUEUES": "critical, bulk", "TASKCTL_RESULT_TTL": "60"},
        env_file=None,
    )

    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.queues == ("critical", "bulk")
    assert settings.default_queue == "critical"  # no queue named "default": the first one
    assert settings.result_ttl == 60
    assert load_settings({"TASKCTL_PREFETCH": "1"}, env_file=None).prefetch == 1


def test_a_dotenv_file_fills_in_what_the_environment_does_not_set(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_URL=redis://fromfile:6379/0\nTASKCTL_JOB_TIMEOUT=30\n")

    settings = load_settings({"TASKCTL_JOB_TIMEOUT": "45"}, env_file=str(env_file))

    assert settings.redis_url == "redis://fromfile:6379/0"
    assert settings.job_timeout == 45


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TASKCTL_RESULT_TTL": "soon"}, "TASKCTL_RESULT_TTL='soon' is not a valid int"),
        ({"TASKCTL_JOB_TIMEOUT": "0"}, "TASKCTL_JOB_TIMEOUT='0' must be greater than 0"),
        ({"TASKCTL_HEARTBEAT_GRACE": "1"}, "TASKCTL_HEARTBEAT_GRACE='1' must be 2 or more"),
        ({"TASKCTL_QUEUES": " , "}, "TASKCTL_QUEUES is empty; expected a comma-separated list"),
        ({"TASKCTL_DEFAULT_QUEUE": "urgent"}, "TASKCTL_DEFAULT_QUEUE='urgent' is not one of TASKCTL_QUEUES"),
        ({"REDIS_URL": "http://:pw@host"}, "REDIS_URL='http://:***@host' must start with redis://"),
        ({"TASKCTL_PREFETCH": "0"}, "TASKCTL_PREFETCH='0' must be 1 or more"),
        ({"TASKCTL_PREFETCH": "500"}, "TASKCTL_PREFETCH='500' must be 100 or less (1 turns it off)"),
        ({"TASKCTL_PREFETCH": "many"}, "TASKCTL_PREFETCH='many' is not a valid int"),
        ({"TASKCTL_OUTBOX_URL": "mysql://u:pw@db/app"}, "TASKCTL_OUTBOX_URL='mysql://u:***@db/app' must start with"),
        ({"TASKCTL_OUTBOX_POLL": "0"}, "TASKCTL_OUTBOX_POLL='0' must be greater than 0"),
        ({"TASKCTL_OUTBOX_BATCH": "lots"}, "TASKCTL_OUTBOX_BATCH='lots' is not a valid int"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_expected(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ, env_file=None)
    assert str(raised.value).startswith(message)


def test_a_bad_setting_stops_the_cli_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKCTL_JOB_TIMEOUT", "forever")

    result = taskctl("jobs")

    assert result.exit_code == 1
    assert result.output == "Error: TASKCTL_JOB_TIMEOUT='forever' is not a valid int\n"


def test_the_outbox_is_the_shops_database_unless_a_url_is_given() -> None:
    assert load_settings({"TASKCTL_DATA_DIR": "/srv/var"}, env_file=None).outbox_database == (
        "sqlite:////srv/var/shop.sqlite3"
    )
    given = load_settings({"TASKCTL_OUTBOX_URL": "postgresql+psycopg://app:pw@db/shop"}, env_file=None)
    assert given.outbox_database == "postgresql+psycopg://app:pw@db/shop"
    assert "pw" not in repr(given)


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
