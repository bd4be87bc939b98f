"""Satellite points: validation, timestamps, mapping to rows, anomaly flags, alert dedup."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orbitstream.core.metrics import Metrics
from orbitstream.pipelines.satellites import (
    TELEMETRY_TABLE,
    Point,
    SatelliteMapper,
    field_errors,
    tables,
    threshold_rules,
    to_ns,
)

DEC = msgspec.json.Decoder(Point)
GOOD = {
    "satellite_id": "SAT-01",
    "battery_charge_percent": 85.5,
    "storage_usage_mb": 45000.0,
    "signal_strength_dbm": -55.0,
}


def point(**kw: object) -> Point:
    return msgspec.convert({**GOOD, **kw}, Point)


def test_seed_point_decodes() -> None:
    p = DEC.decode(msgspec.json.encode(GOOD))
    assert p.satellite_id == "SAT-01" and p.timestamp is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("satellite_id", ""),
        ("satellite_id", "x" * 65),
        ("satellite_id", "bad id"),
        ("satellite_id", "semi;colon"),
        ("battery_charge_percent", 100.01),
        ("battery_charge_percent", -0.1),
        ("battery_charge_percent", "50"),
        ("battery_charge_percent", True),
        ("storage_usage_mb", -1),
        ("signal_strength_dbm", 0.5),
        ("signal_strength_dbm", -200.1),
        ("timestamp", 1_700_000_000),  # seconds, not nanoseconds
        ("timestamp", "2026-11-23T10:00:00"),  # no offset
        ("timestamp", "yesterday"),
        ("timestamp", 1.5e18),
    ],
)
def test_invalid_field_is_named(field: str, value: object) -> None:
    doc = {**GOOD, field: value}
    with pytest.raises(msgspec.ValidationError):
        DEC.decode(msgspec.json.encode(doc))
    errors = field_errors(doc)
    assert [e.field for e in errors] == [field]
    assert errors[0].message


def test_every_bad_field_is_reported_at_once() -> None:
    errors = field_errors(
        {"satellite_id": "a b", "battery_charge_percent": 150, "storage_usage_mb": "x"}
    )
    assert [e.field for e in errors] == [
        "satellite_id",
        "battery_charge_percent",
        "storage_usage_mb",
        "signal_strength_dbm",
    ]
    assert errors[-1].message == "missing required field"


def test_non_object_is_reported() -> None:
    assert field_errors([1, 2])[0].field == "$"


def test_boundaries_are_inclusive() -> None:
    for kw in (
        {"battery_charge_percent": 0},
        {"battery_charge_percent": 100},
        {"storage_usage_mb": 0},
        {"signal_strength_dbm": -200},
        {"signal_strength_dbm": 0},
    ):
        point(**kw)


def test_timestamps_rfc3339_and_epoch_ns() -> None:
    p = point(timestamp="2026-11-23T10:00:00.123456+02:00")
    assert (
        to_ns(p.timestamp, 0)
        == int(dt.datetime(2026, 11, 23, 8, 0, 0, tzinfo=dt.UTC).timestamp()) * 10**9 + 123456000
    )
    assert (
        to_ns(point(timestamp=1_795_000_000_123_456_789).timestamp, 0) == 1_795_000_000_123_456_789
    )
    assert to_ns(None, 42) == 42


@given(
    st.floats(0, 100),
    st.floats(0, 1e9),
    st.floats(-200, 0),
    st.text(alphabet="ABCXYZ019_.:-", min_size=1, max_size=64),
)
def test_valid_points_roundtrip(b: float, s: float, g: float, sid: str) -> None:
    p = DEC.decode(
        msgspec.json.encode(
            {
                "satellite_id": sid,
                "battery_charge_percent": b,
                "storage_usage_mb": s,
                "signal_strength_dbm": g,
            }
        )
    )
    rows = SatelliteMapper(threshold_rules()).map([p], 1)["telemetry"]
    assert rows[0][1:5] == (sid, b, s, g)


def test_mapping_row_matches_table_and_flags_anomalies() -> None:
    m = SatelliteMapper(threshold_rules())
    out = m.map(
        [
            point(
                battery_charge_percent=5.0,
                signal_strength_dbm=-120.0,
                timestamp=2_000_000_000_000_000_000,
            )
        ],
        99,
    )
    (row,) = out["telemetry"]
    assert len(row) == len(TELEMETRY_TABLE.columns)
    rec = dict(zip(TELEMETRY_TABLE.column_names, row, strict=True))
    assert rec["time"] == 2_000_000_000_000_000_000 and rec["received_at"] == 99
    assert rec["is_anomaly"] is True
    assert rec["anomaly_reasons"] == ("battery_low", "signal_weak")
    assert {a[3] for a in out["alerts"]} == {"battery_low", "signal_weak"}


def test_thresholds_are_strict_and_configurable() -> None:
    m = SatelliteMapper(threshold_rules())
    rows = m.map(
        [point(battery_charge_percent=10.0, storage_usage_mb=95000.0, signal_strength_dbm=-100.0)]
    )
    assert rows["telemetry"][0][5] is False and "alerts" not in rows
    m2 = SatelliteMapper(threshold_rules(battery=50, storage=1000, signal=-10))
    r2 = m2.map([point()])["telemetry"][0]
    assert r2[6] == ("storage_high", "signal_weak")


def test_alerts_fire_once_and_clear_once_per_satellite_and_rule() -> None:
    metrics = Metrics()
    m = SatelliteMapper(threshold_rules(), metrics)
    seq = [85, 8, 7, 6, 9, 50, 50, 4, 60]
    events = []
    for i, b in enumerate(seq):
        events += m.map([point(battery_charge_percent=float(b), timestamp=10**18 + i)]).get(
            "alerts", []
        )
    states = [(e[3], e[4], int(str(e[0])) - 10**18) for e in events]
    assert states == [
        ("battery_low", "firing", 1),
        ("battery_low", "cleared", 5),
        ("battery_low", "firing", 7),
        ("battery_low", "cleared", 8),
    ]
    # another satellite is independent
    ev2 = m.map([point(satellite_id="OTHER", battery_charge_percent=1.0)])["alerts"]
    assert ev2[0][2] == "OTHER" and ev2[0][4] == "firing"
    assert metrics.get("alerts", ("satellites", "battery_low", "firing")) == 3


def test_alert_state_restores_from_store() -> None:
    m = SatelliteMapper(threshold_rules())
    m.alerts.restore([("SAT-01", "battery_low"), ("SAT-01", "unknown_rule")])
    assert "alerts" not in m.map([point(battery_charge_percent=3.0)])
    cleared = m.map([point(battery_charge_percent=30.0)])["alerts"]
    assert cleared[0][4] == "cleared"


def test_tables_carry_retention() -> None:
    telemetry, alerts = tables(7)
    assert telemetry.ttl_days == 7 and alerts.ttl_days == 7
    assert telemetry.rollups[0].name == "satellite_stats"
