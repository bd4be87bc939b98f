"""The sessions pipeline: vehicle delivery session messages -> three tables.

Wire format (topic ``sessions-topic``, one JSON object per message, keyed by session)::

    {"session_id": "f1e2…", "vehicle_id": "a1b2…", "order_id": "c1d2…",
     "status": "en_route", "timestamp": "2025-07-19T12:34:56.789Z",
     "start_lat": 40.7527, "start_lon": -73.9772, "end_lat": 40.7580, "end_lon": -73.9855,
     "current_lat": 40.7550, "current_lon": -73.9800}

Tables:

* ``sessions_base`` — one header per session from its first ``started`` message. Every
  ``started`` message yields a row; the table is declared
  :class:`~orbitstream.core.tables.Replacing` on ``session_id`` keeping the row with the
  earliest ``started_at``, so "first" holds across restarts, replays and several workers
  (the store decides, not process memory). Read it with ``FINAL``.
* ``session_events`` — one row per message (every status update).
* ``session_movements`` — one row per GPS ping (every message with ``current_lat`` /
  ``current_lon``).

Validation (a failure makes the whole message a dead record; ``kind`` in brackets):
not JSON or not an object [``decode``]; ``session_id``/``vehicle_id``/``order_id``
missing or not 1-64 characters of ``[A-Za-z0-9_.:-]`` [``invalid_id``]; ``status`` not
one of ``started``, ``en_route``, ``delivered``, ``cancelled`` [``invalid_status``];
latitudes outside [-90, 90], longitudes outside [-180, 180], ``current_lat`` without
``current_lon`` (or the reverse), or a ``started`` message without start and end points
[``invalid_coordinates``]; ``timestamp`` missing, not RFC 3339 with an offset, or outside
1970-2261 [``invalid_timestamp``]. Timestamps keep microseconds (Python ``datetime``).

The mapper holds no state: the same bytes always give the same rows.
"""

from __future__ import annotations

import datetime as dt
import re
import string
import time
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
from pydantic import Field

from orbitstream.core import registry
from orbitstream.core.batch import Row
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSpec
from orbitstream.core.tables import ColType, Column, Replacing, Table
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.mapping import DeadRecord, MapResult, Message, Position
from orbitstream.settings import Settings, env
from orbitstream.sources.kafka_source import KafkaPipelineSettings

__all__ = [
    "CONSUMER_GROUP_DEFAULT",
    "ID_CHARS",
    "SESSIONS_BASE_TABLE",
    "SESSION_EVENTS_TABLE",
    "SESSION_MOVEMENTS_TABLE",
    "SPEC",
    "STATUSES",
    "TOPIC_DEFAULT",
    "SessionMessage",
    "SessionsMapper",
    "SessionsSettings",
    "tables",
]

PIPELINE = "sessions"
TOPIC_ENV = "KAFKA_TOPIC"
TOPIC_DEFAULT = "sessions-topic"
CONSUMER_GROUP_ENV = "KAFKA_CONSUMER_GROUP"
CONSUMER_GROUP_DEFAULT = "jupiter-consumer-group"

STATUSES = ("started", "en_route", "delivered", "cancelled")

# The characters are checked by the mapper, once per distinct id (a cache of ids seen
# valid; a regex or ``str.strip`` per field costs 0.4-0.8 µs, more than the decode).
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ID_CHARS = string.ascii_letters + string.digits + "_.:-"
_ID_MATCH = re.compile(r"[A-Za-z0-9_.:\-]+").fullmatch
_MAX_CACHED_IDS = 200_000
Status = Literal["started", "en_route", "delivered", "cancelled"]
Lat = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
Lon = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
Rfc3339 = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class SessionMessage(msgspec.Struct, gc=False):
    """One session message, validated on decode (ranges, vocabulary, id lengths).

    The id characters (:data:`ID_CHARS`), coordinate pairs and the timestamp range are
    checked by :class:`SessionsMapper`.
    """

    session_id: Id
    vehicle_id: Id
    order_id: Id
    status: Status
    timestamp: Rfc3339
    start_lat: Lat | None = None
    start_lon: Lon | None = None
    end_lat: Lat | None = None
    end_lon: Lon | None = None
    current_lat: Lat | None = None
    current_lon: Lon | None = None


_TIME_CODEC = "DoubleDelta, ZSTD(1)"
_GEO_CODEC = "Gorilla, ZSTD(1)"

SESSIONS_BASE_TABLE = Table(
    name="sessions_base",
    columns=(
        Column("session_id", ColType.STRING),
        Column("vehicle_id", ColType.STRING),
        Column("order_id", ColType.STRING),
        Column("started_at", ColType.TIMESTAMP),
        Column("start_lat", ColType.FLOAT64),
        Column("start_lon", ColType.FLOAT64),
        Column("end_lat", ColType.FLOAT64),
        Column("end_lon", ColType.FLOAT64),
    ),
    time_column="started_at",
    order_by=("session_id",),
    entity_column="session_id",
    replacing=Replacing("started_at", keep="first"),
    comment="One header per delivery session, from its first started message (read with FINAL).",
)

SESSION_EVENTS_TABLE = Table(
    name="session_events",
    columns=(
        Column("time", ColType.TIMESTAMP, codec=_TIME_CODEC),
        Column("session_id", ColType.STRING),
        Column("vehicle_id", ColType.STRING),
        Column("order_id", ColType.STRING),
        Column("status", ColType.STRING, low_cardinality=True),
        Column("current_lat", ColType.FLOAT64, nullable=True),
        Column("current_lon", ColType.FLOAT64, nullable=True),
    ),
    time_column="time",
    order_by=("session_id", "time"),
    entity_column="session_id",
    comment="Every status update of every delivery session.",
)

SESSION_MOVEMENTS_TABLE = Table(
    name="session_movements",
    columns=(
        Column("time", ColType.TIMESTAMP, codec=_TIME_CODEC),
        Column("session_id", ColType.STRING),
        Column("vehicle_id", ColType.STRING),
        Column("current_lat", ColType.FLOAT64, codec=_GEO_CODEC),
        Column("current_lon", ColType.FLOAT64, codec=_GEO_CODEC),
    ),
    time_column="time",
    order_by=("session_id", "time"),
    entity_column="session_id",
    comment="Every GPS ping of every delivery session.",
)


def tables(retention_days: int | None = None) -> tuple[Table, Table, Table]:
    """The pipeline's tables with the given retention (``None``: keep forever)."""
    return (
        SESSIONS_BASE_TABLE.with_ttl(retention_days),
        SESSION_EVENTS_TABLE.with_ttl(retention_days),
        SESSION_MOVEMENTS_TABLE.with_ttl(retention_days),
    )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_TIME = dt.datetime(2262, 1, 1, tzinfo=dt.UTC)  # int64 nanoseconds end in 2262
_US = dt.timedelta(microseconds=1)
_FIELD = re.compile(r"`\$\.(\w+)`|required field `(\w+)`")
_KINDS = {
    "session_id": "invalid_id",
    "vehicle_id": "invalid_id",
    "order_id": "invalid_id",
    "status": "invalid_status",
    "timestamp": "invalid_timestamp",
}


def _decode_error(exc: msgspec.DecodeError) -> tuple[str, str]:
    """(kind, reason) for a message msgspec refused."""
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return "decode", f"not JSON: {text}"
    m = _FIELD.search(text)
    if m is None:
        return "decode", text  # e.g. "Expected `object`, got `array`"
    name = m.group(1) or m.group(2)
    if name in _KINDS:
        return _KINDS[name], text
    if name.endswith(("_lat", "_lon")):
        return "invalid_coordinates", text
    return "invalid", text


class SessionsMapper:
    """Session messages -> ``sessions_base``, ``session_events``, ``session_movements`` rows.

    Stateless; :meth:`commit` and :meth:`rollback` exist for the
    :class:`~orbitstream.pipelines.mapping.Mapper` protocol.
    """

    tables: tuple[Table, ...] = (SESSIONS_BASE_TABLE, SESSION_EVENTS_TABLE, SESSION_MOVEMENTS_TABLE)

    def __init__(self, window: TimeWindow | None = None) -> None:
        """:param window: timestamps older than its lower bound (the retention: rows the
        tables' TTL would delete at once) are dead records; ``None``: no such check."""
        self._decode = msgspec.json.Decoder(SessionMessage).decode
        self.window = window
        # ids already checked (a cache, not state: the same bytes still give the same
        # rows); vehicles and sessions repeat their ids in every message
        self._valid_ids: set[str] = set()

    def _ids_ok(self, *ids: str) -> bool:
        ok = self._valid_ids
        for i in ids:
            if i not in ok:
                if _ID_MATCH(i) is None:
                    return False
                if len(ok) >= _MAX_CACHED_IDS:
                    ok.clear()
                ok.add(i)
        return True

    def map(self, value: bytes | None, position: Position) -> MapResult:
        """Map one message.

        :param value: the message bytes (``None`` for a tombstone: a dead record).
        :param position: where it came from; used only for dead records.
        """
        return self._map_all(((value, position),))

    def map_chunk(self, messages: Iterable[Message]) -> MapResult:
        """Map consecutive messages into one result (rows in message order)."""
        return self._map_all((m.value, m) for m in messages)

    def commit(self, result: MapResult) -> None:
        """Nothing to do: this mapper has no state."""

    def discard(self, result: MapResult) -> None:
        """Nothing to forget: this mapper has no state."""

    def rollback(self, topic: str | None = None, partition: int | None = None) -> int:
        """Nothing to forget: this mapper has no state; returns 0."""
        return 0

    def _map_all(self, items: Iterable[tuple[bytes | None, Position]]) -> MapResult:
        decode = self._decode
        base: list[Row] = []
        events: list[Row] = []
        moves: list[Row] = []
        dead: list[DeadRecord] = []
        count = 0
        epoch = _EPOCH
        us = _US
        ok = self._valid_ids
        now = time.time_ns()
        window = self.window
        oldest = (window.bounds(now)[0], window) if window is not None else None
        for value, position in items:
            count += 1
            if not value:  # None, or b"": what the Kafka reader hands on for a tombstone
                dead.append(DeadRecord(position, b"", "decode", "empty message (tombstone)"))
                continue
            try:
                m = decode(value)
            except msgspec.DecodeError as exc:
                kind, reason = _decode_error(exc)
                dead.append(DeadRecord(position, bytes(value), kind, reason))
                continue
            ts = m.timestamp
            if ts < epoch or ts >= _MAX_TIME:
                dead.append(
                    DeadRecord(
                        position,
                        bytes(value),
                        "invalid_timestamp",
                        f"timestamp {ts.isoformat()} is outside 1970-01-01..2261-12-31",
                    )
                )
                continue
            lat = m.current_lat
            lon = m.current_lon
            if (lat is None) is not (lon is None):
                dead.append(
                    DeadRecord(
                        position,
                        bytes(value),
                        "invalid_coordinates",
                        "current_lat and current_lon must come together",
                    )
                )
                continue
            sid = m.session_id
            vid = m.vehicle_id
            oid = m.order_id
            if not (sid in ok and vid in ok and oid in ok) and not self._ids_ok(sid, vid, oid):
                dead.append(
                    DeadRecord(
                        position,
                        bytes(value),
                        "invalid_id",
                        f"ids may only contain letters, digits and {ID_CHARS[-4:]}",
                    )
                )
                continue
            t = (ts - epoch) // us * 1000
            if oldest is not None and t < oldest[0]:
                reason = oldest[1].problem(t, now) or "timestamp is too old"
                dead.append(DeadRecord(position, bytes(value), "invalid_timestamp", reason))
                continue
            status = m.status
            if status == "started":
                s_lat, s_lon, e_lat, e_lon = m.start_lat, m.start_lon, m.end_lat, m.end_lon
                if s_lat is None or s_lon is None or e_lat is None or e_lon is None:
                    dead.append(
                        DeadRecord(
                            position,
                            bytes(value),
                            "invalid_coordinates",
                            "a started message needs start_lat, start_lon, end_lat and end_lon",
                        )
                    )
                    continue
                base.append((sid, vid, oid, t, s_lat, s_lon, e_lat, e_lon))
            events.append((t, sid, vid, oid, status, lat, lon))
            if lat is not None:
                moves.append((t, sid, vid, lat, lon))
        rows: dict[str, list[Row]] = {}
        if base:
            rows["sessions_base"] = base
        if events:
            rows["session_events"] = events
        if moves:
            rows["session_movements"] = moves
        return MapResult(rows=rows, dead=dead, messages=count)


# -- the pipeline ------------------------------------------------------------------------
class SessionsSettings(KafkaPipelineSettings):
    """The sessions pipeline: the Jupiter sessions service's variables."""

    kafka_topic: str = Field(TOPIC_DEFAULT, min_length=1, validation_alias=env(TOPIC_ENV))
    consumer_group: str = Field(
        CONSUMER_GROUP_DEFAULT, min_length=1, validation_alias=env(CONSUMER_GROUP_ENV)
    )
    dead_letter_topic: str = "sessions-dead-letters"


def _tables(own: SessionsSettings, settings: Settings) -> tuple[Table, ...]:
    return tables(settings.retention_days)


def _build(b: PipelineBuild) -> PipelineParts:
    source = registry.source_type(b.source).create(b, SessionsMapper(b.window))
    own = b.own
    assert isinstance(own, SessionsSettings)
    return PipelineParts(
        source,
        info={"topic": own.kafka_topic, "consumer_group": own.consumer_group},
    )


SPEC = PipelineSpec(
    name=PIPELINE,
    description="Vehicle delivery sessions from Kafka (KAFKA_TOPIC): session headers, "
    "status events, GPS movements.",
    settings=SessionsSettings,
    tables=_tables,
    build=_build,
    sources=("kafka",),
    namespace="sessions",
)
