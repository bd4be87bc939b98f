"""Arrow encoding of map columns: dicts go to pyarrow as they are (no item-pair lists)."""

from __future__ import annotations

import pyarrow as pa

from orbitstream.core.batch import Batch
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.sinks.arrow import to_arrow, to_ipc_stream

TABLE = Table(
    "maps",
    (
        Column("ts", ColType.TIMESTAMP),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR, nullable=True),
    ),
    time_column="ts",
    order_by=("ts",),
)


def test_map_columns_keep_keys_values_and_order() -> None:
    rows: list[tuple[object, ...]] = [
        (1, {"b": 2.5, "a": 1}, {"x": "y"}),
        (2, {}, {}),
        (3, {"big": 9007199254740992}, None),
    ]
    table = to_arrow(Batch(TABLE, rows, "b1"))
    assert table.column("metrics").to_pylist() == [[("b", 2.5), ("a", 1.0)], [], [("big", 2.0**53)]]
    assert table.column("info").to_pylist() == [[("x", "y")], [], None]
    assert table.schema.field("metrics").type == pa.map_(pa.string(), pa.float64())
    with pa.ipc.open_stream(to_ipc_stream(Batch(TABLE, rows, "b1"))) as reader:
        assert reader.read_all().equals(table)
