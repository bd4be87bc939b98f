"""The satellites pipeline: seed telemetry points -> ``telemetry`` rows + ``alerts`` rows.

Wire format (the seed's): ``{"satellite_id": "SAT-01", "battery_charge_percent": 85.5,
"storage_usage_mb": 45000.0, "signal_strength_dbm": -55.0, "timestamp": <optional>}``
where ``timestamp`` is RFC 3339 (with offset) or integer epoch nanoseconds.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from pydantic import Field

from orbitstream.core import registry
from orbitstream.core.batch import Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.protocols import Store
from orbitstream.core.records import (
    FieldError,
    clean_message,
    decode_raw,
    json_type,
    number_problem,
)
from orbitstream.core.records import body_errors as _body_errors
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSpec
from orbitstream.core.tables import ColType, Column, Rollup, Table
from orbitstream.core.times import TimeWindow
from orbitstream.detect.alerts import ALERTS_TABLE, AlertTracker
from orbitstream.detect.thresholds import ThresholdRule, ThresholdRules
from orbitstream.pipelines.mapping import DeadRecord, MapResult, Message
from orbitstream.settings import Settings, env
from orbitstream.sources.kafka_source import KafkaHandler, KafkaPipelineSettings

if TYPE_CHECKING:  # the columnar path imports this module
    from orbitstream.pipelines.satellites_columnar import ColumnMapped

__all__ = [
    "FIELD_TYPES",
    "SPEC",
    "TELEMETRY_TABLE",
    "FieldError",
    "Mapped",
    "Point",
    "SatelliteIngest",
    "SatelliteMapper",
    "SatellitesSettings",
    "body_errors",
    "decode_raw",
    "field_errors",
    "tables",
    "threshold_rules",
]

PIPELINE = "satellites"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_NS = 946_684_800_000_000_000  # 2000-01-01: smaller integers are not epoch nanoseconds
_MAX_NS = 2**63 - 1

SatelliteId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
]
Battery = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
# Upper bound: a million petabytes. Without one, two points near the largest float would
# overflow the rollup sums in PostgreSQL (float8 addition raises on overflow), so a value
# the handler accepted could not be stored.
MAX_STORAGE_MB = 1e15
Storage = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_STORAGE_MB)]
Signal = Annotated[float, msgspec.Meta(ge=-200.0, le=0.0)]
EpochNs = Annotated[int, msgspec.Meta(ge=_MIN_NS, le=_MAX_NS)]
Rfc3339 = Annotated[dt.datetime, msgspec.Meta(tz=True)]
Timestamp = Rfc3339 | EpochNs | None


class Point(msgspec.Struct, gc=False):
    """One telemetry point as posted by a satellite (validated on decode)."""

    satellite_id: SatelliteId
    battery_charge_percent: Battery
    storage_usage_mb: Storage
    signal_strength_dbm: Signal
    timestamp: Timestamp = None


FIELD_TYPES: dict[str, tuple[Any, bool]] = {
    "satellite_id": (SatelliteId, True),
    "battery_charge_percent": (Battery, True),
    "storage_usage_mb": (Storage, True),
    "signal_strength_dbm": (Signal, True),
    "timestamp": (Timestamp, False),
}
_NUMBER_FIELDS: tuple[tuple[str, float | None, float | None], ...] = (
    ("battery_charge_percent", 0.0, 100.0),
    ("storage_usage_mb", 0.0, MAX_STORAGE_MB),
    ("signal_strength_dbm", -200.0, 0.0),
)


_TS_MESSAGE = "use an RFC 3339 time with an offset or integer epoch nanoseconds (≥ 2000-01-01)"


def _timestamp_error(value: object, window: TimeWindow | None, now_ns: int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"Expected `str | int | null`, got `{json_type(value)}`: {_TS_MESSAGE}"
    try:
        ts = msgspec.convert(value, Timestamp)
    except msgspec.ValidationError as exc:
        return f"{clean_message(str(exc))}: {_TS_MESSAGE}"
    if window is None or ts is None:
        return None
    now = now_ns if now_ns is not None else time.time_ns()
    return window.problem(ts if isinstance(ts, int) else to_ns(ts, now), now)


def field_errors(
    raw: object, window: TimeWindow | None = None, now_ns: int | None = None
) -> list[FieldError]:
    """Every problem with one decoded JSON value (see :func:`decode_raw`), one per field;
    with a ``window``, a timestamp outside it too."""
    if not isinstance(raw, dict):
        return [FieldError("$", f"expected a JSON object, got {json_type(raw)}")]
    errors: list[FieldError] = []
    sid = raw.get("satellite_id")
    if "satellite_id" not in raw:
        errors.append(FieldError("satellite_id", "missing required field"))
    else:
        try:
            msgspec.convert(sid, SatelliteId)
        except msgspec.ValidationError as exc:
            errors.append(FieldError("satellite_id", clean_message(str(exc))))
    for name, lo, hi in _NUMBER_FIELDS:
        if name not in raw:
            errors.append(FieldError(name, "missing required field"))
            continue
        problem = number_problem(raw[name], lo, hi)
        if problem is not None:
            errors.append(FieldError(name, problem))
    if "timestamp" in raw:
        problem = _timestamp_error(raw["timestamp"], window, now_ns)
        if problem is not None:
            errors.append(FieldError("timestamp", problem))
    if not errors:  # a constraint msgspec checks only on the whole struct
        try:
            msgspec.convert(raw, Point)
        except msgspec.ValidationError as exc:
            errors.append(FieldError("$", clean_message(str(exc))))
    return errors


def body_errors(
    body: bytes, window: TimeWindow | None = None, now_ns: int | None = None
) -> list[FieldError]:
    """:func:`field_errors` of a raw body, never raising (a non-JSON body is one ``$`` error)."""
    return _body_errors(body, lambda raw, w: field_errors(raw, w, now_ns), window)


def to_ns(ts: dt.datetime | int | None, default_ns: int) -> int:
    if ts is None:
        return default_ns
    if isinstance(ts, int):
        return ts
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


TELEMETRY_TABLE = Table(
    name="telemetry",
    columns=(
        Column("time", ColType.TIMESTAMP, codec="DoubleDelta, ZSTD(1)"),
        Column("satellite_id", ColType.STRING, low_cardinality=True),
        Column("battery_charge_percent", ColType.FLOAT64, codec="Gorilla, ZSTD(1)"),
        Column("storage_usage_mb", ColType.FLOAT64, codec="Gorilla, ZSTD(1)"),
        Column("signal_strength_dbm", ColType.FLOAT64, codec="Gorilla, ZSTD(1)"),
        Column("is_anomaly", ColType.BOOL),
        Column("anomaly_reasons", ColType.STRING_LIST),
        Column("received_at", ColType.TIMESTAMP, codec="DoubleDelta, ZSTD(1)", skip_index="minmax"),
    ),
    time_column="time",
    order_by=("satellite_id", "time"),
    entity_column="satellite_id",
    rollups=(
        Rollup(
            name="satellite_stats",
            bucket_secs=300,
            group_by=("satellite_id",),
            measures=(
                ("battery_charge_percent", "battery"),
                ("storage_usage_mb", "storage"),
                ("signal_strength_dbm", "signal"),
            ),
            flag_counts=(("anomaly_points", "is_anomaly"),),
            count_name="data_points",
        ),
    ),
    comment="Satellite telemetry points, flagged by the anomaly rules.",
)


def tables(retention_days: int | None = 30) -> tuple[Table, Table]:
    """The pipeline's tables with the configured retention."""
    return TELEMETRY_TABLE.with_ttl(retention_days), ALERTS_TABLE.with_ttl(retention_days)


def threshold_rules(
    battery: float = 10.0, storage: float = 95000.0, signal: float = -100.0
) -> ThresholdRules:
    """The seed's three rules: battery < 10 %, storage > 95,000 MB, signal < -100 dBm."""
    return ThresholdRules(
        (
            ThresholdRule("battery_charge_percent", "<", battery, "battery_low"),
            ThresholdRule("storage_usage_mb", ">", storage, "storage_high"),
            ThresholdRule("signal_strength_dbm", "<", signal, "signal_weak"),
        )
    )


@dataclass(slots=True)
class Mapped:
    """Rows for each table, the points refused by the time window (by input index) and
    the alert state they would change (applied by :meth:`SatelliteMapper.commit`)."""

    rows: dict[str, list[Row]]
    rejected: list[tuple[int, FieldError]]
    alert_changes: dict[str, tuple[str, ...]]
    alert_events: list[Row]

    @property
    def accepted(self) -> int:
        return len(self.rows["telemetry"])


class SatelliteMapper:
    """Points -> rows for ``telemetry`` and ``alerts``, with anomaly flags.

    :param window: accepted timestamps (default: whatever the stores can hold).
    """

    def __init__(
        self,
        rules: ThresholdRules,
        metrics: Metrics | None = None,
        *,
        window: TimeWindow | None = None,
    ) -> None:
        self.rules = rules
        self.window = window or TimeWindow()
        self.alerts = AlertTracker(PIPELINE, rules, metrics)
        b, s, g = rules.rules
        self._b, self._s, self._g = b.check, s.check, g.check
        self._tb, self._ts, self._tg = b.threshold, s.threshold, g.threshold
        self._nb, self._ns, self._ng = b.rule, s.rule, g.rule

    def map(self, points: Sequence[Point], received_ns: int | None = None) -> Mapped:
        """Map ``points``; nothing changes until :meth:`commit` (call it once the rows
        were accepted downstream)."""
        received = received_ns if received_ns is not None else time.time_ns()
        lo, hi = self.window.bounds(received)
        telemetry: list[Row] = []
        alerts: list[Row] = []
        rejected: list[tuple[int, FieldError]] = []
        active = self.alerts.active
        changes: dict[str, tuple[str, ...]] = {}
        for index, p in enumerate(points):
            ts = p.timestamp
            if ts is None:
                t_ns = received  # always inside the window
            else:
                t_ns = ts if ts.__class__ is int else to_ns(ts, received)
                if t_ns < lo or t_ns > hi:
                    problem = self.window.problem(t_ns, received) or "timestamp out of range"
                    rejected.append((index, FieldError("timestamp", problem)))
                    continue
            battery = p.battery_charge_percent
            storage = p.storage_usage_mb
            signal = p.signal_strength_dbm
            reasons: tuple[str, ...] = ()
            if self._b(battery, self._tb):
                reasons += (self._nb,)
            if self._s(storage, self._ts):
                reasons += (self._ns,)
            if self._g(signal, self._tg):
                reasons += (self._ng,)
            sid = p.satellite_id
            telemetry.append(
                (t_ns, sid, battery, storage, signal, bool(reasons), reasons, received)
            )
            if reasons or (active and sid in active) or (changes and sid in changes):
                alerts.extend(
                    self.alerts.observe(sid, t_ns, reasons, (battery, storage, signal), changes)
                )
        out: dict[str, list[Row]] = {"telemetry": telemetry}
        if alerts:
            out["alerts"] = alerts
        return Mapped(out, rejected, changes, alerts)

    def map_one(
        self, p: Point, received: int
    ) -> tuple[Row, list[Row] | None, dict[str, tuple[str, ...]] | None] | FieldError:
        """One point: its telemetry row, its alert rows and state changes (``None`` when
        there are none: the common case), or why its timestamp is refused. Nothing changes
        until :meth:`commit_one`."""
        ts = p.timestamp
        if ts is None:
            t_ns = received
        else:
            t_ns = ts if ts.__class__ is int else to_ns(ts, received)
            lo, hi = self.window.bounds(received)
            if t_ns < lo or t_ns > hi:
                return FieldError(
                    "timestamp", self.window.problem(t_ns, received) or "timestamp out of range"
                )
        battery = p.battery_charge_percent
        storage = p.storage_usage_mb
        signal = p.signal_strength_dbm
        reasons: tuple[str, ...] = ()
        if self._b(battery, self._tb):
            reasons += (self._nb,)
        if self._s(storage, self._ts):
            reasons += (self._ns,)
        if self._g(signal, self._tg):
            reasons += (self._ng,)
        sid = p.satellite_id
        row = (t_ns, sid, battery, storage, signal, bool(reasons), reasons, received)
        if not reasons and sid not in self.alerts.active:
            return row, None, None
        changes: dict[str, tuple[str, ...]] = {}
        events = self.alerts.observe(sid, t_ns, reasons, (battery, storage, signal), changes)
        return row, (events or None), changes

    def commit_one(self, events: list[Row] | None, changes: dict[str, tuple[str, ...]]) -> None:
        """:meth:`commit` for :meth:`map_one`'s result."""
        self.alerts.commit(changes, events or ())

    def commit(self, mapped: Mapped | ColumnMapped) -> None:
        """The rows of ``mapped`` were accepted: apply their alert state changes."""
        if mapped.alert_changes:
            self.alerts.commit(mapped.alert_changes, mapped.alert_events)


# -- the pipeline -----------------------------------------------------------------------


class SatellitesSettings(KafkaPipelineSettings):
    """The satellites pipeline: the seed's anomaly thresholds (``ANOMALY_THRESHOLD_*``);
    on the ``kafka`` source (and for ``serve --sink kafka``) its raw topic and group."""

    kafka_topic: str = Field(
        "satellites-raw",
        min_length=1,
        description="The raw topic: the HTTP tier publishes accepted points to it "
        "(serve --sink kafka), workers consume it (run satellites --source kafka).",
    )
    consumer_group: str = Field(
        "satellites-workers", min_length=1, validation_alias=env("KAFKA_CONSUMER_GROUP")
    )
    dead_letter_topic: str = "satellites-dead-letters"

    battery_threshold: float = Field(
        10.0,
        validation_alias=env("ANOMALY_THRESHOLD_BATTERY"),
        description="battery_low fires below this percentage.",
    )
    storage_threshold: float = Field(
        95000.0,
        validation_alias=env("ANOMALY_THRESHOLD_STORAGE"),
        description="storage_high fires above this many MB.",
    )
    signal_threshold: float = Field(
        -100.0,
        validation_alias=env("ANOMALY_THRESHOLD_SIGNAL"),
        description="signal_weak fires below this many dBm.",
    )


class SatelliteIngest:
    """The satellites pipeline as the HTTP push source takes it
    (:class:`~orbitstream.sources.http.ingest.HttpIngest`): ``POST /telemetry``, points
    decoded to :class:`Point`, mapped by a :class:`SatelliteMapper`."""

    path = "/telemetry"
    record_type = Point
    id_field = "satellite_id"
    table = "telemetry"

    def __init__(self, mapper: SatelliteMapper, alerts_table: Table = ALERTS_TABLE) -> None:
        self.mapper = mapper
        self.window = mapper.window
        self.alerts_table = alerts_table

    def field_errors(self, raw: object, window: TimeWindow | None) -> list[FieldError]:
        return field_errors(raw, window)

    # from this many points on, mapping columnar pays (Arrow's fixed cost per call is
    # about that of mapping 200 points as tuples: bench/pipeline.py)
    columnar_min_points = 256

    def map(self, records: Sequence[Point], received_ns: int) -> Mapped | ColumnMapped:
        if len(records) < self.columnar_min_points:
            return self.mapper.map(records, received_ns)
        from orbitstream.pipelines import satellites_columnar as columnar

        cols = columnar.PointColumns.from_points(records)
        return columnar.map_columns(self.mapper, cols, received_ns)

    def map_body(self, body: bytes, received_ns: int) -> ColumnMapped | None:
        """A JSON array of points, columnar (``telemetry`` as one record batch); ``None``
        when a point is invalid: the exact path then names every problem."""
        from orbitstream.pipelines import satellites_columnar as columnar

        cols = columnar.decode_columns(body)
        if cols is None:
            return None
        return columnar.map_columns(self.mapper, cols, received_ns)

    def commit(self, mapped: Mapped | ColumnMapped) -> None:
        self.mapper.commit(mapped)

    def map_one(
        self, record: Point, received_ns: int
    ) -> tuple[Row, dict[str, list[Row]] | None, Callable[[], None] | None] | FieldError:
        out = self.mapper.map_one(record, received_ns)
        if isinstance(out, FieldError):
            return out
        row, events, changes = out
        if changes is None:
            return row, None, None
        mapper = self.mapper
        return (
            row,
            {"alerts": events} if events else {},
            lambda: mapper.commit_one(events, changes),
        )

    async def restore(self, store: Store) -> None:
        """Alerts still firing in the store fire on (a restart neither re-fires nor forgets)."""
        name = self.alerts_table.qualified_name
        if store.query_dialect == "postgres":
            sql = (
                f"SELECT entity_id, rule FROM (SELECT DISTINCT ON (entity_id, rule) entity_id, "
                f"rule, state FROM {name} WHERE pipeline = %(p)s "
                "ORDER BY entity_id, rule, time DESC) AS latest WHERE state = 'firing'"
            )
        else:
            sql = (
                f"SELECT entity_id, rule FROM {name} WHERE pipeline = {{p:String}} "
                "GROUP BY entity_id, rule HAVING argMax(state, time) = 'firing'"
            )
        res = await store.query(sql, {"p": PIPELINE})
        self.mapper.alerts.restore([(str(e), str(r)) for e, r in res.rows])


class KafkaPoint(msgspec.Struct, gc=False):
    """A point as a Kafka message carries it: the HTTP API's JSON (``timestamp``), or a
    ``telemetry`` row as the Kafka sink writes it (``time``, epoch ns or RFC 3339; the
    derived columns are ignored and computed again)."""

    satellite_id: SatelliteId
    battery_charge_percent: Battery
    storage_usage_mb: Storage
    signal_strength_dbm: Signal
    timestamp: Timestamp = None
    time: Timestamp = None

    def point(self) -> Point:
        return Point(
            self.satellite_id,
            self.battery_charge_percent,
            self.storage_usage_mb,
            self.signal_strength_dbm,
            self.timestamp if self.timestamp is not None else self.time,
        )


@dataclass(slots=True)
class _KafkaMapped(MapResult):
    mapped: Any = None


class SatelliteKafkaMapping:
    """The satellites pipeline on the ``kafka`` source: each message is one point or a
    JSON array of points (:class:`KafkaPoint`). A message that does not decode, or a
    single point that is invalid or outside the accepted window, is a dead record; in an
    array, as over HTTP, the good points are stored and each bad one is a dead record of
    its own (its JSON as the value, the reason naming ``$[i].field``). Alert state
    advances when the chunk's rows are durable (:meth:`commit`)."""

    def __init__(self, ingest: SatelliteIngest) -> None:
        self.ingest = ingest
        self._decode = msgspec.json.Decoder(KafkaPoint | list[KafkaPoint]).decode
        self._decode_one = msgspec.json.Decoder(KafkaPoint).decode
        self._decode_raw = msgspec.json.Decoder(list[msgspec.Raw]).decode

    def map_chunk(self, messages: Iterable[Message]) -> MapResult:
        points: list[Point] = []
        # per point: its message and, for an element of an array, its index
        origin: list[tuple[Message, int | None]] = []
        dead: list[DeadRecord] = []
        raws: dict[int, list[msgspec.Raw]] = {}  # an array message's elements, by offset
        count = ignored = 0
        for m in messages:
            count += 1
            value = m.value or b""
            if not value:
                dead.append(DeadRecord(m, b"", "decode", "empty message (tombstone)"))
                continue
            try:
                doc = self._decode(value)
            except msgspec.DecodeError as exc:
                if isinstance(exc, msgspec.ValidationError) and self._elements(
                    m, value, points, origin, dead, raws
                ):
                    continue
                kind = "invalid" if isinstance(exc, msgspec.ValidationError) else "decode"
                dead.append(DeadRecord(m, bytes(value), kind, str(exc)))
                continue
            if isinstance(doc, list):
                if not doc:  # valid, with nothing to take
                    ignored += 1
                for i, kp in enumerate(doc):
                    points.append(kp.point())
                    origin.append((m, i))
            else:
                points.append(doc.point())
                origin.append((m, None))
        result = _KafkaMapped(messages=count, dead=dead, ignored=ignored)
        if not points:
            return result
        mapped = self.ingest.map(points, time.time_ns())
        for i, err in mapped.rejected:
            msg, element = origin[i]
            reason = f"{err.field}: {err.message}"
            value = bytes(msg.value or b"")
            if element is not None:
                elements = raws.get(msg.offset)
                if elements is None:
                    elements = raws[msg.offset] = self._decode_raw(value)
                value = bytes(elements[element])
                reason = f"$[{element}].{reason}"
            dead.append(DeadRecord(msg, value, "invalid_timestamp", reason, element))
        if dead:
            refused = {i for i, _ in mapped.rejected}
            stored = {
                (m.partition, m.offset) for j, (m, _) in enumerate(origin) if j not in refused
            }
            result.partial = len(stored & {(d.position.partition, d.position.offset) for d in dead})
        if isinstance(mapped, Mapped):
            result.rows = {k: v for k, v in mapped.rows.items() if v}
        else:
            rows: dict[str, Any] = {"telemetry": mapped.telemetry}
            if mapped.alerts:
                rows["alerts"] = mapped.alerts
            result.rows = rows
        result.mapped = mapped
        return result

    def _elements(
        self,
        m: Message,
        value: bytes,
        points: list[Point],
        origin: list[tuple[Message, int | None]],
        dead: list[DeadRecord],
        raws: dict[int, list[msgspec.Raw]],
    ) -> bool:
        """An array with an invalid point, element by element: the good points join
        ``points``, each bad one is a dead record; the elements are kept in ``raws``.
        False when ``value`` is no array."""
        try:
            elements = raws[m.offset] = self._decode_raw(value)
        except msgspec.DecodeError:
            return False
        for i, raw in enumerate(elements):
            try:
                kp = self._decode_one(raw)
            except msgspec.DecodeError as exc:
                reason = str(exc).replace("`$", f"`$[{i}]", 1)
                if "`$[" not in reason:
                    reason = f"$[{i}]: {reason}"
                dead.append(DeadRecord(m, bytes(raw), "invalid", reason, i))
                continue
            points.append(kp.point())
            origin.append((m, i))
        return True

    def commit(self, result: MapResult) -> None:
        if isinstance(result, _KafkaMapped) and result.mapped is not None:
            self.ingest.commit(result.mapped)
            result.mapped = None

    def discard(self, result: MapResult) -> None:
        """Nothing to forget: mapping changes no state until :meth:`commit`."""

    def rollback(self, topic: str | None = None, partition: int | None = None) -> int:
        return 0


def _tables(own: SatellitesSettings, settings: Settings) -> tuple[Table, Table]:
    return tables(settings.retention_days)


def _build(b: PipelineBuild) -> PipelineParts:
    own = b.own
    assert isinstance(own, SatellitesSettings)
    rules = threshold_rules(own.battery_threshold, own.storage_threshold, own.signal_threshold)
    mapper = SatelliteMapper(rules, b.metrics, window=b.window)
    if b.written is not None and "alerts" not in b.written:
        mapper.alerts.announce = False  # no alert is stored here: the workers' alerts count
    ingest = SatelliteIngest(mapper, b.tables["alerts"])
    handler: object = ingest
    if b.source == "kafka":

        async def restore(store: Store, _tables: Mapping[str, Table]) -> None:
            await ingest.restore(store)

        handler = KafkaHandler(SatelliteKafkaMapping(ingest), restore=restore)
    source = registry.source_type(b.source).create(b, handler)
    info: dict[str, Any] = {
        "thresholds": [
            {"field": r.field, "op": r.op, "threshold": r.threshold, "rule": r.rule}
            for r in rules.rules
        ],
    }
    if b.source == "kafka":
        info["topic"] = own.kafka_topic
        info["consumer_group"] = own.consumer_group
    else:
        info["endpoints"] = [ingest.path, f"{ingest.path}/batch", f"{ingest.path}/ndjson"]
    return PipelineParts(source, info=info)


SPEC = PipelineSpec(
    name=PIPELINE,
    description="Satellite fleet telemetry pushed over HTTP (the seed's API): anomaly flags, "
    "alerts, a 5-minute rollup.",
    settings=SatellitesSettings,
    tables=_tables,
    build=_build,
    sources=("http", "kafka"),
    namespace=None,
)
