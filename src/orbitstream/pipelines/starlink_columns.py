"""Starlink ``telemetry`` rows as one Arrow record batch, from one record per row.

The tuple path of :class:`~orbitstream.pipelines.starlink.StarlinkMapper`
(``columnar=False``) builds a ``metrics`` and an ``info`` dict per row, and the sink then
turns 60,000 rows of dicts back into Arrow map arrays: measured on a 65,000-row response,
~0.3 s for the dicts and 0.6-1.0 s for the conversion. Here the mapping loop appends one
record per row — ``(shape, device id, ts, metric values, info values, addresses, row)``,
the values as two tuples made by a function compiled per row signature — and
:meth:`TelemetryColumns.finish` converts the records once: ``zip(*records)`` and
``chain.from_iterable`` flatten them at C speed, and the map keys, fixed by each row's
shape, are gathered with numpy from the shapes' key ids (no per-row key lists). The
values stay in the order the body was decoded, which is their order in memory:
converting them reads memory in sequence. (Building the columns column-major instead —
transposing the rows and converting one response column at a time — was measured slower
than the tuple path: each pass over a column touches one value per row far apart in
memory.)
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from orbitstream.core.columns import KeyVocab, arrow_schema, map_array, string_lists
from orbitstream.core.tables import Table

__all__ = ["RowShape", "TelemetryColumns", "TelemetryRecord"]

_F64 = pa.float64()
_STR = pa.string()
_IP_LISTS = pa.list_(pa.string())


class RowShape(Protocol):
    """What :meth:`TelemetryColumns.finish` reads of a row's shape."""

    device_type: str
    metric_ids: tuple[int, ...]
    info_ids: tuple[int, ...]


# (shape, device id, ts, metric values, info values, (ipv4, ipv6_ue, ipv6_cpe), body row)
_Ips = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
TelemetryRecord = tuple[Any, str, int, tuple[Any, ...], tuple[Any, ...], _Ips, list[Any]]


class TelemetryColumns:
    """The records of one part's telemetry rows (the mapping loop appends them to a
    plain list); :meth:`finish` makes the record batch."""

    __slots__ = ("records", "vocab")

    def __init__(self, vocab: KeyVocab, records: list[TelemetryRecord]) -> None:
        self.vocab = vocab
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def finish(self, table: Table, received_ns: int) -> Any:
        """The rows as one ``RecordBatch`` of ``table`` (the telemetry table).

        :raises pyarrow.ArrowException: a value does not fit its column — e.g. an integer
            metric beyond 2**53, which Float64 cannot hold exactly (the caller falls back
            to tuple rows, which keep such integers exact in ``info``).
        """
        n = len(self.records)
        shapes, devices, times, metric_values, info_values, ips, _ = zip(*self.records, strict=True)
        order: Sequence[RowShape] = list(dict.fromkeys(shapes))
        distinct = {shape: i for i, shape in enumerate(order)}
        index = np.fromiter(map(distinct.__getitem__, shapes), dtype=np.intp, count=n)
        kinds = pa.array([s.device_type for s in order], type=_STR)
        v4, ue, cpe = zip(*ips, strict=True)
        arrays = [
            kinds.take(pa.array(index)),
            pa.array(devices, type=_STR),
            pa.array(times, type=pa.int64()),
            self._map(order, index, [s.metric_ids for s in order], metric_values, _F64),
            self._map(order, index, [s.info_ids for s in order], info_values, _STR),
            _lists(v4, n),
            _lists(ue, n),
            _lists(cpe, n),
            pa.array(np.full(n, received_ns, dtype=np.int64)),
        ]
        schema = arrow_schema(table)
        for j, f in enumerate(schema):
            if arrays[j].type != f.type:
                arrays[j] = arrays[j].cast(f.type)
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def _map(
        self,
        order: Sequence[RowShape],
        index: Any,
        key_ids: list[tuple[int, ...]],
        values: tuple[tuple[Any, ...], ...],
        typ: Any,
    ) -> Any:
        """One map column: row ``r`` has the keys of its shape (``key_ids[index[r]]``)
        and the values of its record, in that order."""
        lengths = np.fromiter(map(len, key_ids), dtype=np.int64, count=len(order))
        counts = lengths[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        flat_ids = np.fromiter(
            chain.from_iterable(key_ids), dtype=np.int32, count=int(lengths.sum())
        )
        starts = np.zeros(len(order), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        # entry e of row r reads flat_ids[starts[shape of r] + (e - offsets[r])]
        gather = np.repeat(starts[index] - offsets[:-1], counts) + np.arange(total)
        keys = self.vocab.keys(flat_ids[gather])
        items = pa.array(list(chain.from_iterable(values)), type=typ)
        return map_array(offsets.astype(np.int32), keys, items, typ)


def _lists(values: tuple[tuple[str, ...], ...], n: int) -> Any:
    if not any(values):  # no addresses at all: n empty lists, from offsets
        return string_lists(np.zeros(n + 1, dtype=np.int32), pa.array([], type=_STR))
    return pa.array(values, type=_IP_LISTS)
