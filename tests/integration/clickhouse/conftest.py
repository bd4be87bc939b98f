"""ClickHouse fixtures: the chDB-backed HTTP front, or a real server named by
``ORBITSTREAM_TEST_CLICKHOUSE_URL`` (e.g. ``http://default:pw@127.0.0.1:8123``).

Every test gets a fresh random database. Fault injection needs the front: tests that use
:func:`clickhouse_front` are skipped against a real server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from orbitstream.sinks.clickhouse import ClickHouseSettings
from tests.conftest import _has_chdb, http, require
from tests.support.clickhouse_front import ClickHouseFront

ENV_URL = "ORBITSTREAM_TEST_CLICKHOUSE_URL"


@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    """The server under test: its settings (database ``default``) and the front, if any."""

    settings: ClickHouseSettings
    front: ClickHouseFront | None

    def command(self, sql: str, *, database: str | None = None) -> bytes:
        """Run one statement over plain HTTP (no client library); raise on an error."""
        s = self.settings
        status, _, body = http(
            "POST",
            s.url + "/" + (f"?database={quote(database)}" if database else ""),
            sql.encode(),
            {"X-ClickHouse-User": s.user, "X-ClickHouse-Key": s.password.get_secret_value()},
        )
        assert status == 200, body
        return body


@pytest.fixture
def clickhouse_target(tmp_path: Path) -> Iterator[ClickHouseTarget]:
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        yield ClickHouseTarget(ClickHouseSettings.from_url(url, setting=ENV_URL), None)
        return
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    front = ClickHouseFront(tmp_path / "clickhouse-front").start()
    try:
        yield ClickHouseTarget(ClickHouseSettings(url=front.url, database="default"), front)
    finally:
        front.stop()


@pytest.fixture
def clickhouse_front(clickhouse_target: ClickHouseTarget) -> ClickHouseFront:
    """The chDB front (for fault injection); skips against a real server."""
    if clickhouse_target.front is None:
        pytest.skip(f"fault injection needs the chDB front ({ENV_URL} is set)")
    return clickhouse_target.front


@pytest.fixture
def ch_settings(clickhouse_target: ClickHouseTarget) -> Iterator[ClickHouseSettings]:
    """Settings for a fresh random database (dropped afterwards on a real server)."""
    database = f"orbitstream_test_{uuid.uuid4().hex[:12]}"
    yield clickhouse_target.settings.with_database(database)
    if clickhouse_target.front is None:
        clickhouse_target.command(f"DROP DATABASE IF EXISTS `{database}`")
