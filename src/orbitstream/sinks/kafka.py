"""Kafka sink: one topic per table, JSON values keyed by entity id, every delivery confirmed.

Wire format of a row:

- **topic**: ``KafkaSinkSettings.topics[table]``, else ``topic_prefix + table``;
- **key**: the table's ``entity_column`` value as UTF-8 (no key for a table without one),
  so every row of one entity lands on one partition, in order;
- **value**: a JSON object ``{column: value}`` in column order (msgspec). ``TIMESTAMP``
  columns are RFC 3339 UTC strings with nine fractional digits
  (``"2025-07-19T12:34:56.789000000Z"``, lossless) or, with
  ``timestamp_format="epoch_ns"``, integers of nanoseconds since the epoch; ``MAP_*`` are
  objects, ``STRING_LIST`` arrays, NaN is ``null``;
- **headers** (``batch_headers``): ``orbitstream.table``, ``orbitstream.batch_id`` and
  ``orbitstream.row`` (the row's index in the batch). Delivery is at least once: a batch
  retried after a partial failure re-sends only the rows not yet confirmed, but a process
  that dies mid-batch re-sends it whole after restart, so a consumer that must see each row
  once drops repeats of ``(batch_id, row)``.

The producer is idempotent (``enable.idempotence``, ``acks=all``): librdkafka's own
retries never duplicate or reorder. ``write`` returns only after every message's delivery
report came back without error. Errors are classified at this boundary: broker
unreachable, timeouts, leader changes → :class:`~orbitstream.errors.SinkRetryableError`;
unknown topic or missing authorization → ``SinkRetryableError(deployment=True)`` (retried
for a bounded time so an operator can fix it); a message too large or an invalid topic →
:class:`~orbitstream.errors.SinkRejectedError` (the pipeline isolates the rows). A row too
large for ``message_max_bytes`` is refused before anything of its batch is sent.

:class:`AsyncProducer` (the delivery-confirmed producer on asyncio) is shared with the
Kafka source, which sends its dead letters through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orbitstream.core.batch import Batch, DeadLetter, Row
from orbitstream.core.protocols import SinkBase
from orbitstream.core.tables import ColType, Table
from orbitstream.errors import ConfigError, SinkRejectedError, SinkRetryableError
from orbitstream.logging import kafka_client_log

__all__ = [
    "AsyncProducer",
    "DeliveryFailure",
    "KafkaSink",
    "KafkaSinkSettings",
    "OutgoingMessage",
    "classify_kafka_error",
    "encode_rows",
    "rfc3339_ns",
]

logger = logging.getLogger(__name__)

ConfigValue = str | int | float | bool

DEFAULT_DEAD_LETTER_TOPIC = "orbitstream-dead-letters"

# The request and record framing around one message (the broker's limit covers both).
_MESSAGE_OVERHEAD = 512
_REMEMBERED_BATCHES = 10_000


def _import_confluent() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "Kafka needs the kafka extra: pip install 'orbitstream[kafka]'",
            setting="KAFKA_BOOTSTRAP_SERVERS",
        ) from exc
    return confluent_kafka


# -- error classification ---------------------------------------------------------------
_REJECTED_NAMES = (
    "MSG_SIZE_TOO_LARGE",
    "TOPIC_EXCEPTION",
    "INVALID_RECORD",
    "RECORD_LIST_TOO_LARGE",
    "INVALID_TIMESTAMP",
    "_BAD_MSG",
    "_INVALID_ARG",
    "_INVALID_TYPE",
    "UNSUPPORTED_COMPRESSION_TYPE",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
)
#: Consecutive writes whose every message timed out before the producer is replaced.
STUCK_PRODUCER_WRITES = 2
#: create_topics errors that are about the deployment (see ``KafkaSink._create_topics``).
_TOPIC_REFUSALS = frozenset(
    {
        "TOPIC_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "POLICY_VIOLATION",
        "INVALID_CONFIG",
        "INVALID_TOPIC_EXCEPTION",
        "TOPIC_EXCEPTION",
        "SASL_AUTHENTICATION_FAILED",
        "_AUTHENTICATION",
        "_SSL",
    }
)
_DEPLOYMENT_NAMES = (
    "_UNKNOWN_TOPIC",
    "UNKNOWN_TOPIC_OR_PART",
    "_UNKNOWN_PARTITION",
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "SASL_AUTHENTICATION_FAILED",
    "_AUTHENTICATION",
    "_SSL",
)


@functools.cache
def _code_sets() -> tuple[frozenset[int], frozenset[int]]:
    error = _import_confluent().KafkaError

    def codes(names: tuple[str, ...]) -> frozenset[int]:
        return frozenset(int(getattr(error, n)) for n in names if hasattr(error, n))

    return codes(_REJECTED_NAMES), codes(_DEPLOYMENT_NAMES)


def classify_kafka_error(code: int) -> Literal["rejected", "deployment", "retryable"]:
    """How a produce error code is handled.

    ``rejected``: the message itself is refused (too large, invalid topic name, invalid
    record); ``deployment``: the topic is missing or access is denied (retried for a
    bounded time); ``retryable``: everything else (broker unreachable, timeouts, leader
    elections, not enough replicas).
    """
    rejected, deployment = _code_sets()
    if code in rejected:
        return "rejected"
    if code in deployment:
        return "deployment"
    return "retryable"


# -- settings --------------------------------------------------------------------------------
class KafkaSinkSettings(BaseModel):
    """Settings of :class:`KafkaSink`.

    :param bootstrap_servers: ``host:port[,host:port]`` (``KAFKA_BOOTSTRAP_SERVERS``).
    :param topics: table name → topic; a table not listed goes to ``topic_prefix + name``.
    :param dead_letter_topic: where rows a store refused (``write_dead_letters``) go.
    :param timestamp_format: ``rfc3339`` (string, ns precision) or ``epoch_ns`` (integer).
    :param batch_headers: add ``orbitstream.table/batch_id/row`` headers to every message.
    :param delivery_timeout_ms: librdkafka ``message.timeout.ms``: how long one message may
        wait for a broker before its delivery fails as retryable.
    :param message_max_bytes: the largest message (key + value + headers) produced.
    :param create_topics: create missing topics at ``start`` (``topic_partitions``,
        ``topic_replication_factor``); otherwise a missing topic is a deployment error.
    :param extra: further librdkafka producer settings (security, tuning), as is.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    topics: dict[str, str] = Field(default_factory=dict)
    topic_prefix: str = ""
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    timestamp_format: Literal["rfc3339", "epoch_ns"] = "rfc3339"
    batch_headers: bool = True
    client_id: str = "orbitstream"
    linger_ms: int = Field(default=5, ge=0)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    delivery_timeout_ms: int = Field(default=30_000, ge=1000)
    message_max_bytes: int = Field(default=1_000_000, ge=1000)
    create_topics: bool = False
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    extra: dict[str, ConfigValue] = Field(default_factory=dict)

    @field_validator("bootstrap_servers")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("bootstrap_servers is empty (KAFKA_BOOTSTRAP_SERVERS)")
        return value.strip()

    def topic_for(self, table: str) -> str:
        return self.topics.get(table, self.topic_prefix + table)

    def producer_config(self) -> dict[str, ConfigValue]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "compression.type": self.compression,
            "message.timeout.ms": self.delivery_timeout_ms,
            "message.max.bytes": self.message_max_bytes + _MESSAGE_OVERHEAD,
            **self.extra,
        }


# -- the delivery-confirmed producer ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to produce."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] | None = None
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A message whose delivery failed: its index in the list sent, the error code, name
    and text, and how it is classified (:func:`classify_kafka_error`)."""

    index: int
    code: int
    name: str
    reason: str
    fatal: bool = False

    @property
    def kind(self) -> Literal["rejected", "deployment", "retryable"]:
        return classify_kafka_error(self.code)


class _Deliveries:
    """Counts delivery reports of one ``deliver`` call (callbacks run on the poll thread)."""

    __slots__ = ("_lock", "_loop", "_outstanding", "_sealed", "failures", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._outstanding = 0
        self._sealed = False
        self.failures: list[DeliveryFailure] = []
        self.future: asyncio.Future[None] = loop.create_future()

    def expect(self) -> None:
        with self._lock:
            self._outstanding += 1

    def seal(self) -> None:
        """No more messages will be added; resolves now if every report is in."""
        with self._lock:
            self._sealed = True
            done = self._outstanding == 0
        if done:
            self._resolve()

    def report(self, index: int, err: Any) -> None:
        with self._lock:
            if err is not None:
                self.failures.append(
                    DeliveryFailure(index, int(err.code()), err.name(), err.str(), err.fatal())
                )
            self._outstanding -= 1
            done = self._sealed and self._outstanding == 0
        if done:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._resolve)

    def local_failure(self, failure: DeliveryFailure) -> None:
        with self._lock:
            self.failures.append(failure)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class AsyncProducer:
    """A confluent-kafka ``Producer`` for asyncio: ``deliver`` awaits every delivery report.

    A daemon thread serves ``poll()`` (delivery callbacks run there and hand results to
    the event loop); ``produce()`` is called on the loop thread and waits, without
    blocking the loop, while librdkafka's local queue is full. Every message gets a
    delivery report within ``message.timeout.ms``, so ``deliver`` always returns.

    :param config: librdkafka producer settings.
    :param name: for logs and thread names.
    """

    def __init__(self, config: dict[str, ConfigValue], *, name: str = "kafka") -> None:
        self.config = dict(config)
        self.name = name
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._timeouts_in_a_row = 0  # deliveries whose every failure was a timeout

    @property
    def started(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        """Create the producer and its poll thread (connects lazily; cheap)."""
        with self._lock:
            if self._producer is not None:
                return
            ck = _import_confluent()
            try:
                self._producer = ck.Producer(kafka_client_log(self.config))
            except ck.KafkaException as exc:
                raise ConfigError(
                    f"invalid Kafka producer settings: {exc}", setting="KAFKA_BOOTSTRAP_SERVERS"
                ) from exc
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._serve, args=(self._producer,), name=f"{self.name}-poll", daemon=True
            )
            self._thread.start()

    def _serve(self, producer: Any) -> None:
        while not self._stop.is_set():
            try:
                producer.poll(0.1)
            except Exception as exc:  # a failing callback must not end delivery reports
                logger.error(
                    "Kafka delivery callback failed.",
                    extra={"component": self.name, "error": repr(exc)},
                )

    def restart(self) -> None:
        """Drop the producer (after a fatal error of the idempotent producer) and make a new
        one; messages still queued in the old one get their failure reports."""
        self.close_sync(timeout_secs=0.0)
        self.start()

    async def deliver(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryFailure]:
        """Produce ``messages`` and wait for every delivery report.

        :returns: the failures (empty when everything was delivered), by index.
        """
        if not messages:
            return []
        if self._producer is None:
            self.start()
        ck = _import_confluent()
        producer = self._producer
        loop = asyncio.get_running_loop()
        reports = _Deliveries(loop)
        for i, msg in enumerate(messages):
            callback: Callable[[Any, Any], None] = _callback(reports, i)
            reports.expect()
            while True:
                try:
                    if msg.partition is None:
                        producer.produce(
                            msg.topic,
                            msg.value,
                            msg.key,
                            on_delivery=callback,
                            headers=msg.headers,
                        )
                    else:
                        producer.produce(
                            msg.topic,
                            msg.value,
                            msg.key,
                            msg.partition,
                            on_delivery=callback,
                            headers=msg.headers,
                        )
                    break
                except BufferError:
                    # librdkafka's queue is full: the poll thread drains it meanwhile.
                    await asyncio.sleep(0.005)
                except ck.KafkaException as exc:
                    err = exc.args[0]
                    reports.report(i, None)  # no callback will come for it
                    reports.local_failure(
                        DeliveryFailure(i, int(err.code()), err.name(), err.str(), err.fatal())
                    )
                    break
        reports.seal()
        await reports.future
        reports.failures.sort(key=lambda f: f.index)
        self._recover(reports.failures)
        return reports.failures

    def _recover(self, failures: Sequence[DeliveryFailure]) -> None:
        """A new producer for the retry when this one cannot go on: after a fatal error
        (produce() then raises ``_FATAL``, an error not itself marked fatal), or when every
        message of :data:`STUCK_PRODUCER_WRITES` deliveries in a row timed out — a broker
        that lost the producer's state (restarted without its storage) can answer
        UNKNOWN_PRODUCER_ID to every retry of this producer id, for good. Harmless while
        the broker is merely down (a new producer connects when it is back)."""
        if not failures:
            self._timeouts_in_a_row = 0
            return
        if any(f.fatal or f.name == "_FATAL" for f in failures):
            self._timeouts_in_a_row = 0
            logger.warning(
                "Kafka producer failed fatally; starting a new one.",
                extra={"component": self.name, "error": failures[0].reason},
            )
            self.restart()
            return
        if not all(f.name == "_MSG_TIMED_OUT" for f in failures):
            self._timeouts_in_a_row = 0
            return
        self._timeouts_in_a_row += 1
        if self._timeouts_in_a_row >= STUCK_PRODUCER_WRITES:
            logger.warning(
                "Kafka deliveries keep timing out; starting a new producer.",
                extra={"component": self.name, "deliveries": self._timeouts_in_a_row},
            )
            self._timeouts_in_a_row = 0
            self.restart()

    async def ping(self, timeout_secs: float = 5.0) -> None:
        """Fetch cluster metadata; raise :class:`SinkRetryableError` when no broker answers."""
        if self._producer is None:
            self.start()
        ck = _import_confluent()
        producer = self._producer
        try:
            await asyncio.to_thread(producer.list_topics, None, timeout_secs)
        except ck.KafkaException as exc:
            raise SinkRetryableError(
                f"Kafka not reachable at {self.config.get('bootstrap.servers')}: {exc.args[0]}",
                sink=self.name,
            ) from exc

    async def topics(self, timeout_secs: float = 5.0) -> set[str]:
        """Names of the topics the cluster knows."""
        if self._producer is None:
            self.start()
        md = await asyncio.to_thread(self._producer.list_topics, None, timeout_secs)
        return set(md.topics)

    async def close(self, timeout_secs: float = 10.0) -> None:
        await asyncio.to_thread(self.close_sync, timeout_secs)

    def close_sync(self, timeout_secs: float = 10.0) -> None:
        """Flush what is queued (up to ``timeout_secs``), stop the poll thread."""
        with self._lock:
            producer, self._producer = self._producer, None
            thread, self._thread = self._thread, None
        if producer is None:
            return
        self._stop.set()
        if thread is not None:
            thread.join()
        left = producer.flush(timeout_secs)
        if left:
            producer.purge()
            producer.flush(0)  # serve the failure reports of what was purged
            logger.warning(
                "Kafka producer closed with undelivered messages.",
                extra={"component": self.name, "records": left},
            )


def _callback(reports: _Deliveries, index: int) -> Callable[[Any, Any], None]:
    def on_delivery(err: Any, _msg: Any) -> None:
        reports.report(index, err)

    return on_delivery


# -- encoding --------------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()


class _SecondsCache:
    __slots__ = ("prefix", "sec")

    def __init__(self) -> None:
        self.sec = -(10**18)
        self.prefix = ""


def rfc3339_ns(ns: int, _cache: _SecondsCache | None = None) -> str:
    """Epoch nanoseconds as RFC 3339 UTC with nine fractional digits."""
    sec, frac = divmod(ns, 1_000_000_000)
    if _cache is not None and _cache.sec == sec:
        prefix = _cache.prefix
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if _cache is not None:
            _cache.sec, _cache.prefix = sec, prefix
    return f"{prefix}.{frac:09d}Z"


def _clean_float(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def encode_rows(
    table: Table, rows: Sequence[Row], timestamp_format: str = "rfc3339"
) -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` per row: the entity column as the key, the row as a JSON object."""
    names = table.column_names
    stamps = [i for i, c in enumerate(table.columns) if c.type is ColType.TIMESTAMP]
    floats = [i for i, c in enumerate(table.columns) if c.type is ColType.FLOAT64]
    float_maps = [i for i, c in enumerate(table.columns) if c.type is ColType.MAP_STR_FLOAT]
    key_index = table.index(table.entity_column) if table.entity_column else None
    cache = _SecondsCache()
    out: list[tuple[bytes | None, bytes]] = []
    for row in rows:
        values = list(row)
        if timestamp_format == "rfc3339":
            for i in stamps:
                v = values[i]
                if isinstance(v, int):
                    values[i] = rfc3339_ns(v, cache)
        for i in floats:
            v = values[i]
            if isinstance(v, float) and not math.isfinite(v):
                values[i] = None
        for i in float_maps:
            m = values[i]
            if isinstance(m, dict):
                values[i] = {k: _clean_float(x) for k, x in m.items()}
        key: bytes | None = None
        if key_index is not None:
            k = row[key_index]
            key = None if k is None else str(k).encode()
        out.append((key, _encoder.encode(dict(zip(names, values, strict=True)))))
    return out


# -- the sink ----------------------------------------------------------------------------------
class KafkaSink(SinkBase):
    """Writes each table's rows to its topic; ``write`` returns once every message of the
    batch is confirmed delivered (``acks=all``).

    A batch id already delivered by this process is not sent again; a retried batch sends
    only the rows whose delivery was not yet confirmed.

    :param settings: connection, topics, format.
    :raises SinkRetryableError: from ``start``/``write``/``ping``: broker unreachable,
        timeouts; with ``deployment=True`` for a missing topic or denied access.
    :raises SinkRejectedError: from ``write``: a message too large or an invalid topic.
    """

    name = "kafka"
    configured_by = "KAFKA_BOOTSTRAP_SERVERS"
    ping_while_writing = True  # metadata request; deliveries fail only after their timeout
    # a cancelled delivery leaves its messages in librdkafka's queue: close() purges them
    # (or they arrive: at least once), while the rows go to the dead-letter file
    cancel_writes_at_deadline = True

    def __init__(self, settings: KafkaSinkSettings) -> None:
        self.settings = settings
        self.producer = AsyncProducer(settings.producer_config(), name=self.name)
        self._tables: dict[str, Table] = {}
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._partial: OrderedDict[str, set[int]] = OrderedDict()

    def topic(self, table: str) -> str:
        return self.settings.topic_for(table)

    async def start(self, tables: Sequence[Table]) -> None:
        """Connect (metadata round trip) and, with ``create_topics``, create missing topics."""
        self._tables = {t.name: t for t in tables}
        self.producer.start()
        await self.producer.ping()
        if self.settings.create_topics:
            wanted = {self.topic(t.name) for t in tables} | {self.settings.dead_letter_topic}
            await self._create_topics(wanted - await self.producer.topics())
        logger.info(
            "Kafka sink started.",
            extra={
                "component": self.name,
                "component_kind": "sink",
                "bootstrap_servers": self.settings.bootstrap_servers,
                "topics": {t.name: self.topic(t.name) for t in tables},
            },
        )

    async def _create_topics(self, topics: set[str]) -> None:
        if not topics:
            return
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin_conf = {
            k: v
            for k, v in self.settings.producer_config().items()
            if k in ("bootstrap.servers", "client.id")
            or k.startswith(("security.", "sasl.", "ssl."))
        }
        admin = AdminClient(kafka_client_log(admin_conf))
        futures = admin.create_topics(
            [
                NewTopic(t, self.settings.topic_partitions, self.settings.topic_replication_factor)
                for t in sorted(topics)
            ]
        )
        for topic, fut in futures.items():
            try:
                await asyncio.wrap_future(fut)
            except Exception as exc:
                err = exc.args[0] if exc.args else None
                name = getattr(err, "name", lambda: "")()
                if name == "TOPIC_ALREADY_EXISTS":
                    continue
                # a refusal no wait fixes (access, policy, a bad topic config) is about the
                # deployment; timeouts, a broker not yet ready (KRaft answers
                # INVALID_REPLICATION_FACTOR while it is fenced, NOT_CONTROLLER during an
                # election) are retried
                raise SinkRetryableError(
                    f"cannot create topic {topic}: {exc}",
                    sink=self.name,
                    deployment=name in _TOPIC_REFUSALS,
                ) from exc
        logger.info(
            "Kafka topics created.", extra={"component": self.name, "topics": sorted(topics)}
        )

    async def write(self, batch: Batch) -> None:
        """Produce every row of ``batch`` and wait for all delivery reports."""
        if not batch.size or batch.batch_id in self._delivered:
            return
        table = batch.table
        topic = self.topic(table.name)
        encoded = encode_rows(table, batch.rows, self.settings.timestamp_format)
        limit = self.settings.message_max_bytes
        for i, (key, value) in enumerate(encoded):
            size = len(value) + (len(key) if key else 0)
            if size > limit:
                raise SinkRejectedError(
                    f"row {i} encodes to {size} bytes, more than message_max_bytes={limit}",
                    sink=self.name,
                    table=table.name,
                    batch_id=batch.batch_id,
                    status_code="MSG_SIZE_TOO_LARGE",
                )
        done = self._partial.get(batch.batch_id, set())
        todo = [i for i in range(len(encoded)) if i not in done]
        table_header = table.name.encode()
        batch_header = batch.batch_id.encode()
        messages = [
            OutgoingMessage(
                topic,
                encoded[i][1],
                encoded[i][0],
                [
                    ("orbitstream.table", table_header),
                    ("orbitstream.batch_id", batch_header),
                    ("orbitstream.row", str(i).encode()),
                ]
                if self.settings.batch_headers
                else None,
            )
            for i in todo
        ]
        started = time.perf_counter()
        failures = await self.producer.deliver(messages)
        if not failures:
            self._partial.pop(batch.batch_id, None)
            self._remember(batch.batch_id)
            logger.debug(
                "Batch delivered to Kafka.",
                extra={
                    "component": self.name,
                    "table": table.name,
                    "topic": topic,
                    "batch_id": batch.batch_id,
                    "records": len(messages),
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            return
        failed = {todo[f.index] for f in failures}
        self._partial[batch.batch_id] = done | (set(todo) - failed)
        while len(self._partial) > _REMEMBERED_BATCHES:
            self._partial.popitem(last=False)
        raise self._error(failures, table.name, topic, batch.batch_id, len(messages))

    def _remember(self, batch_id: str) -> None:
        self._delivered[batch_id] = None
        while len(self._delivered) > _REMEMBERED_BATCHES:
            self._delivered.popitem(last=False)

    def _error(
        self,
        failures: Sequence[DeliveryFailure],
        table: str,
        topic: str,
        batch_id: str,
        sent: int,
    ) -> SinkRejectedError | SinkRetryableError:
        first = failures[0]
        kinds = {f.kind for f in failures}
        message = (
            f"{len(failures)} of {sent} messages to topic {topic} not delivered: "
            f"{first.name}: {first.reason}"
        )
        if "rejected" in kinds:
            rejected = next(f for f in failures if f.kind == "rejected")
            return SinkRejectedError(
                f"{len(failures)} of {sent} messages to topic {topic} refused: "
                f"{rejected.name}: {rejected.reason}",
                sink=self.name,
                table=table,
                batch_id=batch_id,
                status_code=rejected.name,
            )
        return SinkRetryableError(
            message,
            sink=self.name,
            table=table,
            batch_id=batch_id,
            status_code=first.name,
            deployment=kinds == {"deployment"},
        )

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Send refused rows to ``dead_letter_topic`` (JSON, keyed by table)."""
        if not letters:
            return
        topic = self.settings.dead_letter_topic
        messages = [
            OutgoingMessage(
                topic,
                _encoder.encode(
                    {
                        "time": rfc3339_ns(letter.time_ns),
                        "pipeline": letter.pipeline,
                        "table": letter.table,
                        "batch_id": letter.batch_id,
                        "row": _jsonable(letter.row),
                        "error": letter.error,
                    }
                ),
                letter.table.encode(),
                [("orbitstream.error", letter.error.encode()[:4096])],
            )
            for letter in letters
        ]
        failures = await self.producer.deliver(messages)
        if failures:
            raise self._error(failures, "dead_letters", topic, letters[0].batch_id, len(messages))

    async def ping(self) -> None:
        await self.producer.ping()

    async def close(self) -> None:
        # every write has returned by now: what is still queued was spilled already (a
        # write cancelled at the shutdown deadline), so waiting for a broker is pointless
        await self.producer.close(1.0)


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, str | int | float | bool | dict | list | tuple) or v is None:
            out[k] = v
        else:
            out[k] = str(v)
    return out
