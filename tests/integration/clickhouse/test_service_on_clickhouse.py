"""The service writing to a ClickHouse server over HTTP (the chDB front in tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orbitstream.sinks.clickhouse import ClickHouseSettings
from tests.conftest import ServiceProcess, http, post_json
from tests.support.clickhouse_front import ClickHouseFront

pytestmark = pytest.mark.integration

GOOD = {"battery_charge_percent": 85.5, "storage_usage_mb": 45000.0, "signal_strength_dbm": -55.0}


def _count(front: ClickHouseFront, db: str, table: str = "telemetry") -> int:
    status, _, body = http(
        "POST", f"{front.url}/?database={db}", f"SELECT count() FROM {table}".encode()
    )
    assert status == 200, body
    return int(body.strip())


def test_clickhouse_as_primary_store(
    service_factory: Any, clickhouse_front: ClickHouseFront, ch_settings: ClickHouseSettings
) -> None:
    url = clickhouse_front.url
    dsn = url.replace("http://", "clickhouse://") + "/" + ch_settings.database
    svc: ServiceProcess = service_factory(
        {"DATABASE_URL": dsn, "BATCH_TIMEOUT": "100ms", "ORBITSTREAM_ACK_MODE": "sink"}
    )
    status, doc = post_json(
        svc.url + "/telemetry/batch",
        [{"satellite_id": f"CH-{i % 3}", **GOOD} for i in range(30)]
        + [{"satellite_id": "CHX", **GOOD, "signal_strength_dbm": -150.0}],
    )
    assert status == 202 and doc["accepted"] == 31
    assert _count(clickhouse_front, ch_settings.database) == 31
    status, _, body = http("GET", svc.url + "/api/dashboard/summary")
    summary = json.loads(body)
    assert status == 200 and summary["total_points"] == 31
    assert [a["entity_id"] for a in summary["active_alerts"]] == ["CHX"]
    assert svc.query("SELECT count() FROM telemetry WHERE satellite_id = 'CH-0'") == [[10]]
    status, _, body = http("GET", svc.url + "/health")
    assert status == 200 and json.loads(body)["sinks"]["clickhouse"]["status"] == "up"
    assert svc.stop() == 0


def test_clickhouse_outage_then_recovery_with_fan_out(
    service_factory: Any, clickhouse_front: ClickHouseFront, ch_settings: ClickHouseSettings
) -> None:
    svc: ServiceProcess = service_factory(
        {
            "CLICKHOUSE_URL": clickhouse_front.url,
            "CLICKHOUSE_DB": ch_settings.database,
            "BATCH_TIMEOUT": "100ms",
            "ORBITSTREAM_RETRY_MAX_BACKOFF": "200ms",
        }
    )
    status, _, body = http("GET", svc.url + "/health")
    assert set(json.loads(body)["sinks"]) == {"chdb", "clickhouse"}
    clickhouse_front.down = True
    for k in range(5):
        assert (
            post_json(
                svc.url + "/telemetry/batch",
                [{"satellite_id": f"O-{k}-{i}", **GOOD} for i in range(100)],
            )[0]
            == 202
        )
    assert svc.wait_count(500) == 500  # chDB is not held back by the ClickHouse outage
    status, _, body = http("GET", svc.url + "/health")
    health = json.loads(body)
    assert status == 503 and health["sinks"]["clickhouse"]["status"] == "down"
    assert health["sinks"]["chdb"]["status"] == "up"
    clickhouse_front.down = False
    import time

    deadline = time.monotonic() + 20
    while _count(clickhouse_front, ch_settings.database) < 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(clickhouse_front, ch_settings.database) == 500
    assert svc.stop() == 0
