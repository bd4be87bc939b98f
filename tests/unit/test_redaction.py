"""Secrets are masked whatever characters they hold."""

from __future__ import annotations

import json
import logging

import pytest

from orbitstream.errors import ConfigError
from orbitstream.logging import JsonFormatter
from orbitstream.redaction import redact_url
from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
from orbitstream.sinks.postgres.settings import PostgresSettings

SECRETS = ["s3cret", "pa/ss", "p@ss", "a:b/c?d#e@f", "x%2Fy", "p//w", "?sslmode=x"]


@pytest.mark.parametrize("password", SECRETS)
def test_password_in_user_info_is_masked(password: str) -> None:
    for scheme in ("postgres", "postgresql", "clickhouse", "https"):
        url = f"{scheme}://alice:{password}@db.example:5432/orbit?sslmode=require"
        shown = redact_url(url)
        assert password not in shown
        assert shown.startswith(f"{scheme}://alice:***@")


def test_password_in_query_is_masked_and_urls_without_one_are_kept() -> None:
    assert redact_url("postgresql://h/db?sslmode=x&password=pa/ss@x") == (
        "postgresql://h/db?sslmode=x&password=***"
    )
    assert redact_url("postgresql://bob@h:5432/db") == "postgresql://bob@h:5432/db"
    assert redact_url("not a url") == "not a url"


@pytest.mark.parametrize("password", SECRETS)
def test_settings_errors_and_reprs_never_show_the_password(password: str) -> None:
    s = PostgresSettings(dsn=f"postgres://alice:{password}@db.example/orbit")
    assert password not in repr(s) and password not in s.redacted_dsn
    with pytest.raises(ConfigError) as info:
        ClickHouseSettings.from_url(f"clickhouse://alice:{password}@db.example:0/x")
    assert password not in str(info.value)


def test_log_fields_named_like_secrets_are_masked_unless_numbers() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "Token minted.", None, None)
    record.__dict__.update(
        {"token_requests": 3, "access_token": "eyJ.secret", "client_secret": "s3", "x": 1}
    )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["token_requests"] == 3 and doc["x"] == 1
    assert doc["access_token"] == "***" and doc["client_secret"] == "***"
    assert "eyJ" not in JsonFormatter().format(record)
