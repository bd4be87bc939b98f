"""Arrow record batches -> PostgreSQL binary ``COPY`` bytes with ``pgpq`` (Rust, no Python
loop per value): the columnar counterpart of
:class:`~orbitstream.sinks.postgres.encoding.CopyEncoder`, with its error behaviour.

Columns are prepared for pgpq first (all vectorized):

- TIMESTAMP: ``timestamp[ns]`` -> ``timestamp[us]``, floored (``ns // 1000``, as ours);
- UINT64 -> int64 (``bigint``); a value above ``2**63 - 1`` is refused, as ours;
- MAP_*: -> JSON text sent as ``jsonb`` (keys and string values escaped by msgspec once
  per distinct value, floats in Arrow's shortest round-trip form except whole floats
  below 1e16, written ``1.0`` as ours; NaN and infinities as ``null`` like ours); the
  text differs from ours byte for byte (``1e+20`` vs ``1e20``), the stored ``jsonb``
  value does not — numbers included, with their scale (jsonb keeps ``1.0`` apart from
  ``1``, and clients read the one as a float, the other as an integer);
- STRING, FLOAT64, INT64, BOOL as they are;
- STRING_LIST (``text[]``, element OID 25): pgpq's list encoder costs ~0.2 µs per row even
  for an empty list (three quarters of a satellites batch's encoding), so the column's
  values are built in the bytes pgpq writes, with numpy, and handed to pgpq as ``binary``
  (written as they are: a binary COPY field is its value's ``array_send`` form whatever
  the client's type); a column with a null element goes to pgpq's list encoder.

A value PostgreSQL cannot hold raises :class:`~orbitstream.sinks.postgres.encoding.EncodeError`
naming its column and row, and :meth:`ArrowCopyEncoder.bad_rows` lists every such row (for
``SinkRejectedError.bad_rows``): a null in a NOT NULL column, a UINT64 above ``2**63 - 1``,
and a NUL character in text, a text array or a map (PostgreSQL refuses ``\\x00`` in
``text`` and ``\\u0000`` in ``jsonb``; our tuple encoder leaves those to the server, which
then refuses the whole batch).
"""

from __future__ import annotations

import bisect
import struct
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
_TEXT_OID = 25
# a text[] value's head (array_send, as pgpq writes it): ndim 1, no-null flag, element OID,
# then the length (bytes 12-16, per row) and the lower bound 1
_HEAD = np.frombuffer(struct.pack(">iiiii", 1, 0, _TEXT_OID, 0, 1), dtype=np.uint8)
_HEAD_LEN = len(_HEAD)
_BYTE4 = np.arange(4)
_MAX_BINARY_BYTES = 2**31 - 1


def _text_array_fields(lists: Any) -> Any:
    """A ``list<string>`` array as ``binary``: each row's ``text[]`` value in binary COPY
    form, the bytes pgpq's list encoder writes (null rows stay null), built with numpy
    from the array's offsets and bytes; ``None`` when an element is null or the bytes
    exceed int32 offsets (pgpq's own encoder then writes it)."""
    n = len(lists)
    off = lists.offsets.to_numpy().astype(np.int64)
    base = int(off[0])
    count = np.diff(off)  # elements per row
    child = lists.values.slice(base, int(off[-1]) - base)
    if child.null_count:
        return None
    if not len(child):  # every list empty (or null): one value, repeated
        ends = np.arange(0, _HEAD_LEN * (n + 1), _HEAD_LEN, dtype=np.int64)
        out = np.tile(_HEAD, n)
    else:
        ends, out = _text_array_bytes(child, off - base, count)
    if ends[-1] > _MAX_BINARY_BYTES:  # more than a binary array's int32 offsets hold
        return None
    fields = pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(ends.astype(np.int32)), pa.py_buffer(out)]
    )
    if lists.null_count:
        fields = pc.if_else(pc.is_valid(lists), fields, pa.scalar(None, pa.binary()))
    return fields


def _text_array_bytes(child: Any, rel: Any, count: Any) -> tuple[Any, Any]:
    """The fields' end offsets and bytes, for lists of ``count`` elements starting at
    ``rel`` in the string array ``child``."""
    n = len(count)
    bufs = child.buffers()
    eo = np.frombuffer(bufs[1], dtype=np.int32)[child.offset : child.offset + len(child) + 1]
    eo = eo.astype(np.int64)
    elen = np.diff(eo)
    # bytes of the elements before each one, and per row
    before = np.zeros(len(elen) + 1, dtype=np.int64)
    np.cumsum(elen, out=before[1:])
    row_bytes = _HEAD_LEN + 4 * count + (before[rel[1:]] - before[rel[:-1]])
    ends = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_bytes, out=ends[1:])
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    heads = np.tile(_HEAD, (n, 1))
    heads[:, 12:16] = count.astype(">i4").view(np.uint8).reshape(n, 4)
    out[(ends[:-1, None] + np.arange(_HEAD_LEN)).ravel()] = heads.ravel()
    row = np.repeat(np.arange(n), count)
    nth = np.arange(len(elen)) - rel[row]  # the element's place in its row
    start = ends[row] + _HEAD_LEN + 4 * nth + before[:-1] - before[rel[row]]
    out[(start[:, None] + _BYTE4).ravel()] = elen.astype(">i4").view(np.uint8).ravel()
    if before[-1]:
        data = np.frombuffer(bufs[2], dtype=np.uint8)
        src = np.arange(int(eo[0]), int(eo[-1]))
        out[np.repeat(start + 4 - eo[:-1], elen) + src] = data[src]
    return ends, out


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
        text = pc.if_else(pc.fill_null(finite, False), _float_text(items), "null")
    else:
        text = pc.if_else(pc.is_valid(items), _quoted(pc.fill_null(items, "")), "null")
    entries = pc.binary_join_element_wise(keys, text, ":")
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, entries), ",")
    out = pc.binary_join_element_wise("{", joined, "}", "")
    if maps.null_count:
        out = pc.if_else(pc.is_valid(maps), out, pa.scalar(None, pa.string()))
    return out


#: below this magnitude the tuple path's encoder (msgspec, like ``repr``) writes a whole
#: float in plain notation with ``.0``; from it on, in exponent notation as Arrow does
_PLAIN_BELOW = 1e16


def _float_text(items: Any) -> Any:
    """Float values as JSON numbers that PostgreSQL reads as the tuple path's do: the
    same value *and scale* (jsonb keeps it: ``1.0`` stays ``1.0`` and reads back as a
    float, ``1`` as an integer). Arrow writes a whole float as ``1`` or ``1e+15``
    (scale 0); below 1e16 it is written here as the integer and ``.0``, as msgspec does.
    Every other value's text is Arrow's, which parses to the same numeric as msgspec's."""
    text = pc.cast(items, pa.string())
    whole = pc.fill_null(
        pc.and_(pc.less(pc.abs(items), _PLAIN_BELOW), pc.equal(pc.floor(items), items)), False
    )
    if not pc.any(whole).as_py():
        return text
    # only the whole values are formatted again (measured: half the time of formatting
    # every value twice when a third are whole)
    ints = pc.cast(pc.take(items, pc.indices_nonzero(whole)), pa.int64())  # exact: < 1e16
    plain = pc.binary_join_element_wise(pc.cast(ints, pa.string()), ".0", "")
    return pc.replace_with_mask(text, whole, plain)


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


_TRAILER = b"\xff\xff"


class _Stream:
    """One COPY stream's pgpq encoder, replaced when the form its batches are prepared in
    changes (text[] columns as lists, or as encoded bytes). pgpq holds rows back until
    its buffer fills, and only ``finish`` hands over the rest: the encoder being replaced
    is finished and its trailer dropped, so the rows stay in order."""

    __slots__ = ("_coded", "_encoder", "_owner", "header")

    def __init__(self, owner: ArrowCopyEncoder) -> None:
        self._owner = owner
        self._coded = False
        self._encoder: Any = None  # made for the first batch's form
        self.header: bytes = owner.header

    def rows(self, prepared: Any, coded: bool) -> bytes:
        held = b""
        if self._encoder is None or coded != self._coded:
            held = self._end()
            self._encoder = self._owner._new(coded)
            self._encoder.write_header()  # its state machine wants one; ours was sent
            self._coded = coded
        return held + self._encoder.write_batch(prepared)  # type: ignore[no-any-return]

    def _end(self) -> bytes:
        """The rows the encoder still holds."""
        if self._encoder is None:
            return b""
        rest: bytes = self._encoder.finish()
        if not rest.endswith(_TRAILER):
            raise EncodeError("pgpq ended a stream without its trailer", column="", row_index=0)
        return rest[: -len(_TRAILER)]

    def trailer(self) -> bytes:
        return self._end() + _TRAILER


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
        # the same with the text[] columns as their encoded bytes (_text_array_fields)
        self.coded_schema = pa.schema(
            [
                pa.field(f.name, pa.binary(), nullable=f.nullable)
                if col.type is ColType.STRING_LIST
                else f
                for col, f in zip(table.columns, fields, strict=True)
            ]
        )
        self._lists = [i for i, c in enumerate(table.columns) if c.type is ColType.STRING_LIST]
        self.header: bytes = pgpq.ArrowToPostgresBinaryEncoder(self.schema).write_header()
        self._encoders: dict[bool, dict[str, Any]] = {}  # by form: text[] coded or not
        if any(col.type in _MAPS for col in table.columns):
            # pgpq wants a builder for every field once one is given
            for coded, schema in ((False, self.schema), (True, self.coded_schema)):
                self._encoders[coded] = {
                    col.name: (
                        pgpq_types.StringEncoderBuilder.new_with_output(f, pgpq_types.Jsonb())
                        if col.type in _MAPS
                        else pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(f)
                    )
                    for col, f in zip(table.columns, schema, strict=True)
                }

    def _new(self, coded: bool) -> Any:
        schema = self.coded_schema if coded else self.schema
        builders = self._encoders.get(coded)
        if builders is not None:
            return pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(schema, builders)
        return pgpq.ArrowToPostgresBinaryEncoder(schema)

    def prepare(self, data: Any) -> Any:
        """``data`` with its columns in the types pgpq encodes (no checks)."""
        return self._prepare(data)[0]

    def _prepare(self, data: Any) -> tuple[Any, bool]:
        """:meth:`prepare`, and whether the text[] columns are encoded bytes."""
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
        if self._lists:
            coded = [_text_array_fields(arrays[i]) for i in self._lists]
            if all(c is not None for c in coded):
                for i, c in zip(self._lists, coded, strict=True):
                    arrays[i] = c
                return pa.RecordBatch.from_arrays(arrays, schema=self.coded_schema), True
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema), False

    def encode(self, data: Any) -> bytes:
        """The whole ``COPY ... (FORMAT BINARY)`` stream for one record batch (or a
        sequence of them): header, rows, trailer.

        :raises EncodeError: the first bad row, in row order (see :meth:`bad_rows` for all).
        """
        parts = data if isinstance(data, list | tuple) else [data]
        stream = _Stream(self)
        out = [stream.header]
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
                out.append(stream.rows(*self._prepare(part)))
            except (pa.ArrowException, ValueError) as exc:  # not foreseen above
                raise EncodeError(str(exc), column="", row_index=offset) from exc
            offset += part.num_rows
        out.append(stream.trailer())
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
        stream = _Stream(self)
        yield stream.header
        total = int(data.num_rows)
        for start in range(0, total, max(1, chunk_rows)):
            try:
                yield stream.rows(*self._prepare(data.slice(start, chunk_rows)))
            except (pa.ArrowException, ValueError) as exc:  # not foreseen above
                raise EncodeError(str(exc), column="", row_index=start) from exc
        yield stream.trailer()

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
