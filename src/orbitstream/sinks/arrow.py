"""Arrow encoding of batches (columnar, shared by the chDB, ClickHouse and Parquet sinks)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from orbitstream.core.batch import Batch
from orbitstream.core.tables import ColType, Table

__all__ = ["arrow_schema", "bad_rows", "to_arrow", "to_ipc_stream"]

_TYPES: dict[ColType, Any] = {
    ColType.TIMESTAMP: pa.timestamp("ns", tz="UTC"),
    ColType.STRING: pa.string(),
    ColType.FLOAT64: pa.float64(),
    ColType.INT64: pa.int64(),
    ColType.UINT64: pa.uint64(),
    ColType.BOOL: pa.bool_(),
    ColType.STRING_LIST: pa.list_(pa.string()),
    ColType.MAP_STR_FLOAT: pa.map_(pa.string(), pa.float64()),
    ColType.MAP_STR_STR: pa.map_(pa.string(), pa.string()),
}

_SCHEMAS: dict[str, Any] = {}


def arrow_schema(table: Table) -> Any:
    """The Arrow schema of a table (cached by table name and columns)."""
    key = f"{table.name}:{table.column_names}"
    schema = _SCHEMAS.get(key)
    if schema is None:
        schema = pa.schema(
            [pa.field(c.name, _TYPES[c.type], nullable=c.nullable) for c in table.columns]
        )
        _SCHEMAS[key] = schema
    return schema


def _column(values: list[Any], typ: ColType) -> Any:
    # Map columns: pyarrow converts dicts itself (twice as fast as lists of item pairs).
    return pa.array(values, type=_TYPES[typ])


def to_arrow(batch: Batch) -> Any:
    """The batch as a ``pyarrow.Table``."""
    schema = arrow_schema(batch.table)
    cols = batch.columns()
    arrays = [_column(v, c.type) for v, c in zip(cols, batch.table.columns, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def to_ipc_stream(batch: Batch) -> bytes:
    """The batch as Arrow IPC stream bytes (ClickHouse ``FORMAT ArrowStream``)."""
    table = to_arrow(batch)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def bad_rows(batch: Batch) -> tuple[int, ...]:
    """Indices of the rows whose values Arrow cannot encode for their columns (a wrong
    type, an integer out of range...): found column by column, value by value. Used
    only after :func:`to_arrow` failed, so the refused rows alone become dead letters."""
    table = batch.table
    bad: set[int] = set()
    width = len(table.columns)
    for index, row in enumerate(batch.rows):
        if len(row) != width:
            bad.add(index)
    good = [i for i in range(len(batch.rows)) if i not in bad]
    for c, col in enumerate(table.columns):
        values = [batch.rows[i][c] for i in good]
        try:
            _column(values, col.type)
            continue
        except Exception:
            pass
        for i, value in zip(good, values, strict=True):
            try:
                _column([value], col.type)
            except Exception:
                bad.add(i)
    return tuple(sorted(bad))
