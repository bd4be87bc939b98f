"""The columnar satellites path gives what SatelliteMapper.map gives, for any points: the same
telemetry rows (as tuples), refused indices and messages, alert rows and state changes; and
decode_columns accepts exactly the bodies Decoder(list[Point]) accepts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orbitstream.core.columns import rows_of
from orbitstream.core.times import TimeWindow
from orbitstream.detect.thresholds import ThresholdRule, ThresholdRules
from orbitstream.pipelines import satellites_columnar
from orbitstream.pipelines.satellites import (
    _MIN_NS,
    MAX_STORAGE_MB,
    TELEMETRY_TABLE,
    Point,
    SatelliteMapper,
    threshold_rules,
)
from orbitstream.pipelines.satellites_columnar import (
    PointColumns,
    commit_columns,
    decode_columns,
    map_columns,
)

NOW_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
STRICT = msgspec.json.Decoder(list[Point])


def _rfc3339() -> st.SearchStrategy[str]:
    """Valid and invalid RFC 3339-ish strings: the plain form Arrow parses and the forms
    msgspec alone decides (t/space separators, z, 7-9 fraction digits, bad fields)."""
    year = st.integers(0, 9999).map(lambda y: f"{y:04d}")
    two = st.integers(0, 61).map(lambda v: f"{v:02d}")
    frac = st.sampled_from(["", ".1", ".123456", ".1234567", ".123456789", ".5"])
    sep = st.sampled_from(["T", "T", "T", "t", " "])
    zone = st.sampled_from(["Z", "Z", "z", "+00:00", "-05:30", "+23:59", "+24:00", "+01:60", ""])
    return st.builds(
        lambda y, mo, d, s, h, mi, se, f, z: f"{y}-{mo}-{d}{s}{h}:{mi}:{se}{f}{z}",
        year,
        st.integers(0, 13).map(lambda v: f"{v:02d}"),
        st.integers(0, 32).map(lambda v: f"{v:02d}"),
        sep,
        st.integers(0, 24).map(lambda v: f"{v:02d}"),
        two,
        two,
        frac,
        zone,
    )


def _near_now() -> st.SearchStrategy[str]:
    return st.integers(-(10**15), 10**15).map(
        lambda off: (
            (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=off))
            .isoformat()
            .replace("+00:00", "Z")
        )
    )


def _valid_forms() -> st.SearchStrategy[str]:
    """Valid RFC 3339 times in the forms msgspec alone decides (t, space, z, offsets,
    more than six fraction digits) and in the plain form, over the whole year range."""
    return st.builds(
        lambda m, sep, frac, zone: (
            f"{m.year:04d}-{m.month:02d}-{m.day:02d}{sep}"
            f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}{frac}{zone}"
        ),
        st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
        st.sampled_from(["T", "t", " "]),
        st.sampled_from(["", ".1", ".123456", ".1234567", ".999999999"]),
        st.sampled_from(["Z", "z", "+00:00", "-05:30", "+23:59", "-23:59"]),
    )


valid_timestamps = st.one_of(
    st.none(),
    st.integers(_MIN_NS, 2**63 - 1),
    st.integers(NOW_NS - 10**16, NOW_NS + 10**16),
    _near_now(),
    _valid_forms(),
)
any_timestamps = st.one_of(valid_timestamps, _rfc3339(), st.integers(), st.text(max_size=40))
ids = st.sampled_from(["SAT-1", "SAT-2", "SAT-3", "sat.4:x_y"])
any_ids = st.one_of(ids, st.text(max_size=5), st.just("SAT\n"))


def _point(
    sid: st.SearchStrategy[str] = ids, ts: st.SearchStrategy[object] = valid_timestamps
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "satellite_id": sid,
            "battery_charge_percent": st.floats(0, 100),
            "storage_usage_mb": st.floats(0, MAX_STORAGE_MB),
            "signal_strength_dbm": st.floats(-200, 0),
        },
        optional={"timestamp": ts},
    )


windows = st.builds(
    TimeWindow,
    st.none() | st.integers(0, 10**16),
    st.none() | st.integers(0, 10**16),
)
rule_sets = st.builds(
    lambda b, s, g, ops: ThresholdRules(
        (
            ThresholdRule("battery_charge_percent", ops[0], b, "battery_low"),
            ThresholdRule("storage_usage_mb", ops[1], s, "storage_high"),
            ThresholdRule("signal_strength_dbm", ops[2], g, "signal_weak"),
        )
    ),
    st.floats(0, 100),
    st.floats(0, MAX_STORAGE_MB),
    st.floats(-200, 0),
    st.tuples(*(st.sampled_from(["<", "<=", ">", ">="]) for _ in range(3))),
)
states = st.dictionaries(
    st.sampled_from(["SAT-1", "SAT-2", "SAT-3"]),
    st.sampled_from(
        [
            ("battery_low",),
            ("storage_high", "signal_weak"),
            ("battery_low", "signal_weak"),
            ("signal_weak", "battery_low"),
        ]  # the last one is not in rule order
    ),
)


def _mappers(
    rules: ThresholdRules, window: TimeWindow, state: dict[str, tuple[str, ...]]
) -> tuple[SatelliteMapper, SatelliteMapper]:
    a, b = SatelliteMapper(rules, window=window), SatelliteMapper(rules, window=window)
    a.alerts.active = dict(state)
    b.alerts.active = dict(state)
    return a, b


@pytest.fixture(params=["visit every watched point", "visit only state changes"])
def sort_above(request: pytest.FixtureRequest) -> Iterator[None]:
    """Both ways of choosing the points the alert tracker sees: the second one (used for
    large batches) forced on every example."""
    saved = satellites_columnar._SORT_ABOVE
    if request.param == "visit only state changes":
        satellites_columnar._SORT_ABOVE = 0
    yield
    satellites_columnar._SORT_ABOVE = saved


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(points=st.lists(_point(), max_size=25), rules=rule_sets, window=windows, state=states)
def test_same_result_as_the_tuple_path(
    sort_above: None,
    points: list[dict[str, Any]],
    rules: ThresholdRules,
    window: TimeWindow,
    state: dict[str, tuple[str, ...]],
) -> None:
    body = msgspec.json.encode(points)
    strict = STRICT.decode(body)
    cols = decode_columns(body)
    assert cols is not None
    tuples, columns = _mappers(rules, window, state)
    want = tuples.map(strict, NOW_NS)
    got = map_columns(columns, cols, NOW_NS)
    event(f"rejected: {bool(want.rejected)}, alert rows: {bool(want.alert_events)}")
    assert rows_of(TELEMETRY_TABLE, got.telemetry) == want.rows["telemetry"]
    assert got.rejected == want.rejected
    assert got.alerts == want.rows.get("alerts", [])
    assert got.alert_changes == want.alert_changes
    assert got.accepted == want.accepted
    tuples.commit(want)
    commit_columns(columns, got)
    assert columns.alerts.active == tuples.alerts.active
    # the Struct input (NDJSON / fallback path) gives the same
    again = map_columns(
        SatelliteMapper(rules, window=window), PointColumns.from_points(strict), NOW_NS
    )
    assert rows_of(TELEMETRY_TABLE, again.telemetry) == want.rows["telemetry"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_point(any_ids, any_timestamps), min_size=1, max_size=3),
    st.floats(-10, 110, allow_nan=False),
)
def test_the_same_bodies_pass(points: list[dict[str, Any]], battery: float) -> None:
    """A body decode_columns accepts is one the strict decoder accepts, and vice versa."""
    points[0]["battery_charge_percent"] = battery
    body = msgspec.json.encode(points)
    try:
        STRICT.decode(body)
        strict_ok = True
    except msgspec.ValidationError:
        strict_ok = False
    assert (decode_columns(body) is not None) == strict_ok


def test_steady_state_batches_with_alerts(sort_above: None) -> None:
    """Several batches in a row, committed: the alert streams stay identical."""
    import random

    r = random.Random(5)
    tuples, columns = _mappers(threshold_rules(), TimeWindow(), {})
    for batch in range(20):
        points = [
            {
                "satellite_id": f"SAT-{r.randint(0, 9)}",
                "battery_charge_percent": r.choice([5.0, 50.0, 80.0]),
                "storage_usage_mb": r.choice([1000.0, 96000.0]) if r.random() < 0.2 else 1.0,
                "signal_strength_dbm": r.choice([-120.0, -50.0]),
                "timestamp": NOW_NS + batch * 1000 + i,
            }
            for i in range(r.choice([5, 50, 300]))
        ]
        body = msgspec.json.encode(points)
        want = tuples.map(STRICT.decode(body), NOW_NS)
        cols = decode_columns(body)
        assert cols is not None
        got = map_columns(columns, cols, NOW_NS)
        assert got.alerts == want.rows.get("alerts", [])
        assert rows_of(TELEMETRY_TABLE, got.telemetry) == want.rows["telemetry"]
        tuples.commit(want)
        commit_columns(columns, got)
    assert columns.alerts.active == tuples.alerts.active
    assert tuples.alerts.active  # the data did open alerts


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'[{"satellite_id": "a b", "battery_charge_percent": 1, '
        b'"storage_usage_mb": 1, "signal_strength_dbm": -1}]',
        b"[1]",
    ],
)
def test_invalid_bodies_go_to_the_exact_path(body: bytes) -> None:
    assert decode_columns(body) is None


def test_out_of_int64_instants_are_refused_with_the_tuple_message() -> None:
    points = [
        {
            "satellite_id": "S",
            "battery_charge_percent": 50,
            "storage_usage_mb": 1,
            "signal_strength_dbm": -50,
            "timestamp": ts,
        }
        for ts in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-01-01T00:00:00Z")
    ]
    body = msgspec.json.encode(points)
    cols = decode_columns(body)
    assert cols is not None
    want = SatelliteMapper(threshold_rules()).map(STRICT.decode(body), NOW_NS)
    got = map_columns(SatelliteMapper(threshold_rules()), cols, NOW_NS)
    assert [i for i, _ in got.rejected] == [0, 1]
    assert got.rejected == want.rejected
    assert got.accepted == 1


@pytest.mark.parametrize(
    "second",
    [
        "2026-00-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:60Z",
        "0000-01-01T00:00:00Z",
        "2024-02-29T00:00:00Z",
        "2026-06-15T12:34:56Z",
        "9999-12-31T23:59:59Z",
    ],
)
@pytest.mark.parametrize("zone", ["Z", "+00:00", "-23:59", "+24:00", "+23:60"])
def test_plain_form_columns_with_out_of_range_fields(second: str, zone: str) -> None:
    """Strings of one plain form, digit for digit, whose fields are out of range: the
    column check leaves the ranges to Arrow, which must refuse what msgspec refuses."""
    first = "2026-01-01T00:00:00" + zone.replace("+24:00", "+23:00").replace("+23:60", "+23:00")
    other = second[:-1] + zone
    points = [
        {
            "satellite_id": "S",
            "battery_charge_percent": 50,
            "storage_usage_mb": 1,
            "signal_strength_dbm": -50,
            "timestamp": ts,
        }
        for ts in (first, other, first)
    ]
    body = msgspec.json.encode(points)
    try:
        strict = STRICT.decode(body)
    except msgspec.ValidationError:
        strict = None
    cols = decode_columns(body)
    assert (cols is None) == (strict is None)
    if strict is not None and cols is not None:
        want = SatelliteMapper(threshold_rules()).map(strict, NOW_NS)
        got = map_columns(SatelliteMapper(threshold_rules()), cols, NOW_NS)
        assert rows_of(TELEMETRY_TABLE, got.telemetry) == want.rows["telemetry"]
        assert got.rejected == want.rejected
