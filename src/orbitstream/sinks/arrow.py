"""Arrow encoding of batches (columnar, shared by the chDB, ClickHouse and Parquet sinks).

A columnar batch is already a record batch; a batch of tuple rows is converted once
(:attr:`orbitstream.core.batch.Batch.data`). When that conversion fails, :func:`bad_rows`
finds the rows that cannot be encoded, so only they become dead letters.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from orbitstream.core.batch import Batch
from orbitstream.core.columns import ARROW_TYPES, arrow_schema, ipc_stream

__all__ = ["arrow_schema", "bad_rows", "to_arrow", "to_ipc_stream"]


def to_arrow(batch: Batch) -> Any:
    """The batch as a ``pyarrow.Table`` (one chunk, no copy of a columnar batch)."""
    return pa.Table.from_batches([batch.data])


def to_ipc_stream(batch: Batch) -> bytes:
    """The batch as Arrow IPC stream bytes (ClickHouse ``FORMAT ArrowStream``)."""
    return ipc_stream(batch.data)


def bad_rows(batch: Batch) -> tuple[int, ...]:
    """Indices of the rows whose values Arrow cannot encode for their columns (a wrong
    type, an integer out of range...): found column by column, value by value. Used
    only after :attr:`Batch.data` failed, so the refused rows alone become dead letters.
    A columnar batch is encoded already: none."""
    if batch.columnar:
        return ()
    table = batch.table
    rows = batch.rows
    bad: set[int] = set()
    width = len(table.columns)
    for index, row in enumerate(rows):
        if len(row) != width:
            bad.add(index)
    good = [i for i in range(len(rows)) if i not in bad]
    for c, col in enumerate(table.columns):
        typ = ARROW_TYPES[col.type]
        values = [rows[i][c] for i in good]
        try:
            pa.array(values, type=typ)
            continue
        except Exception:
            pass
        for i, value in zip(good, values, strict=True):
            try:
                pa.array([value], type=typ)
            except Exception:
                bad.add(i)
    return tuple(sorted(bad))
