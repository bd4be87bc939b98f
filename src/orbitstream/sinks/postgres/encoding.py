"""Rows -> PostgreSQL binary ``COPY`` bytes (pure: no I/O, no psycopg).

Layout (PostgreSQL docs, "COPY ... Binary Format")::

    header   b"PGCOPY\\n\\xff\\r\\n\\0" + int32 flags (0) + int32 extension length (0)
    row      int16 field count, then per field: int32 length (-1 = NULL) + data
    trailer  int16 -1

Field data by logical type (all integers big-endian):

=============  ==================  ==================================================
ColType        PostgreSQL          bytes
=============  ==================  ==================================================
TIMESTAMP      timestamptz         int64 microseconds since 2000-01-01 UTC (ns // 1000)
FLOAT64        double precision    IEEE 754 float8
INT64, UINT64  bigint              int64 (a UINT64 above 2**63-1 is refused)
BOOL           boolean             one byte, 0 or 1
STRING         text                UTF-8
STRING_LIST    text[]              ndim, has-null flag, element OID 25, per dimension
                                   (size, lower bound 1), then int32 length + UTF-8
                                   per element; an empty tuple is ndim 0
MAP_*          jsonb               version byte 1 + JSON text (NaN/inf become null;
                                   in a MAP_STR_FLOAT an int is written as the float
                                   the column's type holds, ``12.0``, as the Arrow
                                   path writes it)
=============  ==================  ==================================================

A ``None`` is always sent as NULL, even in a NOT NULL column: PostgreSQL then refuses
the batch itself (SQLSTATE 23502), which is how a poison row reaches the dead letters.

Speed: each table gets a :class:`CopyEncoder` compiled once. It transposes the rows
(``zip`` in C), then encodes column-wise with ``map`` over precompiled
:class:`struct.Struct` objects: consecutive fixed-width columns, the row's field count
and the length prefix of the next variable-width column are packed by one ``pack``
call per row. Text arrays (anomaly reasons) are memoised, since a handful of distinct
tuples repeat. A batch that does not fit that fast path (a ``None``, a wrong type) is
re-encoded row by row, which also names the offending column and row.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import msgspec

from orbitstream.core.batch import Batch, Row
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import RecordRejected

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "PG_EPOCH_US",
    "CopyEncoder",
    "EncodeError",
    "encode_batch",
    "encoder_for",
    "text_array",
]

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
TEXT_OID = 25
_NULL = b"\xff\xff\xff\xff"
_MEMO_MAX = 4096

_I32 = struct.Struct(">i")
_ARRAY_HEAD = struct.Struct(">iiiii")
_EMPTY_TEXT_ARRAY = struct.pack(">iii", 0, 0, TEXT_OID)

# Fixed-width types: struct code and width.
_FIXED: dict[ColType, tuple[str, int]] = {
    ColType.TIMESTAMP: ("q", 8),
    ColType.FLOAT64: ("d", 8),
    ColType.INT64: ("q", 8),
    ColType.UINT64: ("q", 8),
    ColType.BOOL: ("B", 1),
}

_json = msgspec.json.Encoder()


class EncodeError(RecordRejected, ValueError):
    """A value cannot be represented in its column's PostgreSQL type.

    :param column: the column name.
    :param row_index: the row's position in the batch.
    """

    def __init__(self, message: str, *, column: str, row_index: int) -> None:
        super().__init__(message)
        self.column = column
        self.row_index = row_index


def text_array(values: Sequence[str | None]) -> bytes:
    """A one-dimensional ``text[]`` in binary array format (without the length prefix)."""
    if not values:
        return _EMPTY_TEXT_ARRAY
    parts: list[bytes] = []
    has_null = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            has_null = 1
            continue
        data = value.encode()
        parts.append(_I32.pack(len(data)))
        parts.append(data)
    return _ARRAY_HEAD.pack(1, has_null, TEXT_OID, len(values), 1) + b"".join(parts)


def _jsonb(value: object) -> bytes:
    return b"\x01" + _json.encode(value)


# -- per-value encoders for the careful (row by row) path: data without length prefix --


def _timestamp_value(value: object) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected int epoch nanoseconds, got {type(value).__name__}")
    return struct.pack(">q", value // 1000 - PG_EPOCH_US)


def _float_value(value: object) -> bytes:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a float, got {type(value).__name__}")
    return struct.pack(">d", value)


def _int_value(value: object) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return struct.pack(">q", value)


def _bool_value(value: object) -> bytes:
    if not isinstance(value, bool | int):
        raise TypeError(f"expected a bool, got {type(value).__name__}")
    return b"\x01" if value else b"\x00"


def _text_value(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {type(value).__name__}")
    return value.encode()


def _text_array_value(value: object) -> bytes:
    if not isinstance(value, tuple | list):
        raise TypeError(f"expected a tuple of str, got {type(value).__name__}")
    for item in value:
        if item is not None and not isinstance(item, str):
            raise TypeError(f"expected str elements, got {type(item).__name__}")
    return text_array(value)


def _map_value(value: object) -> bytes:
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    return _jsonb(value)


def _float_map_value(value: object) -> bytes:
    return _map_value(_as_floats(value) if isinstance(value, dict) else value)


#: integers up to this magnitude are floats exactly; beyond it one stays an exact JSON
#: integer rather than a rounded float (the Arrow path refuses it, and falls back here)
_EXACT_INT = 2**53


def _as_floats(value: dict[Any, Any]) -> dict[Any, Any]:
    """A float map's values as floats: ``12`` and ``12.0`` are both the Float64 12, but
    jsonb keeps them apart (a client reads an integer or a float). ClickHouse stores the
    map as Float64 and the Arrow path writes ``12.0``: so does this one."""
    if not any(type(v) is int for v in value.values()):
        return value
    return {
        k: float(v) if type(v) is int and -_EXACT_INT <= v <= _EXACT_INT else v
        for k, v in value.items()
    }


_VALUE: dict[ColType, Callable[[object], bytes]] = {
    ColType.TIMESTAMP: _timestamp_value,
    ColType.FLOAT64: _float_value,
    ColType.INT64: _int_value,
    ColType.UINT64: _int_value,
    ColType.BOOL: _bool_value,
    ColType.STRING: _text_value,
    ColType.STRING_LIST: _text_array_value,
    ColType.MAP_STR_FLOAT: _float_map_value,
    ColType.MAP_STR_STR: _map_value,
}


# -- the compiled fast path -------------------------------------------------------------

_Column = Sequence[Any]
_Payload = Callable[[_Column], list[bytes]]


def _timestamps(col: _Column) -> list[int]:
    # None or str raise here, a float yields a float that struct's "q" refuses: either
    # way the batch leaves the fast path.
    off = PG_EPOCH_US
    return [t // 1000 - off for t in col]


def _identity(col: _Column) -> _Column:
    return col


def _text_payload(col: _Column) -> list[bytes]:
    return list(map(str.encode, col))


def _json_payload(col: _Column) -> list[bytes]:
    encode = _json.encode
    return [b"\x01" + encode(v) for v in col]


def _float_map_payload(col: _Column) -> list[bytes]:
    encode = _json.encode
    return [b"\x01" + encode(_as_floats(v)) for v in col]


class _Memo:
    """Encodings of repeated small values (reason tuples), bounded."""

    __slots__ = ("_build", "_cache")

    def __init__(self, build: Callable[[Any], bytes]) -> None:
        self._cache: dict[Any, bytes] = {}
        self._build = build

    def __call__(self, col: _Column) -> list[bytes]:
        cache = self._cache
        try:
            return list(map(cache.__getitem__, col))
        except KeyError:
            pass
        if len(cache) > _MEMO_MAX:
            cache.clear()
        for value in set(col).difference(cache):
            cache[value] = self._build(value)
        return list(map(cache.__getitem__, col))


def _text_array_fast(value: tuple[str, ...]) -> bytes:
    if type(value) is not tuple:
        raise TypeError("expected a tuple")
    return text_array(value)


@dataclass(frozen=True, slots=True)
class _Fixed:
    index: int
    width: int
    convert: Callable[[_Column], Iterable[Any]]


@dataclass(frozen=True, slots=True)
class _Group:
    """Fixed-width columns plus the length of one following variable-width column,
    packed by one ``Struct`` per row; then that column's payloads."""

    pack: Callable[..., bytes]
    fixed: tuple[_Fixed, ...]
    var_index: int | None
    payload: _Payload | None
    with_field_count: bool


class CopyEncoder:
    """Encodes rows of one table into a complete binary ``COPY`` stream.

    :param table: the declaration; rows are tuples in ``table.columns`` order.
    :raises EncodeError: from :meth:`encode`, when a value does not fit its column.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns: tuple[Column, ...] = table.columns
        self._field_count = len(table.columns)
        self._groups = self._compile(table.columns)
        self._slow: list[Callable[[object], bytes]] = [_VALUE[c.type] for c in table.columns]
        self._field_count_bytes = struct.pack(">h", self._field_count)

    @staticmethod
    def _compile(columns: Sequence[Column]) -> tuple[_Group, ...]:
        """Group the columns; empty when a nullable column means row-by-row encoding."""
        groups: list[_Group] = []
        fmt = ">h"  # the first group also packs the row's field count
        fixed: list[_Fixed] = []
        for idx, col in enumerate(columns):
            if col.nullable:
                return ()
            if col.type in _FIXED:
                code, width = _FIXED[col.type]
                fmt += "i" + code
                conv = _timestamps if col.type is ColType.TIMESTAMP else _identity
                fixed.append(_Fixed(idx, width, conv))
                continue
            payload: _Payload
            if col.type is ColType.STRING:
                payload = _text_payload
            elif col.type is ColType.STRING_LIST:
                payload = _Memo(_text_array_fast)
            elif col.type is ColType.MAP_STR_FLOAT:
                payload = _float_map_payload
            else:
                payload = _json_payload
            fmt += "i"
            groups.append(_Group(struct.Struct(fmt).pack, tuple(fixed), idx, payload, not groups))
            fmt, fixed = ">", []
        if fixed or not groups:
            groups.append(_Group(struct.Struct(fmt).pack, tuple(fixed), None, None, not groups))
        return tuple(groups)

    def encode(self, rows: Sequence[Row]) -> bytes:
        """The whole ``COPY ... (FORMAT BINARY)`` stream: header, rows, trailer."""
        return b"".join(chain((COPY_HEADER,), self._parts(rows, 0), (COPY_TRAILER,)))

    def iter_encode(self, rows: Sequence[Row], chunk_rows: int = 2048) -> Iterator[bytes]:
        """The same stream in pieces of ``chunk_rows`` rows, so the server can insert one
        piece while the next is encoded. Concatenated, the pieces equal :meth:`encode`.
        """
        if len(rows) <= chunk_rows:
            yield self.encode(rows)
            return
        last = len(rows) - 1
        for start in range(0, len(rows), chunk_rows):
            chunk = rows[start : start + chunk_rows]
            head = (COPY_HEADER,) if start == 0 else ()
            tail = (COPY_TRAILER,) if start + chunk_rows > last else ()
            yield b"".join(chain(head, self._parts(chunk, start), tail))

    def _parts(self, rows: Sequence[Row], offset: int) -> Iterable[bytes]:
        if not rows:
            return ()
        if self._groups:
            try:
                return self._parts_fast(rows)
            except Exception:
                pass  # a None or a wrong type: the careful path finds and reports it
        return self._parts_slow(rows, offset)

    def _parts_fast(self, rows: Sequence[Row]) -> Iterable[bytes]:
        cols = list(zip(*rows, strict=True))
        if len(cols) != self._field_count:
            raise ValueError("row width does not match the table")
        n = len(rows)
        segments: list[list[bytes]] = []
        for group in self._groups:
            args: list[Iterable[Any]] = []
            if group.with_field_count:
                args.append(repeat(self._field_count, n))
            for f in group.fixed:
                args.append(repeat(f.width, n))
                args.append(f.convert(cols[f.index]))
            payload: list[bytes] | None = None
            if group.payload is not None and group.var_index is not None:
                payload = group.payload(cols[group.var_index])
                args.append(map(len, payload))
            packed = list(map(group.pack, *args))
            if len(packed) != n:
                raise ValueError("column length mismatch")
            segments.append(packed)
            if payload is not None:
                segments.append(payload)
        if len(segments) == 1:
            return segments[0]
        return chain.from_iterable(zip(*segments, strict=True))

    def _parts_slow(self, rows: Sequence[Row], offset: int) -> list[bytes]:
        out: list[bytes] = []
        append = out.append
        count = self._field_count
        encoders = self._slow
        names = self.table.column_names
        pack_len = _I32.pack
        for ri, row in enumerate(rows, offset):
            if len(row) != count:
                raise EncodeError(
                    f"row has {len(row)} values, table {self.table.name} has {count} columns",
                    column="",
                    row_index=ri,
                )
            append(self._field_count_bytes)
            for ci, value in enumerate(row):
                if value is None:
                    append(_NULL)
                    continue
                try:
                    data = encoders[ci](value)
                except (TypeError, ValueError, OverflowError, struct.error) as exc:
                    raise EncodeError(
                        f"column {names[ci]} of row {ri}: {exc}", column=names[ci], row_index=ri
                    ) from exc
                append(pack_len(len(data)))
                append(data)
        return out

    def bad_rows(self, rows: Sequence[Row]) -> tuple[int, ...]:
        """Indices of every row the careful path refuses (after an :class:`EncodeError`)."""
        bad: list[int] = []
        for index, row in enumerate(rows):
            try:
                self._parts_slow((row,), index)
            except EncodeError:
                bad.append(index)
            except Exception:  # anything else a value can make the encoder raise
                bad.append(index)
        return tuple(bad)

    def _encode_slow(self, rows: Sequence[Row]) -> bytes:
        """The careful path alone (tests compare it with the fast one)."""
        return b"".join(chain((COPY_HEADER,), self._parts_slow(rows, 0), (COPY_TRAILER,)))


@functools.lru_cache(maxsize=256)
def encoder_for(table: Table) -> CopyEncoder:
    """The compiled encoder of ``table`` (cached per declaration)."""
    return CopyEncoder(table)


def encode_batch(batch: Batch) -> bytes:
    """Binary ``COPY`` bytes for ``batch`` (columns in ``batch.table.columns`` order)."""
    return encoder_for(batch.table).encode(batch.rows)
