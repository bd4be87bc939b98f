"""The starlink pipeline: Starlink Enterprise telemetry stream responses -> rows.

One response body (``POST …/v2/telemetry/stream``, shared/docs/starlink-api.md) maps to
rows of four tables, all in the ``starlink`` namespace:

- ``telemetry`` (``device_type``, ``device_id``, ``ts_ns``, ``metrics``, ``info``,
  ``ipv4``, ``ipv6_ue``, ``ipv6_cpe``, ``received_at``): one row per UserTerminal and
  Router row (and per row of any other device type with a column list, except IpAllocs);
- ``alerts`` (``device_type``, ``device_id``, ``ts_ns``, ``alert_code``, ``alert_name``):
  one row per active alert code of each such row;
- ``alert_events`` (``… alert_code``, ``alert_name``, ``event``): ``opened`` / ``cleared``
  edges derived from the alert state carried by the rows;
- ``ip_allocations`` (``device_id``, ``ts_ns``, ``ipv4``, ``ipv6_ue``, ``ipv6_cpe``): one row
  per IpAllocs row.

Mapping rules and the quirks of real payloads they handle:

1. **Columns by name, per response.** Each row is positional; element 0 is its device
   type code and ``data.columnNamesByDeviceType[code]`` names its values. The column lists
   are read from every response (never hard-coded offsets: columns get reordered and
   added), and a column list must start with ``DeviceType`` and contain ``DeviceId`` and
   ``UtcTimestampNs``. Unknown columns are mapped like any other value.
2. **Dead rows.** A row that cannot be mapped goes to :attr:`StarlinkMapping.dead` with the
   reason and the raw row: not an array, an unknown device type (no column list), a length
   that does not match its column list (in either direction), a missing or non-string
   ``DeviceId``, a ``UtcTimestampNs`` that is not an integer number of nanoseconds since
   2000-01-01, a non-integer alert code, a non-string IP address. A malformed envelope
   (invalid or truncated JSON, ``data`` missing, ``values`` or the column lists of the
   wrong JSON type) raises :class:`StarlinkEnvelopeError` instead: nothing in it is
   trustworthy. An empty batch (``values: []`` or ``null``, column lists ``{}``) maps to
   no rows. Unknown envelope keys (``aggregateValues``, ``LastPartitionUtcTimestampNs``)
   are ignored.
3. **Which table.** A type's role comes from ``metadata.enums.DeviceType`` of the same
   response (falling back to the code): ``IpAllocs`` (``i``) rows go to
   ``ip_allocations``; every other type, **Router rows included** (the reference skipped
   them), goes to ``telemetry`` and ``alerts``. ``device_type`` is the enum name
   (``UserTerminal``, ``Router``), or the code when the enums do not name it.
4. **Value typing** into the two maps of a telemetry row: JSON numbers (int or float:
   the same column mixes ``0`` and ``0.0066``) -> ``metrics`` (Float64 in the stores; an
   integral value stays a Python ``int`` in the row, exactly equal); strings ->
   ``info``; booleans -> ``info`` as ``"true"`` / ``"false"`` (a documented choice: a 0/1
   metric would make them look like measurements); ``null`` -> omitted; other arrays and
   objects -> ``info`` as compact JSON. Integers beyond ±2**53 are not exact as Float64,
   so they go to ``info`` as their decimal text instead of ``metrics``.
5. **Exact 64-bit integers.** The body is decoded with msgspec, which keeps JSON integers
   exact. ``UtcTimestampNs`` (~1.7e18) becomes ``ts_ns`` unchanged; ``H3CellId`` (a 64-bit
   H3 index) goes to ``info["H3CellId"]`` as lower-case hex (``85283083fffffff``, what the
   h3 library takes), computed from the integer, never through a float, and never into
   ``metrics``.
6. **Alerts.** The alert column may be named ``ActiveAlerts``, ``ActiveAlert``, ``Alerts``
   or ``ActiveAlertIds`` (all are read; ``null`` is ``[]``); its codes are not copied into
   the maps. Each code is named from ``metadata.enums.AlertsByDeviceType[type][str(code)]``
   **of the same response** (codes are re-pointed between responses, and Router codes
   overlap UserTerminal codes); a code missing from that map keeps its number and is
   named ``unknown_alert_<code>``.
7. **Alert events.** The stream carries state only. Per device, rows are taken in
   timestamp order: the first row where a code is active emits ``opened`` (named from that
   row's response), the first later row of that device without it emits ``cleared``
   (named as it was when opened). While a device has open alerts, only rows newer than
   the newest row already evaluated for it count (late rows still land in ``telemetry``
   and ``alerts``). The open set survives restarts through :meth:`StarlinkMapper.restore`.
8. **IP allocations.** ``DeviceId`` loses a leading ``ip-`` (tolerated when absent);
   ``Ipv4``, ``Ipv6Ue``, ``Ipv6Cpe`` are arrays of strings (``null`` or a missing column is
   ``[]``); IPv6 values stay CIDR strings as sent. All three empty is a **tombstone**.
9. **IP merge into terminal rows.** IpAllocs rows often arrive in another batch than their
   terminal's rows, so the latest addresses per terminal are kept as state. A
   UserTerminal telemetry row gets, in ``ipv4`` / ``ipv6_ue`` / ``ipv6_cpe``, the
   addresses of that terminal's IpAllocs row with the greatest timestamp at or before its
   own (the committed state and this response's IpAllocs rows both count); when none is
   that early, the earliest one known. After a tombstone the arrays are empty. Router
   and other rows get empty arrays.
10. **Near-duplicates.** Rows with the same (device type, device id, timestamp) land once:
    the first one wins, later ones are counted in :attr:`StarlinkMapping.duplicates`,
    within a response and across responses (a bounded set of recent keys), and across
    restarts (the store's most recent keys are read back at start, see
    :meth:`StarlinkMapper.restore`). IpAllocs rows
    a few ms apart with identical addresses are distinct observations and are kept.

State (open alerts, newest evaluated time per device, latest IPs per terminal, recent row
keys) changes **only** in :meth:`StarlinkMapper.commit`, called once the mapping's rows are
durable. Mapping the same body twice from the same state gives identical rows; a mapping
that is never committed leaves the state as it was. Derive batch ids from the body
(:func:`body_digest`) so a retried or replayed poll de-duplicates in the store.
"""

from __future__ import annotations

import ast
import bisect
import gc
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from typing import Any, Final, Protocol, runtime_checkable

import msgspec
import pyarrow as pa
from pydantic import Field, SecretStr

from orbitstream.core import registry
from orbitstream.core.batch import DeadLetter, Row, RowData, is_columnar, join_parts
from orbitstream.core.columns import KeyVocab, rows_of
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSettings, PipelineSpec
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import OrbitStreamError, SourceError
from orbitstream.pipelines.starlink_columns import TelemetryColumns, TelemetryRecord
from orbitstream.settings import Settings, config_error, env

__all__ = [
    "ALERTS_TABLE",
    "ALERT_COLUMNS",
    "ALERT_EVENTS_TABLE",
    "IP_ALLOCATIONS_TABLE",
    "IP_KEY",
    "PIPELINE",
    "SPEC",
    "TABLES_BY_NAME",
    "TELEMETRY_TABLE",
    "DeadRow",
    "IpState",
    "OpenAlert",
    "RecentKey",
    "StaleMappingError",
    "StarlinkEnvelopeError",
    "StarlinkJob",
    "StarlinkMapper",
    "StarlinkMapping",
    "StarlinkPipelineSettings",
    "body_digest",
    "paused_gc",
    "resumed_gc",
    "tables",
]

PIPELINE: Final = "starlink"

#: Names under which the alert codes column has been seen (real payloads, docs, clients).
ALERT_COLUMNS: Final = ("ActiveAlerts", "ActiveAlert", "Alerts", "ActiveAlertIds")

_MIN_NS: Final = 946_684_800_000_000_000  # 2000-01-01: smaller integers are not epoch ns
_MAX_NS: Final = 2**63 - 1
_EXACT: Final = 2**53  # integers beyond this are not exact as Float64
_MIN_CODE: Final = -(2**63)  # alert codes are Int64 in the stores
_MAX_CODE: Final = 2**63 - 1
_NO_IPS: Final[tuple[str, ...]] = ()
_NO_IP_TRIPLE: Final = (_NO_IPS, _NO_IPS, _NO_IPS)
_NO_STATE: Final = (0, _NO_IPS, _NO_IPS, _NO_IPS)  # a terminal without addresses
_IP_PREFIX: Final = "ip-"

OpenAlert = tuple[str, str, int, str, int]
"""An open alert as stored: ``(device_type, device_id, alert_code, alert_name, opened_ns)``."""

RecentKey = tuple[str, str, int]
"""A stored row's near-duplicate key: ``(device_type, device_id, ts_ns)``
(:data:`IP_KEY` as the type of ``ip_allocations`` rows)."""

IP_KEY: Final = "IpAllocs"
"""The device type of ``ip_allocations`` rows in :data:`RecentKey` (the table has none)."""

IpState = tuple[str, int, Sequence[str], Sequence[str], Sequence[str]]
"""A terminal's latest addresses: ``(device_id, ts_ns, ipv4, ipv6_ue, ipv6_cpe)``
(``device_id`` without ``ip-``; three empty sequences are a tombstone)."""

_CODEC = "DoubleDelta, ZSTD(1)"

TELEMETRY_TABLE = Table(
    name="telemetry",
    columns=(
        Column("device_type", ColType.STRING, low_cardinality=True),
        Column("device_id", ColType.STRING, low_cardinality=True),
        Column("ts_ns", ColType.TIMESTAMP, codec=_CODEC),
        Column("metrics", ColType.MAP_STR_FLOAT, comment="numeric values by column name"),
        Column(
            "info",
            ColType.MAP_STR_STR,
            comment="strings, booleans (true/false), H3CellId as hex, other values as JSON",
        ),
        Column("ipv4", ColType.STRING_LIST, comment="terminal rows: latest known addresses"),
        Column("ipv6_ue", ColType.STRING_LIST, comment="terminal rows: latest /64 (CIDR)"),
        Column("ipv6_cpe", ColType.STRING_LIST, comment="terminal rows: latest /56 (CIDR)"),
        Column("received_at", ColType.TIMESTAMP, codec=_CODEC, skip_index="minmax"),
    ),
    time_column="ts_ns",
    order_by=("device_id", "ts_ns"),
    entity_column="device_id",
    comment="Starlink UserTerminal and Router telemetry, one row per device sample.",
)

ALERTS_TABLE = Table(
    name="alerts",
    columns=(
        Column("device_type", ColType.STRING, low_cardinality=True),
        Column("device_id", ColType.STRING, low_cardinality=True),
        Column("ts_ns", ColType.TIMESTAMP, codec=_CODEC),
        Column("alert_code", ColType.INT64),
        Column("alert_name", ColType.STRING, low_cardinality=True),
    ),
    time_column="ts_ns",
    order_by=("device_id", "ts_ns", "alert_code"),
    entity_column="device_id",
    comment="Active alerts: one row per alert code active in a device sample.",
)

ALERT_EVENTS_TABLE = Table(
    name="alert_events",
    columns=(
        Column("device_type", ColType.STRING, low_cardinality=True),
        Column("device_id", ColType.STRING, low_cardinality=True),
        Column("ts_ns", ColType.TIMESTAMP, codec=_CODEC),
        Column("alert_code", ColType.INT64),
        Column("alert_name", ColType.STRING, low_cardinality=True),
        Column("event", ColType.STRING, low_cardinality=True, comment="opened | cleared"),
    ),
    time_column="ts_ns",
    order_by=("device_id", "alert_code", "ts_ns"),
    entity_column="device_id",
    comment="Alert edges: 'opened' the first time a code is active, 'cleared' when it ends.",
)

IP_ALLOCATIONS_TABLE = Table(
    name="ip_allocations",
    columns=(
        Column("device_id", ColType.STRING, low_cardinality=True, comment="without ip-"),
        Column("ts_ns", ColType.TIMESTAMP, codec=_CODEC),
        Column("ipv4", ColType.STRING_LIST),
        Column("ipv6_ue", ColType.STRING_LIST, comment="CIDR strings as sent"),
        Column("ipv6_cpe", ColType.STRING_LIST, comment="CIDR strings as sent"),
    ),
    time_column="ts_ns",
    order_by=("device_id", "ts_ns"),
    entity_column="device_id",
    comment="IpAllocs rows; three empty arrays are a tombstone.",
)


TABLES_BY_NAME: Final = {
    t.name: t for t in (TELEMETRY_TABLE, ALERTS_TABLE, ALERT_EVENTS_TABLE, IP_ALLOCATIONS_TABLE)
}


def tables(retention_days: int | None = 30) -> tuple[Table, Table, Table, Table]:
    """The pipeline's four tables with the configured retention.

    :param retention_days: ``TTL`` in days, ``None`` to keep rows forever.
    """
    return (
        TELEMETRY_TABLE.with_ttl(retention_days),
        ALERTS_TABLE.with_ttl(retention_days),
        ALERT_EVENTS_TABLE.with_ttl(retention_days),
        IP_ALLOCATIONS_TABLE.with_ttl(retention_days),
    )


def body_digest(body: bytes) -> str:
    """A content id for a response body (32 hex chars): the same poll replayed or retried
    gets the same id, so batch ids built from it de-duplicate in the store."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


class StarlinkEnvelopeError(SourceError):
    """The response body is not a telemetry stream envelope (bad JSON or wrong shape).

    :param reason: what is wrong, without the body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed Starlink stream response: {reason}")
        self.reason = reason


class StaleMappingError(OrbitStreamError):
    """:meth:`StarlinkMapper.commit` got a mapping made from an older state."""


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A row that could not be mapped.

    :param device_type: the row's type code (``""`` when it has none).
    :param reason: why, in words (names the column or the lengths at fault).
    :param row: the raw decoded row, as sent.
    :param table: the table it was meant for (``""`` when unknown).
    """

    device_type: str
    reason: str
    row: object
    table: str = ""

    def to_dead_letter(self, batch_id: str, pipeline: str = PIPELINE) -> DeadLetter:
        """This row as a dead letter for the store's dead-letter table."""
        return DeadLetter(
            pipeline=pipeline,
            table=self.table or "telemetry",
            batch_id=batch_id,
            row={"device_type": self.device_type, "row": self.row},
            error=self.reason,
        )


_IpTuple = tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]
_AlertState = tuple[
    int, dict[int, tuple[str, str, int]]
]  # (newest ts, {code: (type, name, opened)})


@dataclass(slots=True)
class _Delta:
    """State changes a mapping would make; applied by :meth:`StarlinkMapper.commit`."""

    alerts: dict[str, _AlertState | None] = field(default_factory=dict)  # None: nothing open
    ips: dict[str, _IpTuple] = field(default_factory=dict)
    # the rows' near-duplicate keys, in body order (the job's ``seen`` dict itself: a
    # dict-to-dict update reuses its hashes)
    keys: dict[tuple[str, str, int], None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class StarlinkMapping:
    """The rows of one response, and the state change they imply.

    :param rows: table name -> rows (tuples in the table's column order; ``telemetry``
        as one ``pyarrow.RecordBatch`` when the mapper is columnar, see :meth:`tuples`);
        every table of :func:`tables` is present, possibly with no rows.
    :param dead: rows that could not be mapped, each with its reason.
    :param duplicates: rows skipped as near-duplicates of a row already mapped.
    :param values: number of rows in the response.
    """

    rows: dict[str, RowData]
    dead: list[DeadRow]
    duplicates: int
    values: int
    _base: int
    _delta: _Delta

    @property
    def row_count(self) -> int:
        """Rows over all tables."""
        return sum(len(r) for r in self.rows.values())

    def tuples(self, table: str) -> list[Row]:
        """The rows of ``table`` as tuples, whichever form :attr:`rows` holds."""
        data = self.rows[table]
        if is_columnar(data):
            return rows_of(TABLES_BY_NAME[table], data)
        rows: list[Row] = data
        return rows

    def dead_letters(self, batch_id: str, pipeline: str = PIPELINE) -> list[DeadLetter]:
        """:attr:`dead` as dead letters."""
        return [d.to_dead_letter(batch_id, pipeline) for d in self.dead]


# -- envelope ------------------------------------------------------------------------


class _Data(msgspec.Struct):
    values: list[Any] | None = None
    columnNamesByDeviceType: dict[str, list[str]] | None = None


class _Enums(msgspec.Struct):
    DeviceType: dict[str, str] | None = None
    AlertsByDeviceType: dict[str, dict[str, str]] | None = None


class _Metadata(msgspec.Struct):
    enums: _Enums | None = None


class _Envelope(msgspec.Struct):
    data: _Data
    metadata: _Metadata | None = None


_DECODER = msgspec.json.Decoder(_Envelope)
_JSON = msgspec.json.Encoder()


def _decode(body: bytes) -> _Envelope:
    try:
        return _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise StarlinkEnvelopeError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise StarlinkEnvelopeError(f"invalid JSON: {exc}") from exc


# -- per-type plans and per-signature shapes ---------------------------------------------

_TELEMETRY = 0
_TERMINAL = 1
_IPS = 2
_SPECIAL = frozenset({"DeviceType", "UtcTimestampNs", "DeviceId", "H3CellId", *ALERT_COLUMNS})
_BOOL_TEXT: Final = {True: "true", False: "false"}
_NONE = type(None)


class _Bad(Exception):
    """A row-level reason to dead-letter (internal)."""


def _getter(idxs: Sequence[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """``row -> tuple of row[i] for i in idxs`` (itemgetter, always returning a tuple)."""
    if not idxs:
        return lambda row: ()
    if len(idxs) == 1:
        i = idxs[0]
        return lambda row: (row[i],)
    return itemgetter(*idxs)


def _role(code: str, name: str | None) -> int:
    if name is not None:
        if name == "IpAllocs":
            return _IPS
        return _TERMINAL if name == "UserTerminal" else _TELEMETRY
    if code == "i":
        return _IPS
    return _TERMINAL if code == "u" else _TELEMETRY


class _Shape:
    """How to map the rows of one plan whose values have one tuple of types (a signature).

    Rows of a type come in few signatures (a column is ``0`` or ``0.01``, null or not), so
    the per-value type dispatch of rule 4 is done once per signature. The tuple path's
    :attr:`build` is a function compiled for it, ``row -> (metrics, info)``, made of two
    dict displays (``{"DownlinkThroughput": row[3], …}``), built as an AST whose keys are
    ``ast.Constant`` nodes, so no text from a response is ever parsed as code. The
    columnar path takes the same values in the same order without a Python frame where it
    can: :attr:`metric_get` and :attr:`info_get` are ``itemgetter`` objects over the numeric and
    string columns, :attr:`info_convert` (compiled like :attr:`build`, ``None`` when there
    is nothing to convert) makes the info values that are converted (booleans, H3 cell,
    JSON text), which come after the plain strings.
    """

    __slots__ = (
        "alert_cols",
        "bad",
        "build",
        "device_type",
        "info_convert",
        "info_get",
        "info_ids",
        "int_get",
        "metric_get",
        "metric_ids",
        "plan",
    )

    def __init__(self, plan: _Plan, sig: tuple[type, ...]) -> None:
        self.plan = plan
        self.device_type = plan.device_type
        self.bad = (
            plan.error is not None
            or len(sig) != plan.width
            or sig[plan.id_idx] is not str
            or sig[plan.ts_idx] is not int
        )
        self.alert_cols: tuple[tuple[int, str], ...] = ()
        self.int_get: Callable[[list[Any]], tuple[Any, ...]] | None = None
        metrics: list[tuple[str, int]] = []
        plain: list[tuple[str, int]] = []
        converted: list[tuple[str, ast.expr]] = []
        if not self.bad:
            ints: list[int] = []
            for i in plan.value_idx:
                t = sig[i]
                name = plan.columns[i]
                if t is float or t is int:
                    metrics.append((name, i))
                    if t is int:
                        ints.append(i)
                elif t is str:
                    plain.append((name, i))
                elif t is bool:
                    converted.append((name, _call("B", i)))
                elif t is not _NONE:
                    converted.append((name, _call("J", i)))
            h3 = plan.h3_idx
            if h3 >= 0 and sig[h3] is not _NONE:
                if sig[h3] is str:
                    plain.append(("H3CellId", h3))
                else:
                    converted.append(("H3CellId", _call("X" if sig[h3] is int else "J", h3)))
            self.alert_cols = tuple((i, c) for i, c in plan.alert_idx if sig[i] is not _NONE)
            self.int_get = _getter(ints) if ints else None
        info = [(k, _item(i)) for k, i in plain] + converted
        self.build: Callable[[list[Any]], tuple[dict[str, float], dict[str, str]]] = _compile(
            [(k, _item(i)) for k, i in metrics], info
        )
        self.metric_get = _getter([i for _, i in metrics])
        self.info_get = _getter([i for _, i in plain])
        self.info_convert: Callable[[list[Any]], tuple[str, ...]] | None = (
            _compile_tuple(converted) if converted else None
        )
        self.metric_ids = plan.vocab.ids_of(k for k, _ in metrics)
        self.info_ids = plan.vocab.ids_of(k for k, _ in info)


def _item(i: int) -> ast.expr:
    return ast.Subscript(ast.Name("row", ast.Load()), ast.Constant(i), ast.Load())


def _call(fn: str, i: int) -> ast.expr:
    return ast.Call(ast.Name(fn, ast.Load()), [_item(i)], [])


def _hex(h3: int) -> str:
    return format(h3, "x") if h3 >= 0 else str(h3)


def _compile(
    metrics: list[tuple[str, ast.expr]], info: list[tuple[str, ast.expr]]
) -> Callable[[list[Any]], Any]:
    """``row -> (metrics, info)``: two dict displays."""

    def display(items: list[tuple[str, ast.expr]]) -> ast.expr:
        return ast.Dict([ast.Constant(k) for k, _ in items], [v for _, v in items])

    return _function(ast.Tuple([display(metrics), display(info)], ast.Load()))


def _compile_tuple(items: list[tuple[str, ast.expr]]) -> Callable[[list[Any]], Any]:
    """``row -> tuple of the items' values``."""
    return _function(ast.Tuple([v for _, v in items], ast.Load()))


def _function(value: ast.expr) -> Callable[[list[Any]], Any]:
    """``lambda row: value``, compiled from the AST (no response text is parsed)."""
    args = ast.arguments(
        posonlyargs=[], args=[ast.arg("row")], kwonlyargs=[], kw_defaults=[], defaults=[]
    )
    fn = ast.FunctionDef(
        name="build", args=args, body=[ast.Return(value)], decorator_list=[], returns=None
    )
    module = ast.fix_missing_locations(ast.Module([fn], type_ignores=[]))
    namespace: dict[str, Any] = {"B": _BOOL_TEXT.__getitem__, "J": _json_text, "X": _hex}
    exec(compile(module, "<starlink-shape>", "exec"), namespace)
    build: Callable[[list[Any]], Any] = namespace["build"]
    return build


class _Plan:
    """What a response's column list for one device type means (cached across responses)."""

    __slots__ = (
        "alert_idx",
        "code",
        "columns",
        "device_type",
        "error",
        "h3_idx",
        "id_idx",
        "ip_idx",
        "role",
        "shapes",
        "table",
        "ts_idx",
        "value_idx",
        "vocab",
        "width",
    )

    def __init__(
        self, code: str, columns: tuple[str, ...], type_name: str | None, vocab: KeyVocab
    ) -> None:
        self.code = code
        self.vocab = vocab
        self.columns = columns
        self.role = _role(code, type_name)
        self.table = IP_ALLOCATIONS_TABLE.name if self.role == _IPS else TELEMETRY_TABLE.name
        self.device_type = type_name or code
        self.width = len(columns)
        self.shapes: dict[tuple[type, ...], _Shape] = {}
        index: dict[str, int] = {}
        for i, name in enumerate(columns):
            index.setdefault(name, i)  # a repeated name: the first one counts
        self.error: str | None = None
        if not columns or columns[0] != "DeviceType":
            self.error = f"the column list of device type {code!r} does not start with DeviceType"
        else:
            missing = [c for c in ("UtcTimestampNs", "DeviceId") if c not in index]
            if missing:
                self.error = (
                    f"the column list of device type {code!r} has no {' or '.join(missing)}"
                )
        self.ts_idx = index.get("UtcTimestampNs", 0)
        self.id_idx = index.get("DeviceId", 0)
        self.ip_idx = (index.get("Ipv4", -1), index.get("Ipv6Ue", -1), index.get("Ipv6Cpe", -1))
        self.value_idx = tuple(
            i for i, name in enumerate(columns) if name not in _SPECIAL and index[name] == i
        )
        self.alert_idx: tuple[tuple[int, str], ...] = tuple(
            (index[c], c) for c in ALERT_COLUMNS if c in index
        )
        self.h3_idx = index.get("H3CellId", -1)

    def shape(self, sig: tuple[type, ...]) -> _Shape:
        if len(self.shapes) >= 4096:  # pathological variety: start over rather than grow
            self.shapes.clear()
        shape = self.shapes[sig] = _Shape(self, sig)
        return shape

    def check(self, row: list[Any]) -> tuple[str, int]:
        """``(device id, ts)`` of a row, or :class:`_Bad` with the reason."""
        if self.error is not None:
            raise _Bad(self.error)
        if len(row) != self.width:
            raise _Bad(
                f"row has {len(row)} values but the column list of device type "
                f"{self.code!r} has {self.width}"
            )
        dev = row[self.id_idx]
        if type(dev) is not str or not dev:
            raise _Bad(f"DeviceId is not a non-empty string: {_short(dev)}")
        ts = row[self.ts_idx]
        if type(ts) is not int or not _MIN_NS <= ts <= _MAX_NS:
            raise _Bad(f"UtcTimestampNs is not integer nanoseconds since 2000-01-01: {_short(ts)}")
        return dev, ts


def _alert_names(raw: dict[str, str] | None) -> dict[int, str]:
    names: dict[int, str] = {}
    for key, name in (raw or {}).items():
        try:
            names[int(key)] = name
        except ValueError:
            continue  # a key that is not a code cannot match any row's code
    return names


def _codes(value: object, column: str) -> tuple[int, ...]:
    if type(value) is not list:
        if type(value) is int:
            return _codes([value], column)
        raise _Bad(f"{column} is not an array of alert codes: {_short(value)}")
    out: list[int] = []
    for code in value:
        if type(code) is str and code.strip().lstrip("-").isdigit():
            code = int(code)
        if type(code) is not int or not _MIN_CODE <= code <= _MAX_CODE:
            raise _Bad(f"{column} holds a value that is not an integer alert code: {_short(code)}")
        out.append(code)
    return tuple(dict.fromkeys(out))


def _addresses(value: object, column: str) -> tuple[str, ...]:
    if value is None:
        return _NO_IPS
    if type(value) is not list:
        raise _Bad(f"{column} is not an array of addresses: {_short(value)}")
    for item in value:
        if type(item) is not str:
            raise _Bad(f"{column} holds a value that is not an address string: {_short(item)}")
    return tuple(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_text(value: object) -> str:
    return _JSON.encode(value).decode()


def _beyond_exact(ints: tuple[int, ...]) -> bool:
    return max(ints) > _EXACT or min(ints) < -_EXACT


def _inexact(metrics: dict[str, float], info: dict[str, str]) -> None:
    """Move integers that Float64 cannot hold exactly from ``metrics`` to ``info``."""
    for name, v in list(metrics.items()):
        if type(v) is int and not -_EXACT <= v <= _EXACT:
            del metrics[name]
            info[name] = str(v)


# -- the mapper ----------------------------------------------------------------------


class StarlinkMapper:
    """Maps stream response bodies to rows; holds the cross-batch state.

    Not thread-safe: map and commit from one task, one response at a time.

    :param recent_limit: how many recent (type, device, timestamp) keys are remembered at
        least to drop near-duplicates that arrive in a later response (the last
        ``recent_limit`` committed keys; at most twice as many plus one response are
        held: the keys are kept in two generations, the older one dropped whole, see
        decisions §50).
    :param columnar: build ``telemetry`` as one Arrow record batch, column by column
        (:mod:`orbitstream.pipelines.starlink_columns`, the default); ``False``: as tuple
        rows with one ``metrics`` and one ``info`` dict each (the reference the columnar
        path is tested against).
    :param columnar_min_rows: map parts with fewer body rows as tuples even when
        columnar: building Arrow arrays costs ~4 ms per part whatever its size, the
        tuple path ~6 µs per row (measured), so small responses are cheaper as tuples.
    """

    def __init__(
        self, *, recent_limit: int = 131_072, columnar: bool = True, columnar_min_rows: int = 1024
    ) -> None:
        if recent_limit < 0:
            raise ValueError("recent_limit must be >= 0")
        self.recent_limit = recent_limit
        self.columnar = columnar
        self.columnar_min_rows = columnar_min_rows
        self._version = 0
        # device id -> (newest evaluated ts, {code: (device type, name, opened ns)}),
        # for the devices with at least one open alert
        self._alerts: dict[str, _AlertState] = {}
        self._ips: dict[str, _IpTuple] = {}
        # the near-duplicate keys committed since the last rotation, and those of the
        # generation before (>= recent_limit keys once a rotation happened)
        self._recent: dict[tuple[str, str, int], None] = {}
        self._older: dict[tuple[str, str, int], None] = {}
        # keys read back from the store at start: (device type name, or IP_KEY, device id,
        # ts // unit); dropped once recent_limit new keys were committed (then _recent
        # covers the same horizon)
        self._restored: set[tuple[str, str, int]] = set()
        self._restored_unit = 1
        self._restored_budget = 0
        self._plans: dict[tuple[str, tuple[str, ...], str | None], _Plan] = {}
        self._vocab = KeyVocab()  # map keys of the columnar path

    # -- state -------------------------------------------------------------------------
    def restore(
        self,
        *,
        open_alerts: Iterable[OpenAlert] = (),
        ips: Iterable[IpState] = (),
        recent_keys: Iterable[RecentKey] = (),
        key_unit_ns: int = 1,
    ) -> None:
        """Replace the state with what the store holds (at start-up, before any map).

        :param open_alerts: alerts whose last event is ``opened``, as
            ``(device_type, device_id, alert_code, alert_name, opened_ns)``.
        :param ips: each terminal's latest ``ip_allocations`` row, as
            ``(device_id, ts_ns, ipv4, ipv6_ue, ipv6_cpe)``.
        :param recent_keys: the store's most recent rows, as ``(device_type, device_id,
            ts_ns)`` (``device_type`` is the stored name, :data:`IP_KEY` for
            ``ip_allocations`` rows, device id without ``ip-``): a later row with the same
            key is a near-duplicate of a row stored before the restart (rule 10). At most
            :attr:`recent_limit` are kept, and only until that many new keys were
            committed.
        :param key_unit_ns: the store's timestamp precision (PostgreSQL: 1000); restored
            keys are compared at that precision.

        A restored device's newest evaluated time is its latest ``opened_ns``; rows older
        than that do not produce alert events.
        """
        alerts: dict[str, _AlertState] = {}
        for device_type, device_id, code, name, opened_ns in open_alerts:
            last, codes = alerts.get(device_id, (-1, {}))
            codes[int(code)] = (device_type, name, int(opened_ns))
            alerts[device_id] = (max(last, int(opened_ns)), codes)
        state: dict[str, _IpTuple] = {}
        for device_id, ts_ns, v4, ue, cpe in ips:
            dev = device_id[len(_IP_PREFIX) :] if device_id.startswith(_IP_PREFIX) else device_id
            current = state.get(dev)
            if current is None or ts_ns >= current[0]:
                state[dev] = (int(ts_ns), tuple(v4), tuple(ue), tuple(cpe))
        if key_unit_ns < 1:
            raise ValueError("key_unit_ns must be >= 1")
        restored: set[tuple[str, str, int]] = set()
        if self.recent_limit:
            for device_type, device_id, ts_ns in recent_keys:
                restored.add((device_type, device_id, int(ts_ns) // key_unit_ns))
                if len(restored) >= self.recent_limit:
                    break
        self._alerts = alerts
        self._ips = state
        self._recent = {}
        self._older = {}
        self._restored = restored
        self._restored_unit = key_unit_ns
        self._restored_budget = self.recent_limit
        self._version += 1

    def open_alerts(self) -> list[OpenAlert]:
        """The committed open alerts, in the shape :meth:`restore` takes."""
        return [
            (device_type, dev, code, name, opened)
            for dev, (_, codes) in self._alerts.items()
            for code, (device_type, name, opened) in codes.items()
        ]

    def ip_state(self) -> list[IpState]:
        """The committed latest addresses per terminal, in the shape :meth:`restore` takes."""
        return [(dev, ts, v4, ue, cpe) for dev, (ts, v4, ue, cpe) in self._ips.items()]

    def commit(self, mapping: StarlinkMapping) -> None:
        """Make a mapping's state change permanent; call once its rows are durable.

        :raises StaleMappingError: the mapping was made before another commit or restore
            (map the body again from the current state).
        """
        if mapping._base != self._version:
            raise StaleMappingError("this mapping was made from an older state; map it again")
        delta = mapping._delta
        for dev, state in delta.alerts.items():
            if state is None:
                self._alerts.pop(dev, None)
            else:
                self._alerts[dev] = state
        self._ips.update(delta.ips)
        if self.recent_limit:
            # no per-key eviction: deleting from the front of a large dict costs a rehash
            # per key and leaves dummies that slow every later miss (measured: 40-60 ms
            # per 65,000-row commit, and lookups slowing response after response)
            self._recent.update(delta.keys)
            if len(self._recent) >= self.recent_limit:
                self._older, self._recent = self._recent, {}
        if self._restored:
            self._restored_budget -= len(delta.keys)
            if self._restored_budget <= 0:
                self._restored = set()
        self._version += 1

    # -- mapping -----------------------------------------------------------------------
    def _plan(self, code: str, columns: list[str], type_name: str | None) -> _Plan:
        key = (code, tuple(columns), type_name)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 256:
                self._plans.clear()
            plan = self._plans[key] = _Plan(code, key[1], type_name, self._vocab)
        return plan

    def map(self, body: bytes, received_ns: int) -> StarlinkMapping:
        """Rows for every table from one response body. Pure: the state is only read.

        The cyclic garbage collector is paused while mapping: a 65,000-row response makes
        ~300k containers that all survive (they are the result) and hold no cycles, and
        the collector would walk them about ten times per call for nothing (measured:
        15-20 % of the mapping time).

        :param body: the response body as received.
        :param received_ns: when it was received (epoch ns): the ``received_at`` column.
        :raises StarlinkEnvelopeError: the body is not a stream envelope.
        """
        with paused_gc():
            return self.begin(body, received_ns).finish()

    def begin(self, body: bytes, received_ns: int) -> StarlinkJob:
        """Start mapping one body a part at a time (:class:`StarlinkJob`): decodes it and
        maps its IpAllocs rows. :meth:`map` is ``begin(...).finish()``.

        :raises StarlinkEnvelopeError: the body is not a stream envelope.
        """
        return StarlinkJob(self, body, received_ns)

    def _ip_pass(
        self,
        values: list[Any],
        plans: dict[str, _Plan],
        ip_codes: set[str],
        seen: dict[tuple[str, str, int], None],
        dead: list[DeadRow],
        delta: _Delta,
    ) -> tuple[list[Row], dict[str, tuple[list[int], list[_IpTriple]]], int]:
        """Pass 1: IpAllocs rows, so that terminal rows anywhere in the response see them.

        Returns the ``ip_allocations`` rows, per terminal its timeline (sorted times and
        address triples, the committed state included) and the duplicates skipped.
        """
        rows: list[Row] = []
        duplicates = 0
        if not ip_codes:
            return rows, {}, duplicates
        recent, older = self._recent, self._older
        restored, unit = self._restored, self._restored_unit
        events: dict[str, list[_IpTuple]] = {}
        try:  # a quick scan (C-level comparisons) when every row is a non-empty array
            candidates = [row for row in values if row[0] in ip_codes]
        except (TypeError, IndexError, KeyError):
            candidates = [
                row
                for row in values
                if type(row) is list and row and type(row[0]) is str and row[0] in ip_codes
            ]
        for row in candidates:
            if type(row) is not list:
                continue  # e.g. a string whose first character is a type code
            plan = plans[row[0]]
            try:
                dev, ts = plan.check(row)
                if dev.startswith(_IP_PREFIX):
                    dev = dev[len(_IP_PREFIX) :]
                key = (plan.code, dev, ts)
                if (
                    key in seen
                    or key in recent
                    or key in older
                    or (restored and (IP_KEY, dev, ts // unit) in restored)
                ):
                    duplicates += 1
                    continue
                i4, i6u, i6c = plan.ip_idx
                v4 = _addresses(row[i4], "Ipv4") if i4 >= 0 else _NO_IPS
                ue = _addresses(row[i6u], "Ipv6Ue") if i6u >= 0 else _NO_IPS
                cpe = _addresses(row[i6c], "Ipv6Cpe") if i6c >= 0 else _NO_IPS
            except _Bad as bad:
                dead.append(DeadRow(plan.code, str(bad), row, plan.table))
                continue
            seen[key] = None
            rows.append((dev, ts, v4, ue, cpe))
            events.setdefault(dev, []).append((ts, v4, ue, cpe))
        committed = self._ips
        timelines: dict[str, tuple[list[int], list[_IpTriple]]] = {}
        for dev, evs in events.items():
            base = committed.get(dev)
            merged = [base, *evs] if base is not None else evs
            merged.sort(key=_first)
            timelines[dev] = ([e[0] for e in merged], [(e[1], e[2], e[3]) for e in merged])
            latest = merged[-1]
            if latest is not base:
                delta.ips[dev] = latest
        return rows, timelines, duplicates

    def _edges(
        self,
        groups: dict[str, list[tuple[str, int, tuple[int, ...], str]]],
        plans: dict[str, _Plan],
        names_by_code: dict[str, dict[int, str]],
        delta: _Delta,
    ) -> list[Row]:
        """``opened`` / ``cleared`` rows from the rows' alert codes, per device in time order.

        :param groups: per device that has an alert in the response or open before it,
            its rows as ``(device, ts, codes, type code)``.
        """
        committed = self._alerts
        events: list[Row] = []
        for dev, items in groups.items():
            items.sort(key=_time_then_type)
            state = committed.get(dev)
            last, before = state if state is not None else (-1, {})
            current = dict(before)
            for _, ts, codes, code in items:
                if ts <= last:
                    continue  # not newer than what was already evaluated
                last = ts
                if codes:
                    dtype = plans[code].device_type
                    names = names_by_code[code]
                    for c in codes:
                        if c not in current:
                            name = names.get(c) or f"unknown_alert_{c}"
                            current[c] = (dtype, name, ts)
                            events.append((dtype, dev, ts, c, name, "opened"))
                if len(current) > len(codes):
                    for c in [c for c in current if c not in codes]:
                        dtype, name, _ = current.pop(c)
                        events.append((dtype, dev, ts, c, name, "cleared"))
            if current:
                delta.alerts[dev] = (last, current)
            elif state is not None:
                delta.alerts[dev] = None
        return events


_Flat = tuple[str, int, tuple[int, ...], str]  # (device, ts, codes, type code)
_IpTriple = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic collector (see :meth:`StarlinkMapper.map`) and restore it."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def resumed_gc() -> Iterator[None]:
    """Run the cyclic collector inside a :func:`paused_gc` block, then pause it again."""
    paused = not gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if paused:
            gc.disable()


class StarlinkJob:
    """One response body being mapped, a part at a time.

    Made by :meth:`StarlinkMapper.begin`, which decodes the body and maps its IpAllocs
    rows (pass 1, so terminal rows anywhere in the body see them). :meth:`parts` then maps
    the other rows of consecutive ranges of ``values`` — ``telemetry`` and ``alerts``
    rows — so that a source can hand each part to the sinks while the next one is mapped
    (the store inserts it on its own thread); :meth:`finish` maps what no part covered
    and returns the :class:`StarlinkMapping` with ``ip_allocations``, ``alert_events``
    (derived from every row of the body) and the rows no part returned. Part ranges are
    positions in the body, so a replayed body is cut the same way.

    Pure like :meth:`StarlinkMapper.map`: the mapper's state is only read; the mapping
    is made permanent by :meth:`StarlinkMapper.commit`.
    """

    def __init__(self, mapper: StarlinkMapper, body: bytes, received_ns: int) -> None:
        env = _decode(body)
        if len(mapper._vocab) > 65_536:  # column names seen: start over, with new shapes
            mapper._plans.clear()
            mapper._vocab = KeyVocab()
        values = env.data.values or []
        column_lists = env.data.columnNamesByDeviceType or {}
        enums = env.metadata.enums if env.metadata is not None else None
        type_names = (enums.DeviceType if enums is not None else None) or {}
        alert_maps = (enums.AlertsByDeviceType if enums is not None else None) or {}
        self.mapper = mapper
        self.received_ns = received_ns
        self.plans: dict[str, _Plan] = {}
        self.names_by_code: dict[str, dict[int, str]] = {}
        ip_codes: set[str] = set()
        for code, columns in column_lists.items():
            plan = self.plans[code] = mapper._plan(code, columns, type_names.get(code))
            if plan.role == _IPS:
                ip_codes.add(code)
            else:
                self.names_by_code[code] = _alert_names(alert_maps.get(code))
        self.values: list[Any] = values
        self.total = len(values)
        self.dead: list[DeadRow] = []
        self.seen: dict[tuple[str, str, int], None] = {}  # insertion-ordered
        self.delta = _Delta()
        self.base = mapper._version
        self.ip_rows, self.timelines, self.duplicates = mapper._ip_pass(
            values, self.plans, ip_codes, self.seen, self.dead, self.delta
        )
        self.alerting: set[str] = set()
        self.flat: list[_Flat] = []
        self._pos = 0
        self._recent, self._older = mapper._recent, mapper._older
        self._restored, self._unit = mapper._restored, mapper._restored_unit

    # -- parts ---------------------------------------------------------------------------
    def parts(self, size: int | None = None, tail: int = 0) -> Iterator[dict[str, RowData]]:
        """The ``telemetry`` and ``alerts`` rows of the next ``size`` body rows at a time
        (all remaining rows when ``None``), until the body is covered.

        :param tail: with a ``size``, the last part of a body longer than ``size`` has
            this many rows (the others are cut evenly): it is the one whose insert
            nothing overlaps, so it is kept small. The cuts depend only on the body's
            length and these two numbers, so a replayed body is cut the same way.
        """
        for lo, hi in self._ranges(size, tail):
            self._pos = hi
            yield self._part(self.values if (lo, hi) == (0, self.total) else self.values[lo:hi])

    def _ranges(self, size: int | None, tail: int) -> list[tuple[int, int]]:
        lo, total = self._pos, self.total
        if lo >= total:
            return []
        if size is None or total - lo <= size:
            return [(lo, total)]
        size = max(1, size)
        tail = max(0, min(tail, size))
        head = total - lo - tail
        count = -(-head // size)
        cuts = [lo + head * k // count for k in range(count + 1)]
        ranges = list(pairwise(cuts))
        return [*ranges, (cuts[-1], total)] if tail else ranges

    def finish(self) -> StarlinkMapping:
        """The mapping: ``ip_allocations``, ``alert_events`` and the ``telemetry`` /
        ``alerts`` rows of the body rows no :meth:`parts` call returned."""
        rest = list(self.parts())
        telemetry: RowData = []
        alerts: list[Row] = []
        if rest:
            tel = [p[TELEMETRY_TABLE.name] for p in rest if len(p[TELEMETRY_TABLE.name])]
            if tel:
                telemetry = tel[0] if len(tel) == 1 else join_parts(TELEMETRY_TABLE, tel)
            for p in rest:
                alerts.extend(p[ALERTS_TABLE.name])
        events = self.mapper._edges(self._by_device(), self.plans, self.names_by_code, self.delta)
        self.delta.keys = self.seen
        self.values = []  # the decoded body can go
        rows: dict[str, RowData] = {
            TELEMETRY_TABLE.name: telemetry,
            ALERTS_TABLE.name: alerts,
            ALERT_EVENTS_TABLE.name: events,
            IP_ALLOCATIONS_TABLE.name: self.ip_rows,
        }
        return StarlinkMapping(rows, self.dead, self.duplicates, self.total, self.base, self.delta)

    def _part(self, chunk: list[Any]) -> dict[str, RowData]:
        alerts: list[Row] = []
        telemetry: list[Row] = []
        if not self.mapper.columnar or len(chunk) < self.mapper.columnar_min_rows:
            self._loop(chunk, alerts, telemetry, False)
            return {TELEMETRY_TABLE.name: telemetry, ALERTS_TABLE.name: alerts}
        records: list[TelemetryRecord] = []
        self._loop(chunk, alerts, records, True)
        data: RowData = []
        if records:
            try:
                data = TelemetryColumns(self.mapper._vocab, records).finish(
                    TELEMETRY_TABLE, self.received_ns
                )
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                # a value no Arrow column holds (an integer metric beyond 2**53, say):
                # tuple rows, which keep such integers exact and let the sink name a row
                data = [_tuple_row(r[0].plan, r[0], r[6], r[5], self.received_ns) for r in records]
        return {TELEMETRY_TABLE.name: data, ALERTS_TABLE.name: alerts}

    # -- the row-by-row loop -----------------------------------------------------------
    def _loop(
        self,
        rows: Iterable[Any],
        alerts: list[Row],
        telemetry: list[Any],
        columnar: bool,
    ) -> None:
        """Map rows one at a time. Tuple path: telemetry rows are appended to
        ``telemetry``; columnar: their :data:`TelemetryRecord`, for
        :class:`TelemetryColumns` (which keep the body row, to rebuild the rows as tuples
        should the record batch fail)."""
        plans, seen, dead = self.plans, self.seen, self.dead
        recent, older = self._recent, self._older
        restored, unit = self._restored, self._unit
        received_ns = self.received_ns
        min_ns, max_ns = _MIN_NS, _MAX_NS
        timelines_get, committed_ips = self.timelines.get, self.mapper._ips.get
        bisect_right = bisect.bisect_right
        for row in rows:
            if type(row) is not list or not row:
                dead.append(DeadRow("", f"row is not a non-empty array: {_short(row)}", row))
                continue
            code = row[0]
            plan = plans.get(code) if type(code) is str else None
            if plan is None:
                dead.append(
                    DeadRow(
                        code if type(code) is str else "",
                        f"no column list for device type {_short(code)} in this response",
                        row,
                    )
                )
                continue
            if plan.role == _IPS:
                continue  # done in pass 1
            sig = tuple(map(type, row))
            shape = plan.shapes.get(sig)
            if shape is None:
                shape = plan.shape(sig)
            codes: tuple[int, ...] = ()
            try:
                if shape.bad:
                    plan.check(row)  # raises with the reason
                dev = row[plan.id_idx]
                ts = row[plan.ts_idx]
                if not dev or ts < min_ns or ts > max_ns:
                    plan.check(row)
                key = (code, dev, ts)
                if (
                    key in seen
                    or (recent and key in recent)
                    or (older and key in older)
                    or (restored and (plan.device_type, dev, ts // unit) in restored)
                ):
                    self.duplicates += 1
                    continue
                for i, column in shape.alert_cols:
                    value = row[i]
                    if value:
                        more = _codes(value, column)
                        codes = more if not codes else tuple(dict.fromkeys(codes + more))
            except _Bad as bad:
                dead.append(DeadRow(code, str(bad), row, plan.table))
                continue
            seen[key] = None
            dtype = plan.device_type
            if plan.role != _TERMINAL:
                ips = _NO_IP_TRIPLE
            elif (tl := timelines_get(dev)) is not None:  # the addresses at ts (rule 9)
                pos = bisect_right(tl[0], ts) - 1
                ips = tl[1][pos if pos >= 0 else 0]
            else:
                state = committed_ips(dev, _NO_STATE)
                ips = (state[1], state[2], state[3])
            if not columnar:
                telemetry.append(_tuple_row(plan, shape, row, ips, received_ns))
            else:
                i_vals = shape.info_get(row)
                if shape.info_convert is not None:
                    i_vals += shape.info_convert(row)
                telemetry.append((shape, dev, ts, shape.metric_get(row), i_vals, ips, row))
            if codes:
                self.alerting.add(dev)
                names = self.names_by_code[code]
                for c in codes:
                    alerts.append((dtype, dev, ts, c, names.get(c) or f"unknown_alert_{c}"))
            self.flat.append((dev, ts, codes, code))

    def _by_device(self) -> dict[str, list[_Flat]]:
        """The rows of the devices with an alert in the body or open before it, per device
        (what :meth:`StarlinkMapper._edges` evaluates)."""
        alerting, committed = self.alerting, self.mapper._alerts
        out: dict[str, list[_Flat]] = {}
        if not alerting and not committed:
            return out
        for item in self.flat:
            dev = item[0]
            if dev in alerting or dev in committed:
                out.setdefault(dev, []).append(item)
        return out


def _tuple_row(
    plan: _Plan,
    shape: _Shape,
    row: list[Any],
    ips: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    received_ns: int,
) -> Row:
    """One telemetry row as a tuple (the tuple path)."""
    metrics, info = shape.build(row)
    if shape.int_get is not None and _beyond_exact(shape.int_get(row)):
        _inexact(metrics, info)
    v4, ue, cpe = ips
    dev, ts = row[plan.id_idx], row[plan.ts_idx]
    return (plan.device_type, dev, ts, metrics, info, v4, ue, cpe, received_ns)


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _time_then_type(item: _Flat) -> tuple[int, str]:
    """Rows of one device in time order; a UserTerminal and a Router row sharing a device
    id and a timestamp in type-code order (the order is the same however they were
    mapped)."""
    return item[1], item[3]


# -- the pipeline ------------------------------------------------------------------------


class StarlinkPipelineSettings(PipelineSettings):
    """The starlink pipeline: the seed's variables (``CLIENT_ID``, ``CLIENT_SECRET``,
    ``BATCH_SIZE``, ``MAX_LINGER``), the endpoints and the raw archive; every field also
    answers to ``ORBITSTREAM_STARLINK__<FIELD>`` and ``[pipelines.starlink]``.

    ``BATCH_SIZE`` is also the engine's batch size (the seeds share the name): its
    Starlink limit (1–65000) is checked when the pipeline runs, so another pipeline's
    larger value does not stop ``orbitstream run satellites``. Credentials and URLs are
    checked then too (``orbitstream pipelines`` and ``query`` need none).

    :param raw_archive: directory where each response body is kept gzip-compressed with
        its poll time, before it is mapped (``orbitstream replay starlink PATH``).
    :param halted_log_secs: while a batch is not durable (a store is down), log that
        polling is halted this often.
    """

    client_id: str = Field("", validation_alias=env("CLIENT_ID"))
    client_secret: SecretStr = Field(SecretStr(""), validation_alias=env("CLIENT_SECRET"))
    batch_size: int = Field(1000, validation_alias=env("BATCH_SIZE"))
    max_linger_ms: int = Field(15000, ge=1, le=65000, validation_alias=env("MAX_LINGER"))
    token_url: str = Field(
        "https://starlink.com/api/auth/connect/token", validation_alias=env("STARLINK_TOKEN_URL")
    )
    stream_url: str = Field(
        "https://starlink.com/api/public/v2/telemetry/stream",
        validation_alias=env("STARLINK_STREAM_URL"),
    )
    token_auth: str = Field("form", validation_alias=env("STARLINK_TOKEN_AUTH"))
    raw_archive: str | None = Field(None, validation_alias=env("STARLINK_RAW_ARCHIVE"))
    token_refresh_margin_secs: float = Field(60.0, ge=0)
    timeout_margin_secs: float = Field(30.0, ge=1.0)
    backoff_base_secs: float = Field(1.0, gt=0)
    backoff_max_secs: float = Field(60.0, gt=0)
    halted_log_secs: float = Field(30.0, gt=0)

    def setting_name(self, field_name: str) -> str:
        """The variable a field is set by (for error messages)."""
        info = type(self).model_fields.get(field_name)
        alias = info.validation_alias if info is not None else None
        choices = getattr(alias, "choices", ())
        for choice in choices:
            if isinstance(choice, str) and choice.isupper():
                return choice
        return f"ORBITSTREAM_{PIPELINE.upper()}__{field_name.upper()}"

    def client_settings(self) -> Any:
        """The API client's settings (a
        :class:`~orbitstream.sources.starlink_api.StarlinkSettings`).

        :raises ConfigError: a value the Starlink source cannot run with, naming its variable.
        """
        from pydantic import ValidationError

        from orbitstream.sources.starlink_api import StarlinkSettings

        names = (
            "client_id",
            "client_secret",
            "batch_size",
            "max_linger_ms",
            "token_url",
            "stream_url",
            "token_auth",
            "token_refresh_margin_secs",
            "timeout_margin_secs",
            "backoff_base_secs",
            "backoff_max_secs",
        )
        values = {n: getattr(self, n) for n in names}
        try:
            return StarlinkSettings(**values)
        except ValidationError as exc:

            def describe(err: Mapping[str, Any]) -> tuple[str, str]:
                field_name = str(err["loc"][0]) if err["loc"] else "client_id"
                value = err.get("input")
                if field_name not in self.model_fields_set:
                    shown = "(not set)"
                elif field_name == "client_secret":
                    shown = "'***'" if self.client_secret.get_secret_value() else "''"
                else:  # as the variable was written (what load_settings' errors show)
                    shown = repr(value if isinstance(value, str) else str(value))
                return self.setting_name(field_name), shown

            # every bad setting at once, as load_settings does
            raise config_error(exc, describe) from exc


def _tables(own: StarlinkPipelineSettings, settings: Settings) -> tuple[Table, ...]:
    return tables(settings.retention_days)


@runtime_checkable
class _NeedsStopTime(Protocol):
    """A source that knows how long its stop must be allowed (the Starlink source)."""

    def stop_need(self) -> float: ...


def _build(build: PipelineBuild) -> PipelineParts:
    own = build.own
    assert isinstance(own, StarlinkPipelineSettings)
    source = registry.source_type(build.source).create(build, StarlinkMapper())
    return PipelineParts(
        source,
        # SIGTERM during a long poll waits for its answer (as long as the request may
        # take: MAX_LINGER plus the timeout margin) and for its rows to be written (10 s
        # more): a poll abandoned is a batch lost, as the API advances when it answers
        min_stop_secs=own.client_settings().stream_timeout_secs + 10.0,
        stop_need=source.stop_need if isinstance(source, _NeedsStopTime) else None,
        info={
            "stream_url": own.stream_url,
            "batch_size": own.batch_size,
            "max_linger_ms": own.max_linger_ms,
            "raw_archive": own.raw_archive,
        },
    )


SPEC = PipelineSpec(
    name=PIPELINE,
    description="Starlink Enterprise telemetry stream (polled): telemetry, alerts, alert "
    "events, IP allocations.",
    settings=StarlinkPipelineSettings,
    tables=_tables,
    build=_build,
    sources=("starlink",),
    namespace="starlink",
    namespace_env=("CLICKHOUSE_DB", "CLICKHOUSE_DATABASE"),
)
