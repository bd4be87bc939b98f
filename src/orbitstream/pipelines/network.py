"""The network pipeline: SR Linux-style state dumps -> nodes, interfaces, addresses, counters.

Wire format (topic ``network-data``; see docs/kafka.md): a message is a JSON array
(or one object) of path updates ``{"path": ..., "entries": [{"keys": {...}, "fields":
{...}}, ...]}``, optionally with ``"timestamp"`` (epoch nanoseconds or RFC 3339, as gNMI
notifications carry) on an update. Without one, the broker's message timestamp
(``position.timestamp_ns``) is the sample time. Known paths:

* ``.node.srl.interface.status`` — ``admin_status``, ``oper_status``;
* ``.node.srl.interface.statistics`` — ``in_packets``, ``out_packets``, ``in_octets``,
  ``out_octets``, ``in_errors``, ``out_errors`` (cumulative; integers or decimal strings,
  as gNMI's JSON encodes 64-bit values);
* ``.node.srl.interface.subinterface.ipv4.address`` / ``...ipv6.address`` — keys
  ``subinterface_index`` and ``address_ip-prefix``, fields ``origin``, ``status``.

Other paths are tolerated: counted in :attr:`MapResult.unknown_paths`, never an error (a
message with nothing else, or only empty entry lists, counts as ``ignored``).

Tables (rows are also what is republished, one topic each — :data:`REPUBLISH_TOPICS`:
the row dicts of :meth:`Table.row_dicts`, keyed by ``node_name``):

* ``nodes`` — latest state per node (``Replacing`` keep last by ``last_seen``): the
  system IP (address on ``system0``) and management IP (``mgmt0``) when known, IPv4
  preferred over IPv6, first and last seen. One row per node per message.
* ``interfaces`` — per (node, interface) and message: admin/oper status and counters,
  merged (each message's values over the last known ones).
* ``addresses`` — (node, interface, subinterface index, prefix, family, origin, status),
  one row per address entry; the prefix is normalized (``2001:DB8::1/64`` ->
  ``2001:db8::1/64``).
* ``interface_counters`` — the counter time series with rates derived per interface
  between consecutive samples: bits/s from octets, packets/s, errors/s. Each counter keeps
  its own baseline. A counter that goes down (device restart, cleared counters) or whose
  rate would exceed a physical bound starts a new baseline: that sample has no rate and
  ``counter_reset`` is true — never a negative or huge rate. A sample not newer than the
  baseline gives no rate and leaves the baseline alone.

A message maps whole or becomes one :class:`DeadRecord` (``kind``: ``decode`` for bad
JSON or shape, ``invalid`` for a bad entry of a known path, ``invalid_timestamp``, or
``empty`` for a message without updates).

State (counter baselines, last status, known node IPs and first-seen times) advances in
two steps. :meth:`NetworkMapper.map` sees the committed state plus every result mapped
since and not rolled back, so a chunk still in flight is the baseline of the next one.
:meth:`~NetworkMapper.commit` marks a result durable (call it after its rows are written);
:meth:`~NetworkMapper.rollback` forgets results that were not (a partition revoked, a
crash): replaying the same messages from the committed state then gives identical rows,
which is what lets a store drop the replayed batch by its id. After a restart,
:meth:`~NetworkMapper.restore` reloads the state from the store (:data:`RESTORE_SQL` on
ClickHouse and chDB, ``DISTINCT ON`` queries on PostgreSQL: :func:`restore_from`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

import msgspec
from pydantic import Field

from orbitstream.core import registry
from orbitstream.core.batch import Row
from orbitstream.core.protocols import Sink, Store
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSpec
from orbitstream.core.tables import ColType, Column, Replacing, Table
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.mapping import DeadRecord, MapResult, Message, Position
from orbitstream.settings import Settings, env
from orbitstream.sources.kafka_source import KafkaHandler, KafkaPipelineSettings

__all__ = [
    "ADDRESSES_TABLE",
    "COUNTERS",
    "INTERFACES_TABLE",
    "INTERFACE_COUNTERS_TABLE",
    "IPV4_PATH",
    "IPV6_PATH",
    "KNOWN_PATHS",
    "MGMT_INTERFACE",
    "NODES_TABLE",
    "RAW_TOPIC_DEFAULT",
    "REPUBLISH_TOPICS",
    "RESTORE_SQL",
    "SPEC",
    "STATISTICS_PATH",
    "STATUS_PATH",
    "SYSTEM_INTERFACE",
    "NetworkMapResult",
    "NetworkMapper",
    "NetworkSettings",
    "tables",
]

logger = logging.getLogger(__name__)

PIPELINE = "network"
RAW_TOPIC_ENV = "KAFKA_RAW_TOPIC"
RAW_TOPIC_DEFAULT = "network-data"
# table -> (environment variable, default topic) of the republished records
REPUBLISH_TOPICS: dict[str, tuple[str, str]] = {
    "nodes": ("KAFKA_NODE_TOPIC", "node-data"),
    "interfaces": ("KAFKA_INTERFACE_TOPIC", "interface-data"),
    "addresses": ("KAFKA_ADDRESS_TOPIC", "address-data"),
}

STATUS_PATH = ".node.srl.interface.status"
STATISTICS_PATH = ".node.srl.interface.statistics"
IPV4_PATH = ".node.srl.interface.subinterface.ipv4.address"
IPV6_PATH = ".node.srl.interface.subinterface.ipv6.address"
KNOWN_PATHS = (STATUS_PATH, STATISTICS_PATH, IPV4_PATH, IPV6_PATH)
SYSTEM_INTERFACE = "system0"
MGMT_INTERFACE = "mgmt0"

COUNTERS = ("in_packets", "out_packets", "in_octets", "out_octets", "in_errors", "out_errors")
RATES = (
    "in_packets_per_sec",
    "out_packets_per_sec",
    "in_bits_per_sec",
    "out_bits_per_sec",
    "in_errors_per_sec",
    "out_errors_per_sec",
)
_SCALE = (1.0, 1.0, 8.0, 8.0, 1.0, 1.0)  # octets -> bits
_BITS = (False, False, True, True, False, False)
_U64_MAX = 2**64 - 1

# -- tables ---------------------------------------------------------------------------
_TIME_CODEC = "DoubleDelta, ZSTD(1)"


def _counter_columns() -> tuple[Column, ...]:
    return tuple(Column(name, ColType.UINT64, nullable=True) for name in COUNTERS)


NODES_TABLE = Table(
    name="nodes",
    columns=(
        Column("node_name", ColType.STRING),
        Column("system_ip", ColType.STRING, nullable=True),
        Column("mgmt_ip", ColType.STRING, nullable=True),
        Column("first_seen", ColType.TIMESTAMP),
        Column("last_seen", ColType.TIMESTAMP),
    ),
    time_column="last_seen",
    order_by=("node_name",),
    entity_column="node_name",
    replacing=Replacing("last_seen", keep="last"),
    comment="Latest state per network node (read with FINAL).",
)

INTERFACES_TABLE = Table(
    name="interfaces",
    columns=(
        Column("time", ColType.TIMESTAMP, codec=_TIME_CODEC),
        Column("node_name", ColType.STRING, low_cardinality=True),
        Column("interface_name", ColType.STRING, low_cardinality=True),
        Column("admin_status", ColType.STRING, low_cardinality=True, nullable=True),
        Column("oper_status", ColType.STRING, low_cardinality=True, nullable=True),
        *_counter_columns(),
    ),
    time_column="time",
    order_by=("node_name", "interface_name", "time"),
    entity_column="node_name",
    comment="Interface status and counters per message, merged per (node, interface).",
)

ADDRESSES_TABLE = Table(
    name="addresses",
    columns=(
        Column("time", ColType.TIMESTAMP, codec=_TIME_CODEC),
        Column("node_name", ColType.STRING, low_cardinality=True),
        Column("interface_name", ColType.STRING, low_cardinality=True),
        Column("subinterface_index", ColType.UINT64),
        Column("prefix", ColType.STRING),
        Column("family", ColType.STRING, low_cardinality=True),
        Column("origin", ColType.STRING, low_cardinality=True, nullable=True),
        Column("status", ColType.STRING, low_cardinality=True, nullable=True),
    ),
    time_column="time",
    order_by=("node_name", "interface_name", "subinterface_index", "prefix", "time"),
    entity_column="node_name",
    comment="Interface addresses (IPv4 and IPv6) as reported.",
)

INTERFACE_COUNTERS_TABLE = Table(
    name="interface_counters",
    columns=(
        Column("time", ColType.TIMESTAMP, codec=_TIME_CODEC),
        Column("node_name", ColType.STRING, low_cardinality=True),
        Column("interface_name", ColType.STRING, low_cardinality=True),
        *_counter_columns(),
        *(Column(name, ColType.FLOAT64, nullable=True) for name in RATES),
        Column("counter_reset", ColType.BOOL),
    ),
    time_column="time",
    order_by=("node_name", "interface_name", "time"),
    entity_column="node_name",
    comment="Interface counter samples with rates derived between consecutive samples.",
)


def tables(retention_days: int | None = None) -> tuple[Table, Table, Table, Table]:
    """The pipeline's tables with the given retention (``None``: keep forever)."""
    return (
        NODES_TABLE.with_ttl(retention_days),
        INTERFACES_TABLE.with_ttl(retention_days),
        ADDRESSES_TABLE.with_ttl(retention_days),
        INTERFACE_COUNTERS_TABLE.with_ttl(retention_days),
    )


def _restore_sql(table: Table, latest_by: tuple[str, ...] | None, name: str | None = None) -> str:
    cols = ", ".join(
        f"toUnixTimestamp64Nano(`{c.name}`)" if c.type is ColType.TIMESTAMP else f"`{c.name}`"
        for c in table.columns
    )
    name = name or f"`{table.name}`"
    if latest_by is None:
        return f"SELECT {cols} FROM {name} FINAL"
    keys = ", ".join(f"`{k}`" for k in latest_by)
    return f"SELECT {cols} FROM {name} ORDER BY `{table.time_column}` DESC LIMIT 1 BY {keys}"


def _restore_sql_postgres(table: Table, latest_by: tuple[str, ...] | None, name: str) -> str:
    """:func:`_restore_sql` for PostgreSQL, where every version of a row is kept: the
    newest row per key (``nodes``: per node, by ``last_seen``); timestamps as epoch ns
    (``timestamptz`` keeps microseconds)."""
    cols = ", ".join(
        f'(EXTRACT(EPOCH FROM "{c.name}") * 1000000)::bigint * 1000'
        if c.type is ColType.TIMESTAMP
        else f'"{c.name}"'
        for c in table.columns
    )
    keys = ", ".join(f'"{k}"' for k in (latest_by or table.order_by))
    return (
        f"SELECT DISTINCT ON ({keys}) {cols} FROM {name} "
        f'ORDER BY {keys}, "{table.time_column}" DESC'
    )


# ClickHouse SQL reading back the state a restarted mapper needs (rows in column order,
# timestamps as epoch ns): pass the results to NetworkMapper.restore().
RESTORE_SQL: dict[str, str] = {
    "nodes": _restore_sql(NODES_TABLE, None),
    "interfaces": _restore_sql(INTERFACES_TABLE, ("node_name", "interface_name")),
    "interface_counters": _restore_sql(INTERFACE_COUNTERS_TABLE, ("node_name", "interface_name")),
}

# -- wire structs ------------------------------------------------------------------------
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Label = Annotated[str, msgspec.Meta(max_length=64)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # the upper bound is checked by _u64
U64Text = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}$")]
Counter = U64 | U64Text | None
Index = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
IndexText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,10}$")]
# 2000-01-01: a smaller integer is not epoch nanoseconds (seconds or milliseconds would
# otherwise land in January 1970); the satellites pipeline draws the same line
_MIN_NS = 946_684_800_000_000_000
EpochNs = Annotated[int, msgspec.Meta(ge=_MIN_NS, le=2**63 - 1)]
Rfc3339 = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class _Update(msgspec.Struct):
    path: str
    entries: msgspec.Raw
    timestamp: EpochNs | Rfc3339 | None = None


class _InterfaceKeys(msgspec.Struct):
    node_name: Name
    interface_name: Name


class _StatusFields(msgspec.Struct):
    admin_status: Label | None = None
    oper_status: Label | None = None


class _StatusEntry(msgspec.Struct):
    keys: _InterfaceKeys
    fields: _StatusFields


class _StatsFields(msgspec.Struct):
    in_packets: Counter = None
    out_packets: Counter = None
    in_octets: Counter = None
    out_octets: Counter = None
    in_errors: Counter = None
    out_errors: Counter = None


class _StatsEntry(msgspec.Struct):
    keys: _InterfaceKeys
    fields: _StatsFields


class _AddressKeys(msgspec.Struct):
    node_name: Name
    interface_name: Name
    subinterface_index: Index | IndexText
    prefix: Name = msgspec.field(name="address_ip-prefix")


class _AddressFields(msgspec.Struct):
    origin: Label | None = None
    status: Label | None = None


class _AddressEntry(msgspec.Struct):
    keys: _AddressKeys
    fields: _AddressFields = msgspec.field(default_factory=_AddressFields)


_MESSAGE = msgspec.json.Decoder(list[_Update] | _Update)
_STATUS = msgspec.json.Decoder(list[_StatusEntry])
_STATS = msgspec.json.Decoder(list[_StatsEntry])
_ADDRESS = msgspec.json.Decoder(list[_AddressEntry])
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_AT = re.compile(r" - at `\$(.*)`$")


# -- state -------------------------------------------------------------------------------
class NodeState(NamedTuple):
    first_seen: int
    last_seen: int
    system_ip: str | None
    mgmt_ip: str | None


Baseline = tuple[int, int] | None  # (time ns, value) of one counter


class InterfaceState(NamedTuple):
    time: int
    admin_status: str | None
    oper_status: str | None
    baselines: tuple[Baseline, ...]  # one per COUNTERS entry


_NO_BASELINES: tuple[Baseline, ...] = (None,) * len(COUNTERS)
IfKey = tuple[str, str]


@dataclass(slots=True)
class NetworkMapResult(MapResult):
    """A :class:`MapResult` plus the state it moves the mapper to (applied on commit)."""

    seq: int = 0
    partitions: set[tuple[str, int]] = field(default_factory=set)
    node_states: dict[str, NodeState] = field(default_factory=dict)
    interface_states: dict[IfKey, InterfaceState] = field(default_factory=dict)


class _Pending(NamedTuple):
    partitions: set[tuple[str, int]]
    node_states: dict[str, NodeState]
    interface_states: dict[IfKey, InterfaceState]


class _Invalid(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _validation_reason(exc: msgspec.DecodeError, where: str) -> str:
    text = str(exc)
    m = _AT.search(text)
    if m is None:
        return f"{where}: {text}"
    return f"{where}{m.group(1)}: {text[: m.start()]}"


def _counters(f: _StatsFields, where: str) -> tuple[int | None, ...]:
    """The six counters as ints (decimal strings converted), at least one present."""
    values: tuple[int | str | None, ...] = (
        f.in_packets,
        f.out_packets,
        f.in_octets,
        f.out_octets,
        f.in_errors,
        f.out_errors,
    )
    out: list[int | None] = []
    present = False
    for name, v in zip(COUNTERS, values, strict=True):
        if v is None:
            out.append(None)
            continue
        present = True
        n = v if type(v) is int else int(v)
        if n > _U64_MAX:
            raise _Invalid("invalid", f"{where}.{name}: {v} does not fit in 64 bits")
        out.append(n)
    if not present:
        raise _Invalid("invalid", f"{where}: no counters")
    return tuple(out)


_PREFIXES: dict[str, tuple[str, str, bool] | None] = {}
_PREFIX_CACHE_SIZE = 65_536


def _parse_prefix(text: str) -> tuple[str, str, bool] | None:
    """``(normalized prefix, address, is IPv4)``, or ``None`` when not an address/length.

    Cached: a fabric reports the same few thousand prefixes over and over.
    """
    try:
        return _PREFIXES[text]
    except KeyError:
        pass
    parsed: tuple[str, str, bool] | None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        parsed = None
    else:
        parsed = (str(iface), str(iface.ip), iface.version == 4) if "/" in text else None
    if len(_PREFIXES) >= _PREFIX_CACHE_SIZE:
        _PREFIXES.clear()
    _PREFIXES[text] = parsed
    return parsed


def _prefer(current: str | None, new: str, new_is_v4: bool) -> str:
    """IPv4 wins over IPv6; a newer address of the same family replaces the old one."""
    if new_is_v4 or current is None or ":" in current:
        return new
    return current


# -- the mapper --------------------------------------------------------------------------
class NetworkMapper:
    """Network state messages -> ``nodes``, ``interfaces``, ``addresses``,
    ``interface_counters`` rows, with per-interface state for merging and rates.

    :param max_bits_per_sec: a derived bit rate above this is a counter glitch, treated
        as a reset (default 10 Tb/s, beyond any single port).
    :param max_packets_per_sec: the same bound for packet and error rates.
    """

    tables: tuple[Table, ...] = (
        NODES_TABLE,
        INTERFACES_TABLE,
        ADDRESSES_TABLE,
        INTERFACE_COUNTERS_TABLE,
    )

    def __init__(
        self,
        *,
        max_bits_per_sec: float = 1e13,
        max_packets_per_sec: float = 2e10,
        window: TimeWindow | None = None,
    ) -> None:
        self.window = window  # samples older than its lower bound are dead (the TTL's)
        self._now = 0
        self._oldest: tuple[int, TimeWindow] | None = None  # (lower bound, window) of a map
        self._limits = tuple(max_bits_per_sec if b else max_packets_per_sec for b in _BITS)
        self._seq = 0
        self._committed_nodes: dict[str, tuple[int, NodeState]] = {}
        self._committed_ifs: dict[IfKey, tuple[int, InterfaceState]] = {}
        self._tip_nodes: dict[str, NodeState] = {}
        self._tip_ifs: dict[IfKey, InterfaceState] = {}
        # seq -> the state part of results not yet committed nor rolled back (not their
        # rows: those belong to the sinks)
        self._pending: dict[int, _Pending] = {}

    # -- state lifecycle -------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many mapped results are neither committed nor rolled back."""
        return len(self._pending)

    def commit(self, result: MapResult) -> None:
        """Make ``result``'s state the committed state (its rows are durable).

        Commit results of one partition in the order they were mapped. A result that was
        rolled back (or committed before) is ignored.
        """
        if not isinstance(result, NetworkMapResult) or self._pending.pop(result.seq, None) is None:
            return
        seq = result.seq
        nodes = self._committed_nodes
        for name, node in result.node_states.items():
            have = nodes.get(name)
            if have is None or have[0] < seq:
                nodes[name] = (seq, node)
        ifs = self._committed_ifs
        for key, state in result.interface_states.items():
            had = ifs.get(key)
            if had is None or had[0] < seq:
                ifs[key] = (seq, state)

    def discard(self, result: MapResult) -> None:
        """Forget one result that was not taken downstream (the last one mapped for its
        partition: the same messages are mapped again later)."""
        if isinstance(result, NetworkMapResult) and result.seq in self._pending:
            del self._pending[result.seq]
            self._rebuild_tip()

    def rollback(self, topic: str | None = None, partition: int | None = None) -> int:
        """Forget results not committed (all, or those with messages of one partition).

        :returns: how many results were dropped.
        """
        drop = [
            seq
            for seq, res in self._pending.items()
            if topic is None
            or any(t == topic and (partition is None or p == partition) for t, p in res.partitions)
        ]
        for seq in drop:
            del self._pending[seq]
        self._rebuild_tip()
        return len(drop)

    def _rebuild_tip(self) -> None:
        self._tip_nodes = {k: v for k, (_, v) in self._committed_nodes.items()}
        self._tip_ifs = {k: v for k, (_, v) in self._committed_ifs.items()}
        for res in self._pending.values():  # insertion order = mapping order
            self._tip_nodes.update(res.node_states)
            self._tip_ifs.update(res.interface_states)

    def restore(
        self,
        nodes: Iterable[Sequence[Any]] = (),
        interfaces: Iterable[Sequence[Any]] = (),
        counters: Iterable[Sequence[Any]] = (),
    ) -> None:
        """Load committed state from the store (the rows of :data:`RESTORE_SQL`).

        :param nodes: ``nodes`` rows (latest per node).
        :param interfaces: latest ``interfaces`` row per (node, interface): statuses.
        :param counters: latest ``interface_counters`` row per (node, interface): baselines.
        Timestamps may be ints or decimal strings (ClickHouse JSON quotes 64-bit ints).
        """
        for r in nodes:
            name = str(r[0])
            self._committed_nodes[name] = (
                0,
                NodeState(int(r[3]), int(r[4]), _opt_str(r[1]), _opt_str(r[2])),
            )
        statuses: dict[IfKey, tuple[int, str | None, str | None]] = {}
        for r in interfaces:
            statuses[(str(r[1]), str(r[2]))] = (int(r[0]), _opt_str(r[3]), _opt_str(r[4]))
        baselines: dict[IfKey, tuple[int, tuple[Baseline, ...]]] = {}
        for r in counters:
            t = int(r[0])
            values = r[3 : 3 + len(COUNTERS)]
            baselines[(str(r[1]), str(r[2]))] = (
                t,
                tuple(None if v is None else (t, int(v)) for v in values),
            )
        for key in statuses.keys() | baselines.keys():
            st_time, admin, oper = statuses.get(key, (0, None, None))
            b_time, base = baselines.get(key, (0, _NO_BASELINES))
            self._committed_ifs[key] = (
                0,
                InterfaceState(max(st_time, b_time), admin, oper, base),
            )
        self._rebuild_tip()

    # -- mapping -----------------------------------------------------------------------
    def map(self, value: bytes | None, position: Position) -> NetworkMapResult:
        """Map one message against the current state (committed + pending).

        :param value: the message bytes (``None``, a tombstone, is a dead record).
        :param position: where it came from; its ``timestamp_ns`` is the sample time of
            updates without their own timestamp.
        """
        result = self._new_result()
        self._start_clock()
        self._map_one(value, position, result)
        return result

    def map_chunk(self, messages: Iterable[Message]) -> NetworkMapResult:
        """Map consecutive messages into one result (each sees the ones before it)."""
        result = self._new_result()
        self._start_clock()
        for msg in messages:
            self._map_one(msg.value, msg, result)
        return result

    def _start_clock(self) -> None:
        """Read the clock once per map: ``_now`` and the window's lower bound."""
        self._now = now = time.time_ns()
        window = self.window
        self._oldest = (window.bounds(now)[0], window) if window is not None else None

    def _new_result(self) -> NetworkMapResult:
        self._seq += 1
        result = NetworkMapResult(seq=self._seq)
        self._pending[result.seq] = _Pending(
            result.partitions, result.node_states, result.interface_states
        )
        return result

    def _map_one(self, value: bytes | None, position: Position, result: NetworkMapResult) -> None:
        result.messages += 1
        result.partitions.add((position.topic, position.partition))
        raw = b"" if value is None else bytes(value)
        try:
            rows, nodes, ifs, unknown = self._process(raw, position)
        except _Invalid as exc:
            result.dead.append(DeadRecord(position, raw, exc.kind, exc.reason))
            return
        for path in unknown:
            result.count_unknown(path)
        empty = True
        for name, table_rows in rows.items():
            if table_rows:
                empty = False
                result.rows.setdefault(name, []).extend(table_rows)
        if empty:
            result.ignored += 1
        result.node_states.update(nodes)
        result.interface_states.update(ifs)
        self._tip_nodes.update(nodes)
        self._tip_ifs.update(ifs)

    def _process(
        self, raw: bytes, position: Position
    ) -> tuple[dict[str, list[Row]], dict[str, NodeState], dict[IfKey, InterfaceState], list[str]]:
        if not raw:
            raise _Invalid("empty", "empty message")
        try:
            decoded = _MESSAGE.decode(raw)
        except msgspec.DecodeError as exc:
            if isinstance(exc, msgspec.ValidationError):
                reason = _validation_reason(exc, "$")
                if reason.split(":", 1)[0].endswith(".timestamp"):
                    raise _Invalid(
                        "invalid_timestamp",
                        f"{reason} (epoch nanoseconds from 2000 on, or RFC 3339 with a zone)",
                    ) from None
                raise _Invalid("decode", reason) from None
            raise _Invalid("decode", f"not JSON: {exc}") from None
        updates = decoded if isinstance(decoded, list) else [decoded]
        if not updates:
            raise _Invalid("empty", "message has no path updates")

        nodes: dict[str, NodeState] = {}
        ifs: dict[IfKey, InterfaceState] = {}
        touched_ifs: dict[IfKey, int] = {}
        counters: list[Row] = []
        addresses: list[Row] = []
        unknown: list[str] = []

        tip_nodes = self._tip_nodes
        tip_ifs = self._tip_ifs

        def node_state(name: str, t: int) -> NodeState:
            cur = nodes.get(name)
            if cur is not None and cur.first_seen <= t <= cur.last_seen:
                return cur
            if cur is None:
                cur = tip_nodes.get(name)
            if cur is None:
                cur = NodeState(t, t, None, None)
            elif t < cur.first_seen or t > cur.last_seen:
                cur = NodeState(
                    min(cur.first_seen, t), max(cur.last_seen, t), cur.system_ip, cur.mgmt_ip
                )
            nodes[name] = cur
            return cur

        def if_state(key: IfKey, t: int) -> InterfaceState:
            cur = ifs.get(key) or tip_ifs.get(key)
            if cur is None:
                cur = InterfaceState(t, None, None, _NO_BASELINES)
            touched_ifs[key] = max(touched_ifs.get(key, t), t)
            return cur

        oldest = self._oldest
        for i, update in enumerate(updates):
            where = f"$[{i}]"
            t = self._time(update, position, where)
            if oldest is not None and t < oldest[0]:
                why = oldest[1].problem(t, self._now) or "timestamp is too old"
                raise _Invalid("invalid_timestamp", f"{where}.timestamp: {why}")
            path = update.path
            if path == STATUS_PATH:
                for j, st in enumerate(self._entries(_STATUS, update, f"{where}.entries")):
                    key = (st.keys.node_name, st.keys.interface_name)
                    node_state(key[0], t)
                    cur = if_state(key, t)
                    f = st.fields
                    if f.admin_status is None and f.oper_status is None:
                        raise _Invalid(
                            "invalid",
                            f"{where}.entries[{j}].fields: no admin_status or oper_status",
                        )
                    admin, oper = f.admin_status, f.oper_status
                    ifs[key] = InterfaceState(
                        cur.time if cur.time > t else t,
                        cur.admin_status if admin is None else admin,
                        cur.oper_status if oper is None else oper,
                        cur.baselines,
                    )
            elif path == STATISTICS_PATH:
                for j, se in enumerate(self._entries(_STATS, update, f"{where}.entries")):
                    key = (se.keys.node_name, se.keys.interface_name)
                    node_state(key[0], t)
                    cur = if_state(key, t)
                    sf = se.fields
                    values = _counters(sf, f"{where}.entries[{j}].fields")
                    baselines, rates, reset = self._rates(cur.baselines, values, t)
                    ifs[key] = InterfaceState(
                        cur.time if cur.time > t else t,
                        cur.admin_status,
                        cur.oper_status,
                        baselines,
                    )
                    counters.append((t, key[0], key[1], *values, *rates, reset))
            elif path in (IPV4_PATH, IPV6_PATH):
                v4 = path == IPV4_PATH
                for j, ae in enumerate(self._entries(_ADDRESS, update, f"{where}.entries")):
                    k = ae.keys
                    parsed = _parse_prefix(k.prefix)
                    if parsed is None or parsed[2] is not v4:
                        raise _Invalid(
                            "invalid",
                            f"{where}.entries[{j}].keys.address_ip-prefix: {k.prefix!r} is not an "
                            f"IPv{4 if v4 else 6} prefix",
                        )
                    prefix, ip, _ = parsed
                    node = node_state(k.node_name, t)
                    if k.interface_name == SYSTEM_INTERFACE:
                        nodes[k.node_name] = node._replace(
                            system_ip=_prefer(node.system_ip, ip, v4)
                        )
                    elif k.interface_name == MGMT_INTERFACE:
                        nodes[k.node_name] = node._replace(mgmt_ip=_prefer(node.mgmt_ip, ip, v4))
                    addresses.append(
                        (
                            t,
                            k.node_name,
                            k.interface_name,
                            int(k.subinterface_index),
                            prefix,
                            "IPv4" if v4 else "IPv6",
                            ae.fields.origin,
                            ae.fields.status,
                        )
                    )
            else:
                unknown.append(path)

        interfaces: list[Row] = []
        for key, t in touched_ifs.items():
            st = ifs[key]
            interfaces.append(
                (
                    t,
                    key[0],
                    key[1],
                    st.admin_status,
                    st.oper_status,
                    *(None if b is None else b[1] for b in st.baselines),
                )
            )
        node_rows: list[Row] = [
            (name, n.system_ip, n.mgmt_ip, n.first_seen, n.last_seen) for name, n in nodes.items()
        ]
        rows = {
            "nodes": node_rows,
            "interfaces": interfaces,
            "addresses": addresses,
            "interface_counters": counters,
        }
        return rows, nodes, ifs, unknown

    @staticmethod
    def _time(update: _Update, position: Position, where: str) -> int:
        ts = update.timestamp
        if ts is None:
            t = position.timestamp_ns
            if t is None or t <= 0:
                raise _Invalid(
                    "invalid_timestamp", f"{where}: no timestamp and no message timestamp"
                )
            return int(t)
        if isinstance(ts, int):
            return ts
        if not _EPOCH <= ts < dt.datetime(2262, 1, 1, tzinfo=dt.UTC):
            raise _Invalid("invalid_timestamp", f"{where}.timestamp: outside 1970..2261")
        return (ts - _EPOCH) // _US * 1000

    @staticmethod
    def _entries(
        decoder: msgspec.json.Decoder[list[Any]], update: _Update, where: str
    ) -> list[Any]:
        try:
            return decoder.decode(update.entries)
        except msgspec.DecodeError as exc:
            raise _Invalid("invalid", _validation_reason(exc, where)) from None

    def _rates(
        self, baselines: tuple[Baseline, ...], values: tuple[int | None, ...], t: int
    ) -> tuple[tuple[Baseline, ...], list[float | None], bool]:
        new: list[Baseline] = []
        rates: list[float | None] = []
        reset = False
        for prev, v, scale, limit in zip(baselines, values, _SCALE, self._limits, strict=True):
            if v is None:
                new.append(prev)
                rates.append(None)
                continue
            if prev is None:
                new.append((t, v))
                rates.append(None)
                continue
            pt, pv = prev
            if t <= pt:  # not newer than the baseline: no rate, keep the baseline
                new.append(prev)
                rates.append(None)
                continue
            new.append((t, v))
            if v < pv:
                reset = True
                rates.append(None)
                continue
            rate = (v - pv) * scale * 1e9 / (t - pt)
            if rate > limit:
                reset = True
                rates.append(None)
            else:
                rates.append(rate)
        return tuple(new), rates, reset


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


# -- the pipeline ------------------------------------------------------------------------
_LATEST_BY: dict[str, tuple[str, ...] | None] = {
    "nodes": None,
    "interfaces": ("node_name", "interface_name"),
    "interface_counters": ("node_name", "interface_name"),
}


class NetworkSettings(KafkaPipelineSettings):
    """The network pipeline: the network processor's variables (``KAFKA_*_TOPIC``)."""

    kafka_topic: str = Field(RAW_TOPIC_DEFAULT, min_length=1, validation_alias=env(RAW_TOPIC_ENV))
    consumer_group: str = Field(
        "network-consumer-group", min_length=1, validation_alias=env("KAFKA_CONSUMER_GROUP")
    )
    dead_letter_topic: str = "network-dead-letters"
    node_topic: str = Field("node-data", min_length=1, validation_alias=env("KAFKA_NODE_TOPIC"))
    interface_topic: str = Field(
        "interface-data", min_length=1, validation_alias=env("KAFKA_INTERFACE_TOPIC")
    )
    address_topic: str = Field(
        "address-data", min_length=1, validation_alias=env("KAFKA_ADDRESS_TOPIC")
    )
    republish: bool = Field(True, description="Republish nodes, interfaces and addresses.")


async def restore_from(
    store: Store, tables_by_name: Mapping[str, Table], mapper: NetworkMapper
) -> None:
    """Reload ``mapper``'s committed state from the store (ClickHouse or PostgreSQL)."""
    postgres = store.query_dialect == "postgres"
    if not postgres and store.query_dialect != "clickhouse":
        logger.warning(
            "Network state not restored: the store's query dialect is not known.",
            extra={"pipeline": PIPELINE, "component": store.name},
        )
        return
    found: dict[str, list[Sequence[Any]]] = {}
    for name, latest_by in _LATEST_BY.items():
        table = tables_by_name[name]
        if postgres:
            qualified = ".".join(f'"{p}"' for p in (table.namespace, table.name) if p)
            sql = _restore_sql_postgres(table, latest_by, qualified)
        else:
            qualified = ".".join(f"`{p}`" for p in (table.namespace, table.name) if p)
            sql = _restore_sql(table, latest_by, qualified)
        result = await store.query(sql)
        found[name] = list(result.rows)
    mapper.restore(found["nodes"], found["interfaces"], found["interface_counters"])
    logger.info(
        "Network state restored.",
        extra={"pipeline": PIPELINE, "records": sum(len(r) for r in found.values())},
    )


def _tables(own: NetworkSettings, settings: Settings) -> tuple[Table, ...]:
    return tables(settings.retention_days)


def _build(b: PipelineBuild) -> PipelineParts:
    import os

    from orbitstream.detect.notify import (
        SnsNotifier,
        SnsSettings,
        SourcePosition,
        error_notifier,
    )
    from orbitstream.sinks.parquet import ParquetSettings, ParquetSink
    from orbitstream.sinks.select import SelectedTables

    own = b.own
    assert isinstance(own, NetworkSettings)
    mapper = NetworkMapper(window=b.window)
    sinks: list[Sink] = []
    info: dict[str, Any] = {"topic": own.kafka_topic, "consumer_group": own.consumer_group}
    own_tables = [t.name for t in NetworkMapper.tables]
    if own.republish and b.source == "kafka":
        from orbitstream.sinks.kafka import KafkaSink, KafkaSinkSettings

        topics = {
            "nodes": own.node_topic,
            "interfaces": own.interface_topic,
            "addresses": own.address_topic,
        }
        sink = KafkaSink(
            KafkaSinkSettings(
                bootstrap_servers=b.settings.kafka.servers(),
                topics=topics,
                dead_letter_topic=own.dead_letter_topic,
                create_topics=True,
                topic_partitions=b.settings.kafka.topic_partitions,
                client_id="orbitstream-network",
            )
        )
        sinks.append(SelectedTables(sink, topics))
        info["republish"] = topics
    parquet = ParquetSettings.from_env(os.environ)
    if parquet is not None:
        sinks.append(SelectedTables(ParquetSink(parquet), own_tables))
        info["archive"] = parquet.url
    sns = SnsSettings.from_env(os.environ)
    notifier = error_notifier(PIPELINE, sns)
    if isinstance(notifier, SnsNotifier):
        try:
            notifier.check()
        except Exception:
            notifier.close()
            raise
        info["alerts"] = notifier.settings.topic_arn

    def on_dead(rec: DeadRecord) -> None:
        pos = rec.position
        notifier.report(rec.kind, SourcePosition(pos.topic, pos.partition, pos.offset), rec.reason)

    async def restore(store: Store, tables_by_name: Mapping[str, Table]) -> None:
        await restore_from(store, tables_by_name, mapper)

    handler = KafkaHandler(mapper, restore=restore, on_dead=on_dead, on_stop=notifier.close)
    source = registry.source_type(b.source).create(b, handler)
    return PipelineParts(source, sinks=sinks, info=info)


SPEC = PipelineSpec(
    name=PIPELINE,
    description="SR Linux-style network state from Kafka (KAFKA_RAW_TOPIC): nodes, "
    "interfaces, addresses, counter rates; republished to Kafka, archived to S3, "
    "errors alerted to SNS.",
    settings=NetworkSettings,
    tables=_tables,
    build=_build,
    sources=("kafka",),
    namespace="network",
)
