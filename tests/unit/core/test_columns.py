"""Columnar batches equal the tuple path: same schema, same rows, same IPC bytes, same
slicing, merging, ack accounting and dead-letter dicts."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any, cast

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.core.batch import Ack, Batch, Row, join_parts
from orbitstream.core.columns import (
    MapColumnBuilder,
    arrow_schema,
    concat,
    ipc_stream,
    maps_from_columns,
    reason_lists,
    reason_lists_by_code,
    record_batch,
    rows_of,
)
from orbitstream.core.pipeline import Batcher, PipelineLimits
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.detect.alerts import ALERTS_TABLE
from orbitstream.pipelines.satellites import TELEMETRY_TABLE
from orbitstream.sinks import arrow as sink_arrow

ALL = Table(
    "all_types",
    (
        Column("time", ColType.TIMESTAMP),
        Column("name", ColType.STRING),
        Column("value", ColType.FLOAT64),
        Column("count", ColType.INT64),
        Column("big", ColType.UINT64),
        Column("flag", ColType.BOOL),
        Column("tags", ColType.STRING_LIST),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
    ),
    time_column="time",
    order_by=("name", "time"),
)

texts = st.text(max_size=8)
floats = st.floats(allow_nan=False)
rows_strategy = st.lists(
    st.tuples(
        st.integers(-(2**63) + 1, 2**63 - 1),
        texts,
        floats,
        st.integers(-(2**63), 2**63 - 1),
        st.integers(0, 2**64 - 1),
        st.booleans(),
        st.lists(texts, max_size=3).map(tuple),
        st.dictionaries(texts, floats, max_size=4),
        st.dictionaries(texts, texts, max_size=4),
    ),
    max_size=30,
)


@pytest.mark.parametrize("table", [TELEMETRY_TABLE, ALERTS_TABLE, ALL])
def test_schema_is_the_sinks_schema(table: Table) -> None:
    assert arrow_schema(table) == sink_arrow.arrow_schema(table)


@settings(max_examples=150, deadline=None)
@given(rows_strategy)
def test_rows_round_trip_and_ipc_bytes_match_the_tuple_path(rows: list[Row]) -> None:
    data = record_batch(ALL, rows)
    assert rows_of(ALL, data) == rows
    if rows:
        assert ipc_stream(data) == sink_arrow.to_ipc_stream(Batch(ALL, rows, "b"))
        assert ALL.row_dicts(Batch(ALL, data, "b").rows) == ALL.row_dicts(rows)


def test_empty_rows() -> None:
    data = record_batch(ALL, [])
    assert data.num_rows == 0
    assert rows_of(ALL, data) == []
    assert data.schema == arrow_schema(ALL)


flag_lists = st.integers(0, 40).flatmap(
    lambda n: st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=1, max_size=4)
)


@settings(max_examples=150, deadline=None)
@given(flag_lists)
def test_reason_lists_name_the_set_flags_in_rule_order(flags: list[list[bool]]) -> None:
    names = [f"rule{k}" for k in range(len(flags))]
    arrays = [pa.array(f, type=pa.bool_()) for f in flags]
    expected = [
        [names[k] for k in range(len(flags)) if flags[k][row]] for row in range(len(flags[0]))
    ]
    assert reason_lists(arrays, names).to_pylist() == expected
    assert reason_lists_by_code(arrays, names).to_pylist() == expected


columns_strategy = st.integers(1, 20).flatmap(
    lambda n: st.lists(
        st.lists(st.none() | st.floats(allow_nan=False), min_size=n, max_size=n),
        min_size=1,
        max_size=5,
    )
)


@settings(max_examples=150, deadline=None)
@given(columns_strategy)
def test_maps_from_columns_leave_nulls_out(columns: list[list[float | None]]) -> None:
    names = [f"k{j}" for j in range(len(columns))]
    maps = maps_from_columns([pa.array(c, pa.float64()) for c in columns], names, pa.float64())
    expected = [
        {names[j]: columns[j][r] for j in range(len(columns)) if columns[j][r] is not None}
        for r in range(len(columns[0]))
    ]
    assert [dict(m) for m in maps.to_pylist()] == expected
    assert maps.type == pa.map_(pa.string(), pa.float64())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), st.text(max_size=5)), max_size=20))
def test_map_column_builder_equals_dicts(dicts: list[dict[str, str]]) -> None:
    builder = MapColumnBuilder(pa.string())
    for d in dicts:
        builder.append(builder.key_ids(d), list(d.values()))
    assert len(builder) == len(dicts)
    built = builder.finish()
    assert [dict(m) for m in built.to_pylist()] == dicts
    assert len(builder) == 0  # reset


def _sat_rows(n: int) -> list[Row]:
    return [
        (
            1_700_000_000_000_000_000 + i,
            f"SAT-{i % 3}",
            float(i),
            2.0,
            -50.0,
            i % 2 == 0,
            ("battery_low",) if i % 2 == 0 else (),
            1_700_000_000_000_000_000,
        )
        for i in range(n)
    ]


async def test_slicing_merging_and_acks_are_the_same_in_both_forms() -> None:
    rows = _sat_rows(10)
    acks = [Ack(), Ack(), Ack()]
    batch = Batch(TELEMETRY_TABLE, rows, "id", acks, ack_ends=[3, 7, 10])
    cb = Batch(
        TELEMETRY_TABLE, record_batch(TELEMETRY_TABLE, rows), "id", acks, ack_ends=[3, 7, 10]
    )
    assert cb.columnar and not batch.columnar
    assert cb.rows == rows
    assert rows_of(TELEMETRY_TABLE, batch.data) == rows
    for start, stop in ((0, 10), (2, 8), (3, 3), (9, 10), (0, 1)):
        a, b = batch.slice(start, stop, ".s"), cb.slice(start, stop, ".s")
        assert b.columnar
        assert (b.rows, b.batch_id, b.acks, b.ack_ends) == (a.rows, a.batch_id, a.acks, a.ack_ends)
    for half_t, half_c in zip(batch.split(), cb.split(), strict=True):
        assert half_c.rows == half_t.rows and half_c.ack_ends == half_t.ack_ends
    merged_t = batch.merge(batch.slice(0, 4, ".x"))
    merged_c = cb.merge(cb.slice(0, 4, ".x"))
    mixed = batch.merge(cb.slice(0, 4, ".x"))
    assert merged_c.columnar and mixed.columnar and not merged_t.columnar
    assert merged_c.rows == merged_t.rows == mixed.rows
    assert (merged_c.batch_id, merged_c.ack_ends) == (merged_t.batch_id, merged_t.ack_ends)
    assert cb.acks_of([0, 4, 5, 9]) == batch.acks_of([0, 4, 5, 9])
    assert cb.rows_at([5, 1]) == batch.rows_at([5, 1]) == [rows[5], rows[1]]
    assert cb.size == batch.size == 10 and cb.nbytes == batch.nbytes > 0


def test_a_mix_with_a_row_arrow_cannot_encode_stays_tuples() -> None:
    rows = _sat_rows(4)
    bad: Row = (0, "SAT-x", "not a float", 1.0, 1.0, False, (), 0)
    parts = [record_batch(TELEMETRY_TABLE, rows[:2]), [bad], rows[2:]]
    joined = join_parts(TELEMETRY_TABLE, parts)
    assert isinstance(joined, list) and joined == [*rows[:2], bad, *rows[2:]]
    good = join_parts(TELEMETRY_TABLE, [record_batch(TELEMETRY_TABLE, rows[:2]), rows[2:]])
    assert isinstance(good, pa.RecordBatch) and rows_of(TELEMETRY_TABLE, good) == rows


def test_concat_keeps_order() -> None:
    rows = _sat_rows(7)
    parts = [record_batch(TELEMETRY_TABLE, rows[:3]), record_batch(TELEMETRY_TABLE, rows[3:])]
    assert rows_of(TELEMETRY_TABLE, concat(TELEMETRY_TABLE, parts)) == rows
    assert concat(TELEMETRY_TABLE, []).num_rows == 0
    assert rows_of(TELEMETRY_TABLE, pa.Table.from_batches(parts)) == rows


pieces_strategy = st.lists(
    st.tuples(st.integers(0, 12), st.sampled_from(["rows", "arrow", "one"])), max_size=8
)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 7), pieces_strategy)
def test_the_batcher_cuts_the_same_batches_from_either_form(
    size: int, pieces: list[tuple[int, str]]
) -> None:
    """Tuples, record batches and single rows in any mix: the same batches (ids, rows,
    ack spans) as the same rows added as tuples."""
    asyncio.run(_accumulate(size, pieces))


def _batcher(size: int) -> Batcher:
    lane = SimpleNamespace(
        limits=PipelineLimits(batch_size=size, linger_secs=3600.0),
        pipeline="p",
        sink=SimpleNamespace(name="s"),
        epoch="e",
        concurrency=1,
    )
    return Batcher(cast(Any, lane), TELEMETRY_TABLE)


def _drain(batcher: Batcher) -> list[Batch]:
    batcher.cut()
    out: list[Batch] = []
    while not batcher.queue.empty():
        item = batcher.queue.get_nowait()
        assert item is not None
        out.append(item)
    return out


async def _accumulate(size: int, pieces: list[tuple[int, str]]) -> None:
    mixed, reference = _batcher(size), _batcher(size)
    rows = _sat_rows(sum(n for n, _ in pieces))
    start = 0
    for n, form in pieces:
        part = rows[start : start + n]
        start += n
        ack_m, ack_r = Ack(), Ack()
        if form == "one":
            for row in part:
                mixed.add_one(row, ack_m)
                reference.add_one(row, ack_r)
            continue
        data = record_batch(TELEMETRY_TABLE, part) if form == "arrow" else part
        assert mixed.add(data, ack_m) == reference.add(part, ack_r)
    got, want = _drain(mixed), _drain(reference)
    assert [(b.batch_id, b.rows, b.ack_ends, len(b.acks)) for b in got] == [
        (b.batch_id, b.rows, b.ack_ends, len(b.acks)) for b in want
    ]
    for b in got:  # one form per batch: columnar when a record batch went in
        assert b.size == len(b.rows)


def test_nan_survives_the_round_trip() -> None:
    rows: list[Row] = [(0, "a", math.nan, 0, 0, False, (), {"x": math.inf}, {})]
    back = rows_of(ALL, record_batch(ALL, rows))
    assert math.isnan(cast(float, back[0][2])) and back[0][7] == {"x": math.inf}


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


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.just(0),
            st.dictionaries(texts, floats | st.integers(-(2**53), 2**53), max_size=5),
            st.dictionaries(texts, texts, max_size=5) | st.none(),
        ),
        max_size=20,
    )
)
def test_map_columns_equal_pyarrows_own_conversion(rows: list[Row]) -> None:
    data = record_batch(MAPS, rows)
    for c in (1, 2):
        expected = pa.array([r[c] for r in rows], type=data.schema.field(c).type)
        assert data.column(c).equals(expected)


@pytest.mark.parametrize(
    "row",
    [
        (0, {"a": "fifty"}, {}),
        (0, {1: 2.0}, {}),
        (0, {}, {"a": 7}),
        (0, "abc", {}),
        (0, [("a", 1.0)], {}),
    ],
)
def test_a_map_value_that_does_not_fit_raises_or_converts_like_pyarrow(row: Row) -> None:
    try:
        expected = [pa.array([row[c]], type=arrow_schema(MAPS).field(c).type) for c in (1, 2)]
    except (pa.ArrowException, TypeError, ValueError):
        with pytest.raises((pa.ArrowException, TypeError, ValueError)):
            record_batch(MAPS, [row])
        assert sink_arrow.bad_rows(Batch(MAPS, [row], "b")) == (0,)
        return
    data = record_batch(MAPS, [row])
    assert [data.column(c) for c in (1, 2)] == expected
