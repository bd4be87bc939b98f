"""Sessions mapper: rows per table, every validation rule as a dead record with its reason,
chunks, determinism, and a property over arbitrary messages."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.sessions import (
    SESSION_EVENTS_TABLE,
    SESSION_MOVEMENTS_TABLE,
    SESSIONS_BASE_TABLE,
    STATUSES,
    SessionsMapper,
    tables,
)

# the example of docs/input-formats.md, verbatim
EXAMPLE: dict[str, Any] = {
    "session_id": "f1e2d3c4-b5a6-7c8d-9e0f-1a2b3c4d5e6f",
    "vehicle_id": "a1b2c3d4-e5f6-7a8b-9c0d-1e2f3a4b5c6d",
    "order_id": "c1d2e3f4-a5b6-7c8d-9e0f-1a2b3c4d5e6f",
    "status": "en_route",
    "timestamp": "2025-07-19T12:34:56.789Z",
    "start_lat": 40.7527,
    "start_lon": -73.9772,
    "end_lat": 40.7580,
    "end_lon": -73.9855,
    "current_lat": 40.7550,
    "current_lon": -73.9800,
}
T = 1_752_928_496_789_000_000  # 2025-07-19T12:34:56.789Z
SID, VID, OID = EXAMPLE["session_id"], EXAMPLE["vehicle_id"], EXAMPLE["order_id"]
TABLES = {t.name: t for t in SessionsMapper.tables}


def msg(**changes: Any) -> bytes:
    doc = {**EXAMPLE, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def pos(offset: int = 0) -> MessagePosition:
    return MessagePosition("sessions-topic", 3, offset, 0)


def test_an_en_route_ping_is_an_event_and_a_movement() -> None:
    result = SessionsMapper().map(msg(), pos())
    assert result.dead == []
    assert result.rows == {
        "session_events": [(T, SID, VID, OID, "en_route", 40.7550, -73.9800)],
        "session_movements": [(T, SID, VID, 40.7550, -73.9800)],
    }


def test_a_started_message_also_writes_the_session_header() -> None:
    result = SessionsMapper().map(msg(status="started"), pos())
    assert result.rows["sessions_base"] == [
        (SID, VID, OID, T, 40.7527, -73.9772, 40.7580, -73.9855)
    ]
    assert result.rows["session_events"][0][4] == "started"
    assert len(result.rows["session_movements"]) == 1


def test_a_status_update_without_a_position_is_an_event_only() -> None:
    result = SessionsMapper().map(msg(status="delivered", current_lat=..., current_lon=...), pos())
    assert result.rows == {"session_events": [(T, SID, VID, OID, "delivered", None, None)]}


def test_integer_coordinates_and_offsets_are_accepted() -> None:
    result = SessionsMapper().map(
        msg(current_lat=41, current_lon=-74, timestamp="2025-07-19T14:34:56.789+02:00"), pos()
    )
    assert result.rows["session_movements"] == [(T, SID, VID, 41.0, -74.0)]


def test_every_row_fits_its_table() -> None:
    result = SessionsMapper().map(msg(status="started"), pos())
    for name, rows in result.rows.items():
        assert all(len(r) == len(TABLES[name].columns) for r in rows)


def test_tables_declare_first_wins_headers_and_keep_names() -> None:
    base, events, moves = tables(30)
    assert (base.name, events.name, moves.name) == (
        "sessions_base",
        "session_events",
        "session_movements",
    )
    assert base.replacing is not None and base.replacing.keep == "first"
    assert base.replacing.version_column == "started_at" and base.order_by == ("session_id",)
    assert all(t.ttl_days == 30 for t in (base, events, moves))
    assert SESSION_EVENTS_TABLE.entity_column == SESSION_MOVEMENTS_TABLE.entity_column
    assert SESSIONS_BASE_TABLE.entity_column == "session_id"


@pytest.mark.parametrize(
    ("value", "kind", "reason"),
    [
        (b"not json", "decode", "not JSON"),
        (b'{"session_id": ', "decode", "not JSON"),
        (json.dumps([EXAMPLE]).encode(), "decode", "Expected `object`, got `array`"),
        (msg(session_id=...), "invalid_id", "missing required field `session_id`"),
        (msg(vehicle_id=...), "invalid_id", "`vehicle_id`"),
        (msg(order_id=...), "invalid_id", "`order_id`"),
        (msg(session_id=""), "invalid_id", "length >= 1"),
        (msg(session_id="x" * 65), "invalid_id", "length <= 64"),
        (msg(vehicle_id=12), "invalid_id", "$.vehicle_id"),
        (msg(order_id="bad id"), "invalid_id", "ids may only contain"),
        (msg(session_id="ünïcode"), "invalid_id", "ids may only contain"),
        (msg(status="arrived"), "invalid_status", "Invalid enum value 'arrived'"),
        (msg(status="EN_ROUTE"), "invalid_status", "$.status"),
        (msg(status=...), "invalid_status", "missing required field `status`"),
        (msg(current_lat=90.5), "invalid_coordinates", "$.current_lat"),
        (msg(current_lon=-180.01), "invalid_coordinates", "$.current_lon"),
        (msg(start_lat=-91), "invalid_coordinates", "$.start_lat"),
        (msg(end_lon="73.9"), "invalid_coordinates", "$.end_lon"),
        (msg(current_lat=True), "invalid_coordinates", "$.current_lat"),
        (msg(current_lon=...), "invalid_coordinates", "must come together"),
        (msg(status="started", end_lat=...), "invalid_coordinates", "started message needs"),
        (msg(timestamp=...), "invalid_timestamp", "missing required field `timestamp`"),
        (msg(timestamp="19/07/2025 12:34"), "invalid_timestamp", "Invalid RFC3339"),
        (msg(timestamp="2025-07-19T12:34:56"), "invalid_timestamp", "timezone"),
        (msg(timestamp=1752928496), "invalid_timestamp", "$.timestamp"),
        (msg(timestamp="1969-12-31T23:59:59Z"), "invalid_timestamp", "outside 1970"),
        (msg(timestamp="2262-04-12T00:00:00Z"), "invalid_timestamp", "outside 1970"),
    ],
)
def test_bad_messages_are_dead_with_a_reason(value: bytes, kind: str, reason: str) -> None:
    result = SessionsMapper().map(value, pos(42))
    assert result.rows == {}
    (dead,) = result.dead
    assert (dead.kind, dead.position.offset, dead.value) == (kind, 42, value)
    assert reason in dead.reason, dead.reason


def test_nan_is_not_json() -> None:
    (dead,) = SessionsMapper().map(msg().replace(b"40.755,", b"NaN,"), pos()).dead
    assert dead.kind == "decode"


@pytest.mark.parametrize("value", [None, b""])  # b"": how the Kafka reader hands one on
def test_a_tombstone_is_dead(value: bytes | None) -> None:
    (dead,) = SessionsMapper().map(value, pos()).dead
    assert dead.kind == "decode" and "tombstone" in dead.reason


class _Msg:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self.topic = "sessions-topic"
        self.partition = 1
        self.offset = offset
        self.timestamp_ns = 0
        self.value = value


def test_a_chunk_keeps_message_order_and_puts_bad_ones_aside() -> None:
    values = [
        msg(status="started", timestamp="2025-07-19T12:00:00Z"),
        msg(timestamp="2025-07-19T12:00:05Z"),
        b"{}",
        msg(status="delivered", timestamp="2025-07-19T12:00:10Z"),
    ]
    result = SessionsMapper().map_chunk(_Msg(i, v) for i, v in enumerate(values))
    assert result.messages == 4
    assert [r[4] for r in result.rows["session_events"]] == ["started", "en_route", "delivered"]
    assert [d.position.offset for d in result.dead] == [2]
    one_by_one = [SessionsMapper().map(v, pos(i)) for i, v in enumerate(values)]
    assert [r for x in one_by_one for r in x.rows.get("session_events", [])] == result.rows[
        "session_events"
    ]


def test_the_same_bytes_always_give_the_same_rows() -> None:
    m = SessionsMapper()
    a = m.map(msg(status="started"), pos())
    m.commit(a)
    assert (
        m.map(msg(status="started"), pos()).rows
        == a.rows
        == SessionsMapper().map(msg(status="started"), pos()).rows
    )


# -- property: any message lands in exactly one of rows or dead -----------------------------
_lat = st.floats(-90, 90)
_lon = st.floats(-180, 180)
_stamp = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(2261, 12, 31),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
)
_valid = st.fixed_dictionaries(
    {
        "session_id": st.uuids().map(str),
        "vehicle_id": st.uuids().map(str),
        "order_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
        "status": st.sampled_from(STATUSES),
        "timestamp": st.one_of(
            _stamp.map(lambda d: d.isoformat()),
            _stamp.map(lambda d: d.isoformat().replace("+00:00", "Z")),
        ),
        "start_lat": _lat,
        "start_lon": _lon,
        "end_lat": _lat,
        "end_lon": _lon,
        "current_lat": _lat,
        "current_lon": _lon,
    }
)
_wild = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=70),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.datetimes().map(lambda d: d.isoformat()),
)
_mutated = st.tuples(
    _valid, st.sampled_from([*EXAMPLE.keys(), "extra"]), st.one_of(st.just(...), _wild)
).map(
    lambda t: {
        **{k: v for k, v in t[0].items() if k != t[1]},
        **({} if t[2] is ... else {t[1]: t[2]}),
    }
)


def _check_rows(value: bytes, rows: dict[str, list[tuple[object, ...]]]) -> None:
    doc = json.loads(value)
    ((t, sid, vid, oid, status, lat, lon),) = rows["session_events"]
    assert (sid, vid, oid, status) == (
        doc["session_id"],
        doc["vehicle_id"],
        doc["order_id"],
        doc["status"],
    )
    stamp = dt.datetime.fromisoformat(doc["timestamp"])
    assert (
        t == (stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
    )
    assert (lat, lon) == (doc.get("current_lat"), doc.get("current_lon"))
    assert len(rows.get("session_movements", [])) == (lat is not None)
    assert len(rows.get("sessions_base", [])) == (status == "started")
    for name, table_rows in rows.items():
        assert all(len(r) == len(TABLES[name].columns) for r in table_rows)


@settings(max_examples=300, deadline=None)
@given(_valid.map(lambda d: json.dumps(d).encode()))
def test_every_valid_message_maps_to_exactly_its_rows(value: bytes) -> None:
    result = SessionsMapper().map(value, pos())
    assert result.dead == []
    _check_rows(value, result.rows)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_mutated.map(lambda d: json.dumps(d).encode()), st.binary(max_size=60)))
def test_any_message_maps_to_rows_or_dead_never_both(value: bytes) -> None:
    result = SessionsMapper().map(value, pos())
    assert result.messages == 1
    assert bool(result.rows) != bool(result.dead)
    if result.rows:
        _check_rows(value, result.rows)


def test_both_mappers_fit_the_runtime_protocol() -> None:
    from orbitstream.pipelines.mapping import Mapper
    from orbitstream.pipelines.network import NetworkMapper

    mappers: list[Mapper] = [NetworkMapper(), SessionsMapper()]  # checked by mypy
    assert [len(m.tables) for m in mappers] == [4, 3]
    assert SessionsMapper().rollback() == 0


def test_a_message_older_than_the_retention_is_dead_not_deleted_by_the_ttl() -> None:
    """The tables' TTL (the retention) would delete such rows on insert, after they were
    counted as written and their offsets committed: they are refused instead."""
    import time

    from orbitstream.core.times import TimeWindow

    window = TimeWindow.of(3600, 30 * 86400)
    mapper = SessionsMapper(window)
    old = mapper.map(msg(), pos())  # the documented example, from July 2025
    assert old.rows == {}
    (dead,) = old.dead
    assert dead.kind == "invalid_timestamp" and "ORBITSTREAM_TIMESTAMP_MAX_AGE" in dead.reason
    recent = dt.datetime.fromtimestamp(time.time() - 29 * 86400, dt.UTC)
    stamp = recent.isoformat().replace("+00:00", "Z")
    kept = mapper.map(msg(timestamp=stamp, status="started"), pos())
    assert kept.dead == [] and len(kept.rows["sessions_base"]) == 1
    assert SessionsMapper().map(msg(), pos()).dead == []  # no window: no such check
