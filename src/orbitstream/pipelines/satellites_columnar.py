"""The satellites pipeline, columnar: a batch body -> a ``telemetry`` ``RecordBatch`` + alert rows.

The same semantics as :meth:`~orbitstream.pipelines.satellites.SatelliteMapper.map` (rows,
order, rejected indices and messages, alert events and state changes), with the per-point
Python work cut to a few list comprehensions:

1. :func:`decode_columns` decodes the body into :class:`LoosePoint` structs: every
   constraint of :class:`~orbitstream.pipelines.satellites.Point` but two is checked by
   msgspec as before. The two left are the costly ones: the ``satellite_id`` pattern
   (checked once per *distinct* id, with the same regex and ``re.search`` that msgspec
   uses) and the RFC 3339 parse of ``timestamp`` (kept as a string and parsed for the
   whole column by Arrow when it has the plain form ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)``;
   any other string goes through msgspec itself). Anything that does not pass returns
   ``None``: the caller then takes the exact path (``Decoder(list[Point])`` and
   :func:`~orbitstream.pipelines.satellites.field_errors`), so refusals and their messages
   are the tuple path's, unchanged.
2. :func:`map_columns` checks the time window, applies the three rules and builds the
   record batch: vectorized comparisons (``pyarrow.compute``), ``anomaly_reasons`` by a
   lookup of the rules' bit set, ``received_at`` as a repeated scalar. Alert rows come
   from the same :class:`~orbitstream.detect.alerts.AlertTracker`, visited only for the
   points that can change it (an anomaly, or a satellite with an open alert).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orbitstream.core.batch import Row, RowData
from orbitstream.core.columns import arrow_schema, reason_lists_by_code
from orbitstream.pipelines.satellites import (
    TELEMETRY_TABLE,
    Battery,
    EpochNs,
    FieldError,
    Point,
    Rfc3339,
    SatelliteMapper,
    Signal,
    Storage,
    to_ns,
)

__all__ = [
    "ColumnMapped",
    "LoosePoint",
    "PointColumns",
    "commit_columns",
    "decode_columns",
    "map_columns",
]

# The pattern of SatelliteId, searched as msgspec does (``re.search``).
_ID_SEARCH = re.compile(r"^[A-Za-z0-9_.:-]+$").search
# RFC 3339 strings Arrow parses to exactly the instant msgspec gives (at most 6 fraction
# digits: msgspec rounds more to microseconds; seconds 00-59; offsets up to 23:59).
_RFC3339_PLAIN = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-"
    r"(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_US = pa.timestamp("us", tz="UTC")
_NS = pa.timestamp("ns", tz="UTC")
_INT64 = (-(2**63), 2**63 - 1)
_LO_US = -(2**63) // 1000 + 1  # the microseconds whose nanoseconds fit int64
_HI_US = (2**63 - 1) // 1000
_NP_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
_NONE = type(None)
_SORT_ABOVE = 64  # watched points beyond which only the state changes are visited

SatelliteIdLoose = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TimestampLoose = Annotated[str, msgspec.Meta(max_length=64)] | EpochNs | None


class LoosePoint(msgspec.Struct, gc=False):
    """:class:`~orbitstream.pipelines.satellites.Point` without the two costly checks
    (the id pattern, the RFC 3339 parse), which :func:`decode_columns` does per column."""

    satellite_id: SatelliteIdLoose
    battery_charge_percent: Battery
    storage_usage_mb: Storage
    signal_strength_dbm: Signal
    timestamp: TimestampLoose = None


_LOOSE = msgspec.json.Decoder(list[LoosePoint])


@dataclass(slots=True)
class PointColumns:
    """Valid points, one list per field (``timestamps`` as sent: RFC 3339 strings,
    datetimes, epoch-ns ints or ``None``)."""

    satellite_id: list[str]
    battery_charge_percent: list[float]
    storage_usage_mb: list[float]
    signal_strength_dbm: list[float]
    timestamps: list[object]
    resolved: _Times | None = None  # the timestamps resolved by decode_columns

    def __len__(self) -> int:
        return len(self.satellite_id)

    @classmethod
    def from_points(cls, points: Sequence[Point | LoosePoint]) -> PointColumns:
        """Columns of decoded structs (the exact path's :class:`Point` s, e.g. from NDJSON
        or a batch with invalid points)."""
        return cls(
            [p.satellite_id for p in points],
            [p.battery_charge_percent for p in points],
            [p.storage_usage_mb for p in points],
            [p.signal_strength_dbm for p in points],
            [p.timestamp for p in points],
        )


def decode_columns(body: bytes) -> PointColumns | None:
    """A JSON array of points -> columns, or ``None`` when the exact path must decide
    (anything invalid, or not JSON): see the module docstring.

    Every point :func:`decode_columns` returns is one ``Decoder(list[Point])`` accepts,
    with the same values once :func:`map_columns` resolved the timestamps.
    """
    try:
        points = _LOOSE.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    cols = PointColumns.from_points(points)
    if not all(map(_ID_SEARCH, set(cols.satellite_id))):
        return None
    cols.resolved = _times(cols.timestamps)
    if cols.resolved is None:
        return None
    return cols


# -- timestamps --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Times:
    """Nanoseconds per point: ``ns`` (null where no timestamp was sent, and where the
    instant does not fit int64: those are listed in ``overflow``); ``None`` when no point
    has a timestamp."""

    ns: Any
    overflow: tuple[int, ...]


_ALL_ABSENT = _Times(None, ())


def _exact(value: object) -> int | None:
    """The tuple path's nanoseconds of one sent timestamp (``None`` when absent)."""
    if value is None:
        return None
    if value.__class__ is int:
        return value
    if isinstance(value, str):
        value = msgspec.convert(value, Rfc3339)
    assert isinstance(value, dt.datetime | int)
    return to_ns(value, 0)


def _from_us(us: Any) -> _Times:
    typed = us.cast(pa.int64())
    absent = None
    if typed.null_count:
        absent = typed.is_null().to_numpy(zero_copy_only=False)
        typed = pc.fill_null(typed, 0)
    ints = typed.to_numpy()
    overflow: tuple[int, ...] = ()
    if len(ints) and (ints.min() < _LO_US or ints.max() > _HI_US):
        out_of_range = (ints < _LO_US) | (ints > _HI_US)
        overflow = tuple(np.flatnonzero(out_of_range).tolist())
        ints = np.where(out_of_range, 0, ints)
        absent = out_of_range if absent is None else absent | out_of_range
    return _Times(pa.array(ints * 1000, mask=absent), overflow)


_PLAIN_MATCH = re.compile(_RFC3339_PLAIN).match


_ZEROS = str.maketrans("123456789", "000000000")


@functools.lru_cache(maxsize=64)
def _form(text: str) -> tuple[Any, Any]:
    """Per byte of ``text`` (digits written as 0): the lowest allowed byte and the span
    above it (digits: "0" and 9; any other character: itself and 0)."""
    template = np.frombuffer(text.encode(), dtype=np.uint8)
    digit = (template >= 48) & (template <= 57)
    low = np.where(digit, 48, template).astype(np.uint8)
    span = np.where(digit, 9, 0).astype(np.uint8)
    return low, span


def _one_plain_form(strings: Any) -> bool:
    """Every string has the plain RFC 3339 form of the first one, digit for digit: same
    length, the same characters where the first has no digit, digits where it has one,
    and a year other than 0000. The ranges of the fields (month, day, hour...) are left to
    Arrow's parser, which refuses every out-of-range field msgspec refuses."""
    if strings.null_count or not len(strings):
        return False
    first = strings[0].as_py()
    if _PLAIN_MATCH(first) is None:
        return False
    width = len(first)
    offsets = np.frombuffer(
        strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=4 * strings.offset
    )
    if len(first.encode()) != width or not (np.diff(offsets) == width).all():
        return False
    start = int(offsets[0])
    data = np.frombuffer(
        strings.buffers()[2], dtype=np.uint8, count=len(strings) * width, offset=start
    ).reshape(len(strings), width)
    low, span = _form(first.translate(_ZEROS))
    # per position: a digit where the first has one, else its character (uint8 wraps)
    if not ((data - low) <= span).all():
        return False
    return not (data[:, :4] == 48).all(axis=1).any()  # year 0000


def _times(raw: list[object]) -> _Times | None:
    """Resolve a column of sent timestamps; ``None`` if a string is not RFC 3339."""
    kinds = set(map(type, raw))
    kinds.discard(_NONE)
    if not kinds:
        return _ALL_ABSENT
    if kinds == {int}:
        return _Times(pa.array(raw, type=pa.int64()), ())
    if kinds == {str}:
        strings = pa.array(raw, type=pa.string())
        if (
            _one_plain_form(strings)
            or pc.all(pc.match_substring_regex(strings, _RFC3339_PLAIN)).as_py()
        ):  # nulls are skipped
            try:
                return _from_us(strings.cast(_US))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # e.g. 2026-02-30: msgspec decides (and refuses)
    elif kinds == {dt.datetime}:
        return _from_us(pa.array(raw, type=_US))
    # mixed kinds or unusual strings: one by one, exactly as the tuple path
    values: list[int | None] = []
    overflow: list[int] = []
    lo, hi = _INT64
    for i, value in enumerate(raw):
        try:
            ns = _exact(value)
        except msgspec.ValidationError:
            return None
        if ns is not None and not lo <= ns <= hi:
            overflow.append(i)
            ns = None
        values.append(ns)
    return _Times(pa.array(values, type=pa.int64()), tuple(overflow))


# -- mapping -----------------------------------------------------------------------------


@dataclass(slots=True)
class ColumnMapped:
    """:class:`~orbitstream.pipelines.satellites.Mapped`, columnar: the ``telemetry`` rows
    as one record batch (schema :func:`~orbitstream.core.columns.arrow_schema` of
    ``TELEMETRY_TABLE``), the ``alerts`` rows as tuples (few), the refused points by input
    index, and the alert state they would change (:func:`commit_columns`)."""

    telemetry: Any
    alerts: list[Row]
    rejected: list[tuple[int, FieldError]]
    alert_changes: dict[str, tuple[str, ...]]
    alert_events: list[Row]

    @property
    def accepted(self) -> int:
        return int(self.telemetry.num_rows)

    @property
    def rows(self) -> dict[str, RowData]:
        """Rows per table, as the pipeline takes them (``telemetry`` columnar)."""
        out: dict[str, RowData] = {"telemetry": self.telemetry}
        if self.alerts:
            out["alerts"] = self.alerts
        return out


@functools.lru_cache(maxsize=64)
def _combination_tuples(names: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(
        tuple(n for k, n in enumerate(names) if code >> k & 1) for code in range(1 << len(names))
    )


def map_columns(
    mapper: SatelliteMapper, cols: PointColumns, received_ns: int | None = None
) -> ColumnMapped:
    """Map ``cols`` with ``mapper``'s rules, window and alert state; nothing changes until
    :func:`commit_columns`.

    :param cols: from :func:`decode_columns` or :meth:`PointColumns.from_points`.
    :param received_ns: the receive time (default: now), the ``received_at`` column.
    """
    received = received_ns if received_ns is not None else time.time_ns()
    window = mapper.window
    lo, hi = window.bounds(received)
    n = len(cols)
    times = cols.resolved if cols.resolved is not None else _times(cols.timestamps)
    if times is None:  # only for hand-made columns: decode_columns checked them
        raise msgspec.ValidationError("timestamp: not an RFC 3339 time")
    sid = pa.array(cols.satellite_id, type=pa.string())
    values = [
        np.array(cols.battery_charge_percent, dtype=np.float64),
        np.array(cols.storage_usage_mb, dtype=np.float64),
        np.array(cols.signal_strength_dbm, dtype=np.float64),
    ]
    rejected: list[tuple[int, FieldError]] = []
    kept: list[int] | None = None  # input index of each kept point, when some were refused
    if times.ns is None:
        t = np.full(n, received, dtype=np.int64)
    else:
        ns = times.ns
        low, high = pc.min_max(ns).values()
        bad: list[int] = list(times.overflow)
        if (low.is_valid and low.as_py() < lo) or (high.is_valid and high.as_py() > hi):
            outside = pc.or_(pc.less(ns, lo), pc.greater(ns, hi))
            bad = sorted({*pc.indices_nonzero(pc.fill_null(outside, False)).to_pylist(), *bad})
        t = (pc.fill_null(ns, received) if ns.null_count else ns).to_numpy()
        if bad:
            for i in bad:
                t_ns = _exact(cols.timestamps[i])
                assert t_ns is not None
                problem = window.problem(t_ns, received) or "timestamp out of range"
                rejected.append((i, FieldError("timestamp", problem)))
            keep = np.ones(n, dtype=bool)
            keep[bad] = False
            kept = np.flatnonzero(keep).tolist()
            t = t[keep]
            sid = sid.filter(pa.array(keep))
            values = [v[keep] for v in values]
    rules = mapper.rules.rules
    names = tuple(r.rule for r in rules)
    code = np.zeros(len(t), dtype=np.int16)
    for k, (r, v) in enumerate(zip(rules, values, strict=True)):
        code |= _NP_OPS[r.op](v, r.threshold).astype(np.int16) << k
    codes = pa.array(code)
    m = len(t)
    telemetry = pa.RecordBatch.from_arrays(
        [
            pa.Array.from_buffers(_NS, m, [None, pa.py_buffer(np.ascontiguousarray(t))]),
            sid,
            *(pa.array(v) for v in values),
            pa.array(code != 0),
            reason_lists_by_code((), names, codes),
            pa.repeat(pa.scalar(received, _NS), m),
        ],
        schema=arrow_schema(TELEMETRY_TABLE),
    )
    alerts: list[Row] = []
    changes: dict[str, tuple[str, ...]] = {}
    active = mapper.alerts.active
    anomalous = np.flatnonzero(code)
    if m and (active or len(anomalous)):
        sids = cols.satellite_id
        # Only a point of a satellite with an open alert, or with an anomaly in this
        # batch, can change the state (the tuple path's condition).
        watched = set(active)
        watched.update(sids[kept[j] if kept is not None else j] for j in anomalous.tolist())
        subset = np.flatnonzero(
            pc.is_in(sid, value_set=pa.array(list(watched), type=pa.string())).to_numpy(
                zero_copy_only=False
            )
        )
        if len(subset) > _SORT_ABOVE:  # many watched points: only the state changes
            picked = _state_changes(sid.take(pa.array(subset)), code[subset], active, names)
            candidates = subset[picked].tolist()
        else:
            candidates = subset.tolist()
        combos = _combination_tuples(names)
        tracker = mapper.alerts
        code_at = code[candidates].tolist()
        t_at = t[candidates].tolist()
        for j, c, t_ns in zip(candidates, code_at, t_at, strict=True):
            i = kept[j] if kept is not None else j
            s = sids[i]
            why = combos[c]
            if why or (active and s in active) or (changes and s in changes):
                vals = (
                    cols.battery_charge_percent[i],
                    cols.storage_usage_mb[i],
                    cols.signal_strength_dbm[i],
                )
                alerts.extend(tracker.observe(s, t_ns, why, vals, changes))
    return ColumnMapped(telemetry, alerts, rejected, changes, alerts)


@functools.lru_cache(maxsize=4096)
def _state_code(reasons: tuple[str, ...], names: tuple[str, ...]) -> int:
    """The bit set of an alert state, or -1 when the tuple is not in the canonical rule
    order (then the first point of that satellite is visited and ``observe`` decides)."""
    code = sum(1 << names.index(r) for r in reasons if r in names)
    return code if _combination_tuples(names)[code] == reasons else -1


def _state_changes(
    sid: Any, code: Any, active: dict[str, tuple[str, ...]], names: tuple[str, ...]
) -> list[int]:
    """Positions (in order) of the points whose reasons differ from the previous state of
    their satellite: the previous point of the same satellite in this batch, else its
    open alerts. :meth:`~orbitstream.detect.alerts.AlertTracker.observe` returns nothing
    and changes nothing for every other point, so visiting only these is the same."""
    if not active and not code.any():
        return []
    encoded = pc.dictionary_encode(sid)
    idx = encoded.indices.to_numpy()
    start = np.array(
        [_state_code(active.get(u, ()), names) for u in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    order = np.argsort(idx, kind="stable")
    by_sid = idx[order]
    sorted_code = code[order].astype(np.int64)
    previous = np.empty_like(sorted_code)
    previous[1:] = sorted_code[:-1]
    first = np.ones(len(order), dtype=bool)
    first[1:] = by_sid[1:] != by_sid[:-1]
    previous[first] = start[by_sid[first]]
    changed: list[int] = np.sort(order[sorted_code != previous]).tolist()
    return changed


def commit_columns(mapper: SatelliteMapper, mapped: ColumnMapped) -> None:
    """The rows of ``mapped`` were accepted: apply their alert state changes (as
    :meth:`~orbitstream.pipelines.satellites.SatelliteMapper.commit`)."""
    if mapped.alert_changes:
        mapper.alerts.commit(mapped.alert_changes, mapped.alert_events)
