"""Arrow record batches -> PostgreSQL binary ``COPY`` bytes with ``pgpq`` (Rust, no Python
loop per value): the columnar counterpart of
:class:`~orbitstream.sinks.postgres.encoding.CopyEncoder`, with its error behaviour.

Columns are prepared for pgpq first (all vectorized):

- TIMESTAMP: ``timestamp[ns]`` -> ``timestamp[us]``, floored (``ns // 1000``, as ours);
- UINT64 -> int64 (``bigint``); a value above ``2**63 - 1`` is refused, as ours;
- MAP_*: -> JSON text sent as ``jsonb`` (keys and string values escaped by msgspec once
  per distinct value, floats in Arrow's shortest round-trip form, NaN and infinities as
  ``null`` like ours); the text differs from ours byte for byte (``1e+20`` vs ``1e20``),
  the stored ``jsonb`` value does not;
- STRING, FLOAT64, INT64, BOOL, STRING_LIST as they are (``text[]`` with element OID 25).

A value PostgreSQL cannot hold raises :class:`~orbitstream.sinks.postgres.encoding.EncodeError`
naming its column and row, and :meth:`ArrowCopyEncoder.bad_rows` lists every such row (for
``SinkRejectedError.bad_rows``): a null in a NOT NULL column, a UINT64 above ``2**63 - 1``,
and a NUL character in text, a text array or a map (PostgreSQL refuses ``\\x00`` in
``text`` and ``\\u0000`` in ``jsonb``; our tuple encoder leaves those to the server, which
then refuses the whole batch).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import numpy as np
import pgpq
import pgpq._pgpq as pgpq_types
import pyarrow as pa
import pyarrow.compute as pc

from orbitstream.core.columns import ARROW_TYPES
from orbitstream.core.tables import ColType, Table
from orbitstream.sinks.postgres.encoding import EncodeError

__all__ = ["ArrowCopyEncoder", "json_maps"]

_US = pa.timestamp("us", tz="UTC")
_MAPS = (ColType.MAP_STR_FLOAT, ColType.MAP_STR_STR)
_TEXTS = (ColType.STRING, ColType.STRING_LIST, *_MAPS)
_json = msgspec.json.Encoder()


def _quoted(strings: Any) -> Any:
    """Each string as a JSON string literal (escaped once per distinct value)."""
    encoded = pc.dictionary_encode(strings)
    unique = encoded.dictionary.to_pylist()
    literal = pa.array([_json.encode(s).decode() for s in unique], type=pa.string())
    return literal.take(encoded.indices)


def _children(nested: Any, *names: str) -> tuple[Any, list[Any]]:
    """Rebased offsets and the child arrays (``keys``, ``items``, ``values``) of a list or
    map array, cut to the entries of its rows: a sliced array's children are its parent's
    whole children."""
    offsets = nested.offsets
    start = offsets[0].as_py()
    stop = offsets[-1].as_py()
    children = [getattr(nested, n).slice(start, stop - start) for n in names]
    if start:
        offsets = pc.subtract(offsets, start)
    return offsets, children


def json_maps(maps: Any) -> Any:
    """A ``map<string, float64 | string>`` array -> one JSON object text per row (null
    rows stay null), vectorized."""
    offsets, (raw_keys, items) = _children(maps, "keys", "items")
    keys = _quoted(raw_keys)
    if pa.types.is_floating(items.type):
        finite = pc.is_finite(items)
        text = pc.if_else(pc.fill_null(finite, False), pc.cast(items, pa.string()), "null")
    else:
        text = pc.if_else(pc.is_valid(items), _quoted(pc.fill_null(items, "")), "null")
    entries = pc.binary_join_element_wise(keys, text, ":")
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, entries), ",")
    out = pc.binary_join_element_wise("{", joined, "}", "")
    if maps.null_count:
        out = pc.if_else(pc.is_valid(maps), out, pa.scalar(None, pa.string()))
    return out


def _floor_us(ns: Any) -> Any:
    ints = ns.cast(pa.int64())
    if not ints.null_count:  # the common case: numpy floors negative times too
        us = ints.to_numpy() // 1000
        return pa.array(us, type=pa.int64()).cast(_US)
    us = pc.divide(ints, 1000)  # truncates toward zero
    low = pc.min(ints).as_py()
    if low is not None and low < 0:
        behind = pc.and_(pc.less(ints, 0), pc.not_equal(pc.multiply(us, 1000), ints))
        us = pc.subtract(us, pc.cast(pc.fill_null(behind, False), pa.int64()))
    return us.cast(_US)


def _no_nul(strings: Any) -> bool:
    """Whether no value byte of a string array (its whole buffer: for a slice, also the
    values around it) is NUL: one vectorized pass, the common answer."""
    buffers = strings.buffers()
    data = buffers[2] if len(buffers) > 2 else None
    if data is None or data.size == 0:
        return True
    return not bool((np.frombuffer(data, dtype=np.uint8) == 0).any())


def _nul_rows(array: Any, typ: ColType) -> list[int]:
    """Rows of ``array`` whose text (or list elements, map keys and string values) holds
    a NUL character."""
    if typ is ColType.STRING:
        if _no_nul(array):
            return []
        hit = pc.fill_null(pc.match_substring(array, "\x00"), False)
        return pc.indices_nonzero(hit).to_pylist()  # type: ignore[no-any-return]
    if typ is ColType.STRING_LIST:
        rebased, parts = _children(array, "values")
    elif typ is ColType.MAP_STR_STR:
        rebased, parts = _children(array, "keys", "items")
    else:
        rebased, parts = _children(array, "keys")
    rows: set[int] = set()
    offsets: list[int] = []
    for values in parts:
        if pa.types.is_string(values.type) and _no_nul(values):
            continue
        hit = pc.fill_null(pc.match_substring(values, "\x00"), False)
        if not pc.any(hit).as_py():
            continue
        offsets = offsets or rebased.to_pylist()
        for entry in pc.indices_nonzero(hit).to_pylist():
            row = bisect.bisect_right(offsets, entry) - 1
            if 0 <= row < len(array) and offsets[row] <= entry < offsets[row + 1]:
                rows.add(row)
    return sorted(rows)


class ArrowCopyEncoder:
    """Encodes record batches of one table (schema
    :func:`~orbitstream.core.columns.arrow_schema`) into a complete binary ``COPY`` stream.

    :param table: the declaration; the batch's columns are in ``table.columns`` order.
    :raises EncodeError: from :meth:`encode`, when a value does not fit its column.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        fields = []
        for col in table.columns:
            if col.type is ColType.TIMESTAMP:
                typ = _US
            elif col.type is ColType.UINT64:
                typ = pa.int64()
            elif col.type in _MAPS:
                typ = pa.string()
            else:
                typ = ARROW_TYPES[col.type]
            fields.append(pa.field(col.name, typ, nullable=col.nullable))
        self.schema = pa.schema(fields)
        self._encoders: dict[str, Any] = {}
        if any(col.type in _MAPS for col in table.columns):
            # pgpq wants a builder for every field once one is given
            for col in table.columns:
                f = self.schema.field(col.name)
                self._encoders[col.name] = (
                    pgpq_types.StringEncoderBuilder.new_with_output(f, pgpq_types.Jsonb())
                    if col.type in _MAPS
                    else pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(f)
                )

    def _new(self) -> Any:
        if self._encoders:
            return pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(self.schema, self._encoders)
        return pgpq.ArrowToPostgresBinaryEncoder(self.schema)

    def prepare(self, data: Any) -> Any:
        """``data`` with its columns in the types pgpq encodes (no checks)."""
        arrays = []
        for i, col in enumerate(self.table.columns):
            array = data.column(i)
            if col.type is ColType.TIMESTAMP:
                array = _floor_us(array)
            elif col.type is ColType.UINT64:
                array = array.cast(pa.int64(), safe=False)
            elif col.type in _MAPS:
                array = json_maps(array)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def encode(self, data: Any) -> bytes:
        """The whole ``COPY ... (FORMAT BINARY)`` stream for one record batch (or a
        sequence of them): header, rows, trailer.

        :raises EncodeError: the first bad row, in row order (see :meth:`bad_rows` for all).
        """
        parts = data if isinstance(data, list | tuple) else [data]
        encoder = self._new()
        out = [encoder.write_header()]
        offset = 0
        for part in parts:
            bad = self._problems(part)
            if bad:
                index, column, message = bad[0]
                raise EncodeError(
                    f"column {column} of row {offset + index}: {message}",
                    column=column,
                    row_index=offset + index,
                )
            try:
                out.append(encoder.write_batch(self.prepare(part)))
            except (pa.ArrowException, ValueError) as exc:  # not foreseen above
                raise EncodeError(str(exc), column="", row_index=offset) from exc
            offset += part.num_rows
        out.append(encoder.finish())
        return b"".join(out)

    def iter_encode(self, data: Any, chunk_rows: int) -> Iterator[bytes]:
        """:meth:`encode` of one record batch in pieces of ``chunk_rows`` rows (header with
        the first, trailer after the last), so the server inserts one piece while the
        next is encoded. Every row is checked before the first piece.

        :raises EncodeError: as :meth:`encode`.
        """
        bad = self._problems(data)
        if bad:
            index, column, message = bad[0]
            raise EncodeError(
                f"column {column} of row {index}: {message}", column=column, row_index=index
            )
        encoder = self._new()
        yield encoder.write_header()
        total = int(data.num_rows)
        for start in range(0, total, max(1, chunk_rows)):
            try:
                yield encoder.write_batch(self.prepare(data.slice(start, chunk_rows)))
            except (pa.ArrowException, ValueError) as exc:  # not foreseen above
                raise EncodeError(str(exc), column="", row_index=start) from exc
        yield encoder.finish()

    def bad_rows(self, data: Any) -> tuple[int, ...]:
        """Indices of every row :meth:`encode` refuses."""
        return tuple(sorted({i for i, _, _ in self._problems(data)}))

    def _problems(self, data: Any) -> list[tuple[int, str, str]]:
        """Every (row, column, reason) PostgreSQL would refuse, in row order."""
        found: list[tuple[int, str, str]] = []
        for i, col in enumerate(self.table.columns):
            array = data.column(i)
            checks: list[tuple[Sequence[int], str]] = []
            if array.null_count and not col.nullable:
                nulls = pc.indices_nonzero(pc.is_null(array)).to_pylist()
                checks.append((nulls, "NULL in a NOT NULL column"))
            if col.type is ColType.UINT64:
                over = pc.greater(array, pa.scalar(2**63 - 1, pa.uint64()))
                rows = pc.indices_nonzero(pc.fill_null(over, False)).to_pylist()
                checks.append((rows, "above 2**63 - 1, the largest bigint"))
            if col.type in _TEXTS:
                checks.append((_nul_rows(array, col.type), "NUL character (PostgreSQL refuses it)"))
            for rows, message in checks:
                found.extend((r, col.name, message) for r in rows)
        found.sort()
        return found
