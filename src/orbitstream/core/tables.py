"""Table declarations: each table is declared once and rendered per backend.

A :class:`Table` names its columns with logical types, its sort key, time and entity
columns, partitioning and retention. Backends (chDB/ClickHouse, PostgreSQL, Parquet)
render DDL and column encodings from it. A :class:`Rollup` declares a time-bucketed
aggregate (avg/min/max per field, row and flag counts) that each backend maintains its
own way (materialized view, continuous aggregate, incrementally refreshed table).
A :class:`Replacing` declaration makes a table keep one row per sort key (latest state,
or the first row ever written), which ClickHouse renders as a ``ReplacingMergeTree``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ColType", "Column", "Replacing", "Rollup", "Row", "Table"]

Row = tuple[object, ...]
"""One row of a table: its values in column order (see :class:`ColType` for the kinds)."""


class ColType(enum.Enum):
    """Logical column types every backend can represent."""

    TIMESTAMP = "timestamp"  # epoch nanoseconds (int) in rows, UTC
    STRING = "string"
    FLOAT64 = "float64"
    INT64 = "int64"
    UINT64 = "uint64"
    BOOL = "bool"
    STRING_LIST = "string_list"  # tuple[str, ...] in rows
    MAP_STR_FLOAT = "map_str_float"  # dict[str, float] in rows
    MAP_STR_STR = "map_str_str"  # dict[str, str] in rows


# Rough in-memory cost per value, used to bound buffers by bytes.
_VALUE_BYTES = {
    ColType.TIMESTAMP: 32,
    ColType.STRING: 64,
    ColType.FLOAT64: 24,
    ColType.INT64: 28,
    ColType.UINT64: 28,
    ColType.BOOL: 8,
    ColType.STRING_LIST: 96,
    ColType.MAP_STR_FLOAT: 512,
    ColType.MAP_STR_STR: 512,
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column.

    :param low_cardinality: an enum-like string (``LowCardinality`` in ClickHouse).
    :param codec: ClickHouse compression codec, e.g. ``"Gorilla, ZSTD(1)"``.
    :param skip_index: a ClickHouse data-skipping index type for this column (``minmax``).
    :param default_now: filled with the insert time when the row lacks it.
    """

    name: str
    type: ColType
    low_cardinality: bool = False
    nullable: bool = False
    codec: str | None = None
    comment: str = ""
    skip_index: str | None = None  # e.g. "minmax": lets range filters on this column skip data


@dataclass(frozen=True, slots=True)
class Rollup:
    """A time-bucketed aggregate over a table.

    :param name: the name users query (a view in ClickHouse, a table in PostgreSQL).
    :param bucket_secs: bucket width.
    :param group_by: entity columns to group by (besides the bucket).
    :param measures: float columns; each gets ``avg_``, ``min_``, ``max_`` outputs.
    :param flag_counts: bool columns counted where true, as ``<output name>`` -> column.
    :param count_name: the output column with the number of rows in the bucket.
    """

    name: str
    bucket_secs: int
    group_by: tuple[str, ...]
    measures: tuple[tuple[str, str], ...]  # (column, short output name)
    flag_counts: tuple[tuple[str, str], ...] = ()  # (output name, bool column)
    count_name: str = "data_points"
    bucket_name: str = "bucket"


@dataclass(frozen=True, slots=True)
class Replacing:
    """The table keeps one row per :attr:`Table.order_by` key, chosen by a version column.

    Rows are appended as usual; the store collapses rows with the same key (ClickHouse: a
    ``ReplacingMergeTree``, collapsed at merge time, so reads use ``FINAL`` or
    ``argMin``/``argMax``). Which row survives depends only on the rows, never on the
    order or the worker that wrote them.

    :param version_column: a non-nullable ``TIMESTAMP``, ``INT64`` or ``UINT64`` column
        (``keep="first"``: ``TIMESTAMP`` or ``INT64``).
    :param keep: ``"last"`` keeps the row with the largest version (latest state),
        ``"first"`` the row with the smallest (first wins).
    """

    version_column: str
    keep: Literal["first", "last"] = "last"


_VERSION_TYPES = {
    "last": (ColType.TIMESTAMP, ColType.INT64, ColType.UINT64),
    "first": (ColType.TIMESTAMP, ColType.INT64),
}


@dataclass(frozen=True, slots=True)
class Table:
    """A table declaration.

    Rows handed to sinks are tuples in :attr:`columns` order.

    :param namespace: where the table lives in a store — a ClickHouse/chDB database, a
        PostgreSQL schema; ``None`` is the store's default (``default`` / ``public``). Set
        by the runtime from the pipeline's namespace.
    """

    name: str
    columns: tuple[Column, ...]
    time_column: str
    order_by: tuple[str, ...]
    entity_column: str | None = None
    ttl_days: int | None = None
    rollups: tuple[Rollup, ...] = ()
    comment: str = ""
    replacing: Replacing | None = None
    namespace: str | None = None
    column_names: tuple[str, ...] = field(init=False)
    row_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(c.name for c in self.columns)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate column in table {self.name}")
        for needed in (self.time_column, *self.order_by):
            if needed not in names:
                raise ValueError(f"table {self.name}: unknown column {needed}")
        if self.replacing is not None:
            self._check_replacing(self.replacing, names)
        object.__setattr__(self, "column_names", names)
        object.__setattr__(
            self,
            "row_bytes",
            56 + 8 * len(self.columns) + sum(_VALUE_BYTES[c.type] for c in self.columns),
        )

    def _check_replacing(self, rep: Replacing, names: tuple[str, ...]) -> None:
        if rep.keep not in _VERSION_TYPES:
            raise ValueError(f"table {self.name}: keep must be 'first' or 'last'")
        if rep.version_column not in names:
            raise ValueError(f"table {self.name}: unknown version column {rep.version_column}")
        col = self.columns[names.index(rep.version_column)]
        if col.nullable or col.type not in _VERSION_TYPES[rep.keep]:
            raise ValueError(
                f"table {self.name}: version column {col.name} must be a non-nullable "
                + "/".join(t.name for t in _VERSION_TYPES[rep.keep])
            )
        if rep.version_column in self.order_by:
            raise ValueError(f"table {self.name}: the version column cannot be in order_by")

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def index(self, name: str) -> int:
        return self.column_names.index(name)

    def with_ttl(self, days: int | None) -> Table:
        """The same table with another retention."""
        return dataclasses.replace(self, ttl_days=days)

    def in_namespace(self, namespace: str | None) -> Table:
        """The same table in another namespace."""
        return dataclasses.replace(self, namespace=namespace or None)

    @property
    def qualified_name(self) -> str:
        """``namespace.name`` (just ``name`` in the store's default namespace)."""
        return f"{self.namespace}.{self.name}" if self.namespace else self.name

    def row_dicts(self, rows: Sequence[tuple[object, ...]]) -> list[dict[str, object]]:
        """Rows as dicts (for dead letters and debugging)."""
        return [dict(zip(self.column_names, row, strict=True)) for row in rows]
