"""Binary COPY encoding on bytes (the real server decodes it in the integration tests)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.core.batch import Batch, Row
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.pipelines.satellites import TELEMETRY_TABLE
from orbitstream.sinks.postgres.encoding import (
    COPY_HEADER,
    COPY_TRAILER,
    PG_EPOCH_US,
    CopyEncoder,
    EncodeError,
    encode_batch,
    encoder_for,
    text_array,
)

NS_2000 = PG_EPOCH_US * 1000

ALL = Table(
    "all_types",
    (
        Column("time", ColType.TIMESTAMP),
        Column("s", ColType.STRING),
        Column("f", ColType.FLOAT64),
        Column("i", ColType.INT64),
        Column("u", ColType.UINT64),
        Column("b", ColType.BOOL),
        Column("l", ColType.STRING_LIST),
        Column("mf", ColType.MAP_STR_FLOAT),
        Column("ms", ColType.MAP_STR_STR),
    ),
    time_column="time",
    order_by=("time",),
)


def field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def test_empty_stream_is_header_and_trailer() -> None:
    assert COPY_HEADER == b"PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    assert len(COPY_HEADER) == 19
    assert CopyEncoder(TELEMETRY_TABLE).encode([]) == COPY_HEADER + b"\xff\xff"


def test_one_row_of_every_type_byte_for_byte() -> None:
    row: Row = (
        NS_2000 + 1_500,  # 1.5 µs after 2000-01-01: floors to 1 µs
        "é",
        -2.5,
        -7,
        2**63 - 1,
        True,
        ("a", "bc"),
        {"x": 1.5},
        {"k": "v"},
    )
    expected = (
        COPY_HEADER
        + struct.pack(">h", 9)
        + field(struct.pack(">q", 1))
        + field("é".encode())
        + field(struct.pack(">d", -2.5))
        + field(struct.pack(">q", -7))
        + field(struct.pack(">q", 2**63 - 1))
        + field(b"\x01")
        + field(struct.pack(">iiiii", 1, 0, 25, 2, 1) + field(b"a") + field(b"bc"))
        + field(b'\x01{"x":1.5}')
        + field(b'\x01{"k":"v"}')
        + COPY_TRAILER
    )
    assert CopyEncoder(ALL).encode([row]) == expected


def test_timestamps_floor_to_microseconds_before_2000() -> None:
    t = Table("t", (Column("time", ColType.TIMESTAMP),), "time", ("time",))
    data = CopyEncoder(t).encode([(NS_2000 - 1,), (0,)])
    body = data[len(COPY_HEADER) : -2]
    assert body == (
        struct.pack(">hiq", 1, 8, -1)  # one ns before 2000 is -1 µs, not 0
        + struct.pack(">hiq", 1, 8, -PG_EPOCH_US)  # the Unix epoch
    )


def test_text_arrays_empty_and_with_null() -> None:
    assert text_array(()) == struct.pack(">iii", 0, 0, 25)
    assert text_array(("a", None)) == (
        struct.pack(">iiiii", 1, 1, 25, 2, 1) + field(b"a") + b"\xff\xff\xff\xff"
    )


def test_none_in_a_not_null_column_is_sent_as_null() -> None:
    rows: list[Row] = [sat_row(0), sat_row(1)]
    rows[1] = (*rows[1][:2], None, *rows[1][3:])
    data = CopyEncoder(TELEMETRY_TABLE).encode(rows)
    second = data[len(COPY_HEADER) + len(one_row(rows[0])) :]
    # field count, time, satellite_id, then the NULL battery
    offset = 2 + 12 + 4 + len(str(rows[1][1]).encode())
    assert second[offset : offset + 4] == b"\xff\xff\xff\xff"
    assert data.endswith(COPY_TRAILER)


@pytest.mark.parametrize(
    ("index", "value", "column"),
    [
        (2, "not a float", "battery_charge_percent"),
        (0, 1.5e18, "time"),
        (1, 42, "satellite_id"),
        (6, "battery_low", "anomaly_reasons"),
    ],
)
def test_wrong_types_raise_encode_error_naming_column_and_row(
    index: int, value: object, column: str
) -> None:
    rows = [sat_row(i) for i in range(5)]
    bad = list(rows[3])
    bad[index] = value
    rows[3] = tuple(bad)
    with pytest.raises(EncodeError) as info:
        CopyEncoder(TELEMETRY_TABLE).encode(rows)
    assert info.value.column == column
    assert info.value.row_index == 3


def test_uint64_beyond_bigint_is_refused() -> None:
    with pytest.raises(EncodeError, match="column u"):
        CopyEncoder(ALL).encode([(NS_2000, "", 0.0, 0, 2**63, False, (), {}, {})])


def test_row_of_wrong_width_is_refused() -> None:
    with pytest.raises(EncodeError, match="columns"):
        CopyEncoder(TELEMETRY_TABLE).encode([sat_row(0), sat_row(1)[:-1]])


def test_lists_are_accepted_for_text_arrays() -> None:
    a = CopyEncoder(TELEMETRY_TABLE).encode([sat_row(0, reasons=("x", "y"))])
    row = sat_row(0, anomaly=True)
    b = CopyEncoder(TELEMETRY_TABLE).encode([(*row[:6], ["x", "y"], row[7])])
    assert a == b


def test_nullable_columns_are_encoded_row_by_row() -> None:
    t = Table(
        "n",
        (Column("time", ColType.TIMESTAMP), Column("v", ColType.FLOAT64, nullable=True)),
        "time",
        ("time",),
    )
    data = CopyEncoder(t).encode([(NS_2000, None), (NS_2000, 1.0)])
    assert data == (
        COPY_HEADER
        + struct.pack(">hiq", 2, 8, 0)
        + b"\xff\xff\xff\xff"
        + struct.pack(">hiqid", 2, 8, 0, 8, 1.0)
        + COPY_TRAILER
    )


def test_memo_stays_bounded_and_correct() -> None:
    enc = CopyEncoder(TELEMETRY_TABLE)
    for start in range(0, 6000, 1000):
        rows = [sat_row(i, reasons=(f"r{i}",)) for i in range(start, start + 1000)]
        assert enc.encode(rows) == enc._encode_slow(rows)


def test_encoder_is_cached_per_table_and_encode_batch_uses_it() -> None:
    assert encoder_for(TELEMETRY_TABLE) is encoder_for(TELEMETRY_TABLE)
    rows = [sat_row(i) for i in range(3)]
    assert encode_batch(Batch(TELEMETRY_TABLE, rows, "b")) == CopyEncoder(TELEMETRY_TABLE).encode(
        rows
    )


reasons_st = st.sampled_from(
    [(), ("battery_low",), ("signal_weak",), ("battery_low", "storage_high", "signal_weak")]
)
row_st = st.tuples(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=64),
    st.floats(width=64),
    st.booleans(),
    st.one_of(reasons_st, st.lists(st.text(max_size=5), max_size=3).map(tuple)),
    st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(row_st, min_size=1, max_size=30))
def test_fast_path_equals_careful_path(rows: list[Row]) -> None:
    enc = CopyEncoder(TELEMETRY_TABLE)
    assert enc.encode(rows) == enc._encode_slow(rows)


def sat_row(
    i: int,
    *,
    t: int | None = None,
    sid: str | None = None,
    battery: float = 50.0,
    anomaly: bool = False,
    reasons: tuple[str, ...] = (),
) -> Row:
    ts = t if t is not None else 1_700_000_000_000_000_000 + i * 1_001
    return (
        ts,
        sid or f"SAT-{i % 7}",
        battery,
        1000.0 + i,
        -60.0 - (i % 5),
        anomaly or bool(reasons),
        reasons,
        ts + 5,
    )


def one_row(row: Row) -> bytes:
    return CopyEncoder(TELEMETRY_TABLE).encode([row])[len(COPY_HEADER) : -2]


def test_float_specials_round_trip_in_bytes() -> None:
    for value in (math.inf, -math.inf, -0.0):
        body = one_row(sat_row(0, battery=value))
        assert struct.pack(">d", value) in body
