"""No poison point: values no store can hold are refused at the door (422 naming the
field), on every endpoint, with the embedded store, PostgreSQL and a ClickHouse server
configured at once — and every good point sent before, among and after them lands in
all three, exactly once, with nothing in dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from orbitstream.sinks.clickhouse import ClickHouseSettings
from tests.conftest import ServiceProcess, http, post_json, rfc3339
from tests.integration.postgres.conftest import fresh_database
from tests.support.clickhouse_front import ClickHouseFront

pytestmark = pytest.mark.integration

GOOD = {
    "battery_charge_percent": 50.0,
    "storage_usage_mb": 10.0,
    "signal_strength_dbm": -40.0,
}
# field -> raw JSON values no store can hold (or outside the accepted window)
POISON: list[tuple[str, str]] = [
    ("timestamp", '"2300-01-01T00:00:00Z"'),
    ("timestamp", '"0001-01-01T00:00:00Z"'),  # Go's zero time
    ("timestamp", '"9999-12-31T23:59:59.999999Z"'),
    ("timestamp", str(2**63 - 1)),
    ("timestamp", '"2000-01-01T00:00:00Z"'),  # older than the window
    ("battery_charge_percent", "1e400"),
    ("storage_usage_mb", "1e400"),
    ("storage_usage_mb", "-1e400"),
    ("storage_usage_mb", "1" + "0" * 400),
    ("storage_usage_mb", "1.7976931348623157e308"),  # a float, but its sums overflow
    ("signal_strength_dbm", "-1e400"),
]


def poison_body(sid: str, field: str, raw: str) -> bytes:
    doc = {"satellite_id": sid, **GOOD}
    text = json.dumps({k: v for k, v in doc.items() if k != field})
    return (text[:-1] + f', "{field}": {raw}}}').encode()


def good(sid: str, k: int) -> dict[str, Any]:
    return {"satellite_id": sid, **GOOD, "timestamp": rfc3339(time.time() - 60 + k / 1000)}


def test_poison_is_refused_and_every_good_point_lands_in_every_store(
    service_factory: Any, clickhouse_front: ClickHouseFront, ch_settings: ClickHouseSettings
) -> None:
    with fresh_database() as pg:
        svc: ServiceProcess = service_factory(
            {
                "DATABASE_URL": pg,
                "CLICKHOUSE_URL": clickhouse_front.url,
                "CLICKHOUSE_DB": ch_settings.database,
                "ORBITSTREAM_SINKS": "postgres,chdb,clickhouse",
                "ORBITSTREAM_ACK_MODE": "sink",
                "BATCH_TIMEOUT": "50ms",
            }
        )
        sent = 0
        # single points
        for i, (field, raw) in enumerate(POISON):
            status, _, body = http(
                "POST",
                svc.url + "/telemetry",
                poison_body("P-1", field, raw),
                {"Content-Type": "application/json"},
            )
            doc = json.loads(body)
            assert status == 422, (field, raw, doc)
            assert [e["field"] for e in doc["errors"]] == [field], doc
            status, doc = post_json(svc.url + "/telemetry", good("P-1", i))
            assert status == 202, doc  # committed in all three stores
            sent += 1
        # a batch: good points among the poison, refused by index
        items: list[bytes] = []
        for i, (field, raw) in enumerate(POISON):
            items.append(json.dumps(good("P-2", 2 * i)).encode())
            items.append(poison_body("P-2", field, raw))
        status, _, body = http(
            "POST",
            svc.url + "/telemetry/batch",
            b"[" + b",".join(items) + b"]",
            {"Content-Type": "application/json"},
        )
        doc = json.loads(body)
        assert status == 202 and doc["accepted"] == len(POISON), doc
        assert [e["index"] for e in doc["errors"]] == list(range(1, 2 * len(POISON), 2))
        assert [e["errors"][0]["field"] for e in doc["errors"]] == [f for f, _ in POISON]
        assert "dead_lettered" not in doc
        sent += len(POISON)
        # NDJSON: per line, the stream goes on
        lines = []
        for i, (field, raw) in enumerate(POISON):
            lines.append(poison_body("P-3", field, raw))
            lines.append(json.dumps(good("P-3", i)).encode())
        status, _, body = http(
            "POST",
            svc.url + "/telemetry/ndjson",
            b"\n".join(lines) + b"\n",
            {"Content-Type": "application/x-ndjson"},
        )
        doc = json.loads(body)
        assert status == 202 and doc["accepted"] == len(POISON), doc
        assert [e["line"] for e in doc["errors"]] == list(range(1, 2 * len(POISON), 2))
        sent += len(POISON)
        # later points land too, and nothing is stuck
        status, doc = post_json(svc.url + "/telemetry/batch", [good("P-4", k) for k in range(100)])
        assert status == 202 and doc["accepted"] == 100
        sent += 100
        health = json.loads(http("GET", svc.url + "/health")[2])
        assert health["status"] == "healthy", health
        assert all(s["buffered_rows"] == 0 for s in health["sinks"].values())
        # exactly once in each store, and no dead letters anywhere
        assert svc.count() == sent  # the primary store (PostgreSQL) answers queries
        with psycopg.connect(pg) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (sent,)
            assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        for table, expected in (("telemetry", sent), ("dead_letters", 0)):
            status, _, body = http(
                "POST",
                f"{clickhouse_front.url}/?database={ch_settings.database}",
                f"SELECT count() FROM {table}".encode(),
            )
            assert status == 200 and int(body) == expected, (table, body)
        assert svc.stop() == 0
        assert not (svc.data_dir / "dead_letters.jsonl").exists()
        # the embedded store, read once the service has let go of it
        env = {k: v for k, v in svc.env.items() if k not in ("DATABASE_URL", "ORBITSTREAM_SINKS")}
        for table, expected in (("telemetry", sent), ("dead_letters", 0)):
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "orbitstream", "query"),
                    *(f"SELECT count() AS n FROM {table}", "--format", "json"),
                ],
                env={k: v for k, v in env.items() if not k.startswith("CLICKHOUSE")},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == [{"n": expected}], table
