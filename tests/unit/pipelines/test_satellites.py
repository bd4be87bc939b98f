"""Satellite points: validation, timestamps, mapping to rows, anomaly flags, alert dedup."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orbitstream.core.metrics import Metrics
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.satellites import (
    TELEMETRY_TABLE,
    Point,
    SatelliteMapper,
    body_errors,
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
    rows = SatelliteMapper(threshold_rules()).map([p], 1).rows["telemetry"]
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
    ).rows
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
    ).rows
    assert rows["telemetry"][0][5] is False and "alerts" not in rows
    m2 = SatelliteMapper(threshold_rules(battery=50, storage=1000, signal=-10))
    r2 = m2.map([point()]).rows["telemetry"][0]
    assert r2[6] == ("storage_high", "signal_weak")


def test_alerts_fire_once_and_clear_once_per_satellite_and_rule() -> None:
    metrics = Metrics()
    m = SatelliteMapper(threshold_rules(), metrics)
    seq = [85, 8, 7, 6, 9, 50, 50, 4, 60]
    events = []
    for i, b in enumerate(seq):
        mapped = m.map([point(battery_charge_percent=float(b), timestamp=10**18 + i)])
        m.commit(mapped)
        events += mapped.rows.get("alerts", [])
    states = [(e[3], e[4], int(str(e[0])) - 10**18) for e in events]
    assert states == [
        ("battery_low", "firing", 1),
        ("battery_low", "cleared", 5),
        ("battery_low", "firing", 7),
        ("battery_low", "cleared", 8),
    ]
    # another satellite is independent
    other = m.map([point(satellite_id="OTHER", battery_charge_percent=1.0)])
    m.commit(other)
    ev2 = other.rows["alerts"]
    assert ev2[0][2] == "OTHER" and ev2[0][4] == "firing"
    assert metrics.get("alerts", ("satellites", "battery_low", "firing")) == 3


def test_alert_state_restores_from_store() -> None:
    m = SatelliteMapper(threshold_rules())
    m.alerts.restore([("SAT-01", "battery_low"), ("SAT-01", "unknown_rule")])
    assert "alerts" not in m.map([point(battery_charge_percent=3.0)]).rows
    cleared = m.map([point(battery_charge_percent=30.0)]).rows["alerts"]
    assert cleared[0][4] == "cleared"


def test_alert_state_moves_only_when_the_rows_are_committed() -> None:
    metrics = Metrics()
    m = SatelliteMapper(threshold_rules(), metrics)
    refused = m.map([point(battery_charge_percent=3.0)])  # e.g. answered 503: never committed
    assert refused.rows["alerts"][0][4] == "firing"
    assert m.alerts.active == {}
    assert metrics.get("alerts", ("satellites", "battery_low", "firing")) == 0
    again = m.map([point(battery_charge_percent=3.0)])  # the client retries
    assert again.rows["alerts"][0][4] == "firing"  # the firing row is not lost
    m.commit(again)
    assert m.alerts.active == {"SAT-01": ("battery_low",)}
    assert metrics.get("alerts", ("satellites", "battery_low", "firing")) == 1
    assert "alerts" not in m.map([point(battery_charge_percent=2.0)]).rows


def test_one_batch_sees_its_own_alert_changes() -> None:
    m = SatelliteMapper(threshold_rules())
    mapped = m.map(
        [point(battery_charge_percent=b, timestamp=10**18 + i) for i, b in enumerate((3, 2, 50))]
    )
    assert [a[4] for a in mapped.rows["alerts"]] == ["firing", "cleared"]
    m.commit(mapped)
    assert m.alerts.active == {}


def test_timestamps_outside_the_window_are_refused_by_index() -> None:
    now = 1_800_000_000 * 10**9
    hour = 3600 * 10**9
    m = SatelliteMapper(
        threshold_rules(), window=TimeWindow(max_ahead_ns=hour, max_age_ns=24 * hour)
    )
    points = [
        point(timestamp=now),
        point(timestamp=now + 2 * hour),  # ahead of the window
        point(timestamp=now - 25 * hour),  # too old
        point(timestamp="2300-01-01T00:00:00Z"),
        point(timestamp="0001-01-01T00:00:00Z"),  # Go's zero time
        point(timestamp=now + hour),  # the edge is inside
    ]
    mapped = m.map(points, now)
    assert [i for i, _ in mapped.rejected] == [1, 2, 3, 4]
    assert {e.field for _, e in mapped.rejected} == {"timestamp"}
    assert "ahead" in mapped.rejected[0][1].message
    assert "older" in mapped.rejected[1][1].message
    assert [r[0] for r in mapped.rows["telemetry"]] == [now, now + hour]


def test_stores_range_applies_without_a_window() -> None:
    m = SatelliteMapper(threshold_rules())  # no window: only what every store can hold
    mapped = m.map(
        [point(timestamp="2300-01-01T00:00:00Z"), point(timestamp="0001-01-01T00:00:00Z")], 1
    )
    assert len(mapped.rejected) == 2 and mapped.accepted == 0
    assert "latest the stores can hold" in mapped.rejected[0][1].message
    assert "earliest the stores can hold" in mapped.rejected[1][1].message


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b'{"battery_charge_percent": 1e400}', "battery_charge_percent", "out of range"),
        (b'{"storage_usage_mb": -1e400}', "storage_usage_mb", "out of range"),
        (b'{"signal_strength_dbm": 1' + b"0" * 400 + b"}", "signal_strength_dbm", "out of range"),
    ],
)
def test_numbers_no_float_can_hold_are_named(body: bytes, field: str, fragment: str) -> None:
    doc = body[:-1] + b', "satellite_id": "S"}'
    for name in ("battery_charge_percent", "storage_usage_mb", "signal_strength_dbm"):
        if name != field:
            doc = doc[:-1] + b', "' + name.encode() + b'": -1}'
    doc = doc.replace(b'"storage_usage_mb": -1', b'"storage_usage_mb": 1').replace(
        b'"battery_charge_percent": -1', b'"battery_charge_percent": 1'
    )
    errors = body_errors(doc)
    assert [e.field for e in errors] == [field]
    assert fragment in errors[0].message


def test_slow_path_never_raises() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a": "\xff"}', b"\xff", b"", b"nul"):
        errors = body_errors(body)
        assert errors and errors[0].field == "$"


def test_tables_carry_retention() -> None:
    telemetry, alerts = tables(7)
    assert telemetry.ttl_days == 7 and alerts.ttl_days == 7
    assert telemetry.rollups[0].name == "satellite_stats"


def test_kafka_mapping_an_empty_message_is_a_tombstone_the_rest_maps() -> None:
    from orbitstream.pipelines.satellites import SatelliteIngest, SatelliteKafkaMapping
    from orbitstream.sources.kafka import KafkaMessage

    mapping = SatelliteKafkaMapping(SatelliteIngest(SatelliteMapper(threshold_rules())))
    good = msgspec.json.encode({**GOOD, "timestamp": dt.datetime.now(dt.UTC).isoformat()})
    result = mapping.map_chunk(
        [KafkaMessage("raw", 0, 0, None, b"", None), KafkaMessage("raw", 0, 1, None, good, None)]
    )
    ((position, value, kind, reason),) = [
        (d.position, d.value, d.kind, d.reason) for d in result.dead
    ]
    assert (getattr(position, "offset", None), value, kind) == (0, b"", "decode")
    assert "tombstone" in reason  # was msgspec's "Input data was truncated"
    assert len(result.rows["telemetry"]) == 1


def test_kafka_mapping_an_array_keeps_its_good_points_and_dead_letters_each_bad_one() -> None:
    """As over HTTP (``/telemetry/batch``): one bad point of an array does not take the
    others with it. Each bad point is a dead record of its own, its JSON as the value and
    the reason naming its index; a single bad point, or a message that is not JSON, stays
    one dead record of the whole message."""
    from orbitstream.core.times import TimeWindow
    from orbitstream.pipelines.satellites import SatelliteIngest, SatelliteKafkaMapping
    from orbitstream.sources.kafka import KafkaMessage

    window = TimeWindow.of(3600, 30 * 86400)
    mapping = SatelliteKafkaMapping(
        SatelliteIngest(SatelliteMapper(threshold_rules(), window=window))
    )
    now = dt.datetime.now(dt.UTC)
    good = [{**GOOD, "satellite_id": f"SAT-{i}", "timestamp": now.isoformat()} for i in range(3)]
    too_high = {**GOOD, "satellite_id": "SAT-X", "battery_charge_percent": 150.0}
    too_old = {**GOOD, "satellite_id": "SAT-Y", "timestamp": "1999-01-01T00:00:00Z"}
    array = msgspec.json.encode([good[0], too_high, good[1], too_old])
    result = mapping.map_chunk(
        [
            KafkaMessage("raw", 0, 10, None, array, None),
            KafkaMessage("raw", 0, 11, None, msgspec.json.encode(good[2]), None),
            KafkaMessage("raw", 0, 12, None, msgspec.json.encode(too_high), None),
            KafkaMessage("raw", 0, 13, None, b"[{", None),
        ]
    )
    stored = sorted(str(r[1]) for r in result.rows["telemetry"])
    assert stored == ["SAT-0", "SAT-1", "SAT-2"]
    dead = sorted(
        (getattr(d.position, "offset", -1), d.kind, d.reason, d.value) for d in result.dead
    )
    assert [(o, k) for o, k, _, _ in dead] == [
        (10, "invalid"),
        (10, "invalid_timestamp"),
        (12, "invalid"),
        (13, "decode"),
    ]
    assert "$[1].battery_charge_percent" in dead[0][2]
    assert msgspec.json.decode(dead[0][3]) == too_high  # the point alone, not the array
    assert dead[1][2].startswith("$[3].timestamp")
    assert msgspec.json.decode(dead[1][3]) == too_old
    assert msgspec.json.decode(dead[2][3]) == too_high and "battery_charge_percent" in dead[2][2]
    assert dead[3][3] == b"[{"
    assert result.partial == 1  # offset 10: stored and dead-lettered in part
