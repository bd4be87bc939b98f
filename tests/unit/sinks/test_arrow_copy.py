"""pgpq encoding (ArrowCopyEncoder) against our CopyEncoder, on bytes; the error behaviour
(bad values named by row); map columns as JSON text equal to the dicts."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.core.batch import Row
from orbitstream.core.columns import record_batch
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.pipelines.satellites import TELEMETRY_TABLE
from orbitstream.sinks.postgres.arrow_copy import (
    ArrowCopyEncoder,
    _text_array_fields,
    json_maps,
)
from orbitstream.sinks.postgres.encoding import CopyEncoder, EncodeError

SCALARS = Table(
    "scalars",
    (
        Column("time", ColType.TIMESTAMP),
        Column("name", ColType.STRING),
        Column("value", ColType.FLOAT64),
        Column("count", ColType.INT64),
        Column("big", ColType.UINT64),
        Column("flag", ColType.BOOL),
        Column("tags", ColType.STRING_LIST),
    ),
    time_column="time",
    order_by=("time",),
)
MAPS = Table(
    "maps",
    (
        Column("time", ColType.TIMESTAMP),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
    ),
    time_column="time",
    order_by=("time",),
)
NOW_NS = 1_767_225_600_000_000_000
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**63) + 1, 2**63 - 1),
            texts,
            st.floats(),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(0, 2**63 - 1),
            st.booleans(),
            st.lists(texts, min_size=1, max_size=3).map(tuple),
        ),
        max_size=20,
    )
)
def test_same_bytes_as_ours_when_no_list_is_empty(rows: list[Row]) -> None:
    """Timestamps floored to µs (negative ones too), floats, ints, text, text[]: byte for
    byte. (An empty text[] differs: ours sends ndim 0, pgpq ndim 1 with size 0; PostgreSQL
    stores both as '{}', checked in the integration test.)"""
    ours = CopyEncoder(SCALARS).encode(rows)
    theirs = ArrowCopyEncoder(SCALARS).encode(record_batch(SCALARS, rows))
    assert theirs == ours


def test_satellite_rows_with_reasons_are_byte_equal() -> None:
    rows: list[Row] = [
        (
            1_767_225_600_000_000_123,
            f"SAT-{i}",
            5.0,
            96000.0,
            -120.0,
            True,
            ("battery_low", "storage_high", "signal_weak")[: i % 3 + 1],
            1_767_225_600_000_000_999,
        )
        for i in range(10)
    ]
    data = record_batch(TELEMETRY_TABLE, rows)
    assert ArrowCopyEncoder(TELEMETRY_TABLE).encode(data) == CopyEncoder(TELEMETRY_TABLE).encode(
        rows
    )
    # several record batches make one stream
    two = ArrowCopyEncoder(TELEMETRY_TABLE).encode([data.slice(0, 4), data.slice(4)])
    assert two == CopyEncoder(TELEMETRY_TABLE).encode(rows)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=6), st.floats(), max_size=5),
            st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=5),
        ),
        max_size=10,
    )
)
def test_maps_become_the_json_of_the_dicts(
    maps: list[tuple[dict[str, float], dict[str, str]]],
) -> None:
    rows = [(0, m, i) for m, i in maps]
    data = record_batch(MAPS, rows)
    metrics = json_maps(data.column(1)).to_pylist()
    info = json_maps(data.column(2)).to_pylist()
    for (m, i), m_text, i_text in zip(maps, metrics, info, strict=True):
        assert json.loads(i_text) == i
        assert json.loads(m_text) == {k: (v if math.isfinite(v) else None) for k, v in m.items()}
        # and each number is the numeric the tuple path's text is, scale included
        # (jsonb keeps it: 1.0 reads back as a float, 1 as an integer)
        ours = msgspec.json.encode({k: (v if math.isfinite(v) else None) for k, v in m.items()})
        assert _numerics(m_text) == _numerics(ours.decode())


def _numerics(text: str) -> dict[str, tuple[Decimal, int] | None]:
    """Each value of a JSON object of numbers as PostgreSQL's numeric reads it: the value
    and its display scale (digits after the point, never negative)."""
    out: dict[str, tuple[Decimal, int] | None] = {}
    for key, value in json.loads(text, parse_float=Decimal, parse_int=Decimal).items():
        if value is None:
            out[key] = None
            continue
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        out[key] = (value, max(0, -exponent))
    return out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200))
def test_float_values_keep_the_tuple_paths_numeric_and_scale(values: list[float]) -> None:
    """Whole floats (``1.0``, ``-0.0``, ``1e15``) included, which Arrow alone writes as
    ``1`` or ``1e+15``."""
    edges = [0.0, -0.0, 1.0, -1.0, 1e15, 9007199254740994.0, 1e16 - 2, 1e16, 1e22, 5e-324]
    maps = [{f"k{j}": v} for j, v in enumerate([*edges, *values])]
    rows: list[Row] = [(0, m, {}) for m in maps]
    texts = json_maps(record_batch(MAPS, rows).column(1)).to_pylist()
    for m, text in zip(maps, texts, strict=True):
        assert _numerics(text) == _numerics(msgspec.json.encode(m).decode()), text


def test_sliced_and_null_maps() -> None:
    arr = pa.array(
        [[("a", 1.0)], None, [("b", 2.5), ("c", 1e20)], []], pa.map_(pa.string(), pa.float64())
    )
    assert json_maps(arr).to_pylist() == ['{"a":1.0}', None, '{"b":2.5,"c":1e+20}', "{}"]
    assert json_maps(arr.slice(2)).to_pylist() == ['{"b":2.5,"c":1e+20}', "{}"]


def _bad(table: Table, rows: list[Row]) -> tuple[EncodeError, tuple[int, ...]]:
    enc = ArrowCopyEncoder(table)
    data = record_batch(table, rows)
    with pytest.raises(EncodeError) as info:
        enc.encode(data)
    return info.value, enc.bad_rows(data)


def _scalar_row(**change: Any) -> Row:
    row: dict[str, Any] = {
        "time": 0,
        "name": "a",
        "value": 1.0,
        "count": 1,
        "big": 1,
        "flag": True,
        "tags": ("x",),
    }
    row.update(change)
    return tuple(row.values())


def test_a_null_in_a_not_null_column_names_its_row() -> None:
    exc, bad = _bad(SCALARS, [_scalar_row(), _scalar_row(name=None), _scalar_row(value=None)])
    assert (exc.column, exc.row_index) == ("name", 1)
    assert bad == (1, 2)


def test_uint64_above_bigint_names_its_row() -> None:
    exc, bad = _bad(SCALARS, [_scalar_row(), _scalar_row(), _scalar_row(big=2**63)])
    assert (exc.column, exc.row_index) == ("big", 2)
    assert bad == (2,)
    # ours refuses the same row
    assert CopyEncoder(SCALARS).bad_rows(
        [_scalar_row(), _scalar_row(), _scalar_row(big=2**63)]
    ) == (2,)


def test_nul_characters_name_their_rows() -> None:
    exc, bad = _bad(
        SCALARS, [_scalar_row(), _scalar_row(tags=("ok", "n\x00l")), _scalar_row(name="a\x00")]
    )
    assert (exc.column, exc.row_index) == ("tags", 1)  # the first in row order
    assert bad == (1, 2)
    exc, bad = _bad(MAPS, [(0, {}, {}), (0, {"k\x00": 1.0}, {}), (0, {}, {"k": "v\x00"})])
    assert (exc.column, exc.row_index) == ("metrics", 1)
    assert bad == (1, 2)


def test_error_row_index_counts_across_batches() -> None:
    rows = [_scalar_row(), _scalar_row(), _scalar_row(name=None)]
    data = record_batch(SCALARS, rows)
    with pytest.raises(EncodeError) as info:
        ArrowCopyEncoder(SCALARS).encode([data.slice(0, 2), data.slice(2)])
    assert info.value.row_index == 2


def test_good_rows_have_no_bad_rows() -> None:
    data = record_batch(SCALARS, [_scalar_row(), _scalar_row(tags=())])
    assert ArrowCopyEncoder(SCALARS).bad_rows(data) == ()


def test_sliced_batches_are_checked_and_encoded_by_their_own_rows() -> None:
    rows: list[Row] = [(i, {f"k{i}": 1.0}, {"v": "x\x00" if i == 1 else "ok"}) for i in range(6)]
    data = record_batch(MAPS, rows)
    enc = ArrowCopyEncoder(MAPS)
    assert enc.bad_rows(data) == (1,)
    assert enc.bad_rows(data.slice(2)) == ()
    assert enc.bad_rows(data.slice(1, 2)) == (0,)
    tail = data.slice(3)
    assert json_maps(tail.column(1)).to_pylist() == ['{"k3":1.0}', '{"k4":1.0}', '{"k5":1.0}']
    assert enc.encode(tail) == enc.encode(record_batch(MAPS, rows[3:]))


def _pgpq_column(array: Any) -> bytes:
    """One column's rows as pgpq writes them (header and trailer cut off)."""
    import pgpq

    schema = pa.schema([pa.field("a", array.type)])
    enc = pgpq.ArrowToPostgresBinaryEncoder(schema)
    enc.write_header()
    out = enc.write_batch(pa.RecordBatch.from_arrays([array], schema=schema)) + enc.finish()
    return bytes(out[:-2])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.none() | st.lists(texts | st.just("x" * 300), max_size=4), max_size=40),
    st.data(),
)
def test_text_arrays_built_with_numpy_are_the_bytes_pgpq_writes(
    values: list[list[str] | None], data: st.DataObject
) -> None:
    """Empty lists, empty strings, non-ASCII, null rows, sliced arrays: the numpy-built
    ``text[]`` fields, written as binary, are byte for byte pgpq's list encoding."""
    array = pa.array(values, type=pa.list_(pa.string()))
    if values:
        start = data.draw(st.integers(0, len(values) - 1))
        array = array.slice(start, data.draw(st.integers(0, len(values) - start)))
    coded = _text_array_fields(array)
    assert coded is not None and coded.type == pa.binary()
    assert _pgpq_column(coded) == _pgpq_column(array)


def test_a_null_text_array_element_goes_to_pgpq_and_forms_mix_in_one_stream() -> None:
    assert _text_array_fields(pa.array([["x", None]], type=pa.list_(pa.string()))) is None
    rows: list[Row] = [
        (NOW_NS + i, f"n{i}", 1.0, i, i, False, ("a", "b")[: i % 3]) for i in range(6)
    ]
    data = record_batch(SCALARS, rows)
    with_null = record_batch(SCALARS, [(NOW_NS, "z", 1.0, 0, 0, True, ("x",))])
    tags = pa.array([["x", None]], type=pa.list_(pa.string()))
    with_null = with_null.set_column(6, SCALARS.columns[6].name, tags)
    coded, plain, coded_again = data.slice(0, 3), with_null, data.slice(3)
    stream = ArrowCopyEncoder(SCALARS).encode([coded, plain, coded_again])
    parts = [ArrowCopyEncoder(SCALARS).encode(p)[19:-2] for p in (coded, plain, coded_again)]
    assert stream == stream[:19] + b"".join(parts) + b"\xff\xff"
    assert parts[1].count(b"\xff\xff\xff\xff") == 1  # the null element, as pgpq writes it


def test_ints_in_a_float_map_are_written_as_the_floats_the_column_holds() -> None:
    """``12`` and ``12.0`` are one Float64, but jsonb keeps them apart: the tuple encoder
    writes ``12.0``, as the Arrow path does; an int no float holds exactly stays exact."""
    enc = CopyEncoder(MAPS)
    as_int, as_float = ([(0, {"a": v, "b": 2.5}, {"s": "x"})] for v in (12, 12.0))
    assert enc.encode(as_int) == enc.encode(as_float)
    assert b'{"a":12.0,"b":2.5}' in enc.encode(as_int)
    assert b'{"a":1152921504606846977}' in enc.encode([(0, {"a": 2**60 + 1}, {})])
    text = json_maps(record_batch(MAPS, as_int).column(1)).to_pylist()
    assert text == ['{"a":12.0,"b":2.5}']
