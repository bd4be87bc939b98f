"""The service with DATABASE_URL=postgres://…: ingest, dashboard, query, fan-out to chDB."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from orbitstream.sinks.chdb import ChdbSink
from tests.conftest import ServiceProcess, free_port, http, post_json, rfc3339

pytestmark = pytest.mark.integration

GOOD = {"battery_charge_percent": 85.5, "storage_usage_mb": 45000.0, "signal_strength_dbm": -55.0}


def test_service_writes_postgres_and_serves_dashboard(service_factory: Any, pg_dsn: str) -> None:
    svc: ServiceProcess = service_factory(
        {"DATABASE_URL": pg_dsn, "BATCH_TIMEOUT": "100ms", "ORBITSTREAM_ACK_MODE": "sink"}
    )
    status, doc = post_json(
        svc.url + "/telemetry", {"satellite_id": "PGX", **GOOD, "battery_charge_percent": 3.0}
    )
    assert status == 202 and doc["ack"] == "sink"
    base = time.time() - 3600
    batch = [
        {"satellite_id": f"PG-{i % 5}", **GOOD, "timestamp": rfc3339(base + i)} for i in range(50)
    ]
    status, doc = post_json(svc.url + "/telemetry/batch", batch)
    assert status == 202 and doc["accepted"] == 50
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (51,)
        row = conn.execute(
            "SELECT is_anomaly, anomaly_reasons FROM telemetry WHERE battery_charge_percent = 3"
        ).fetchone()
        assert row == (True, ["battery_low"])
        assert conn.execute("SELECT entity_id, rule, state FROM alerts").fetchall() == [
            ("PGX", "battery_low", "firing")
        ]
        assert conn.execute("SELECT sum(data_points) FROM satellite_stats").fetchone() == (51,)
    status, _, body = http("GET", svc.url + "/health")
    assert status == 200 and json.loads(body)["sinks"]["postgres"]["status"] == "up"
    status, _, body = http("GET", svc.url + "/api/dashboard/summary")
    summary = json.loads(body)
    assert status == 200, summary
    assert summary["total_points"] == 51 and summary["total_anomalies"] == 1
    assert [a["entity_id"] for a in summary["active_alerts"]] == ["PGX"]
    assert {s["satellite_id"] for s in summary["satellites"]} == {"PGX"} | {
        f"PG-{i}" for i in range(5)
    }
    status, _, body = http("GET", svc.url + "/api/dashboard/series?satellite_id=PGX&minutes=60")
    assert status == 200 and len(json.loads(body)["t"]) >= 1
    assert svc.query("SELECT count(*) AS n FROM telemetry WHERE satellite_id = 'PG-0'") == [[10]]
    status, doc = post_json(svc.url + "/api/query", {"sql": "DELETE FROM telemetry"})
    assert status == 400
    assert svc.stop() == 0


def test_fan_out_to_postgres_and_chdb(service_factory: Any, pg_dsn: str) -> None:
    svc: ServiceProcess = service_factory(
        {
            "DATABASE_URL": pg_dsn,
            "ORBITSTREAM_SINKS": "postgres,chdb",
            "BATCH_TIMEOUT": "100ms",
            "ORBITSTREAM_ACK_MODE": "sink",
        }
    )
    for k in range(4):
        status, doc = post_json(
            svc.url + "/telemetry/batch",
            [{"satellite_id": f"F-{k}-{i}", **GOOD} for i in range(250)],
        )
        assert status == 202 and doc["accepted"] == 250
    status, _, body = http("GET", svc.url + "/health")
    assert set(json.loads(body)["sinks"]) == {"postgres", "chdb"}
    assert svc.stop() == 0
    with psycopg.connect(pg_dsn) as conn:
        pg_ids = {r[0] for r in conn.execute("SELECT satellite_id FROM telemetry").fetchall()}
    store = ChdbSink(svc.data_dir / "chdb")
    try:
        ch_ids = {r[0] for r in store.query_sync("SELECT satellite_id FROM telemetry").rows}
    finally:
        store.close_sync()
    assert pg_ids == ch_ids and len(pg_ids) == 1000


def test_unreachable_store_at_start_is_a_clear_error(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path),
        "PORT": str(free_port()),
        "DATABASE_URL": "postgresql://postgres:s3cret@127.0.0.1:1/nowhere",
        "ORBITSTREAM_START_TIMEOUT": "2s",
    }
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 2
    assert "not reachable" in out.stderr and "DATABASE_URL" in out.stderr
    assert "Connection refused" in out.stderr  # the cause, not just "the pool timed out"
    assert "s3cret" not in out.stderr + out.stdout
    # the start timeout bounds the start: each attempt was the pool's whole 10 s
    # connect timeout (12 s with a 1 s start timeout), though every connection was
    # refused at once
    assert took < 2 + 6, took  # the start timeout, the interpreter's start, a margin
