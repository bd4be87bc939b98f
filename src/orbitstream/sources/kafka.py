"""Kafka source: a consumer group whose offsets are committed only once the data is durable.

Messages are cut into **chunks**: consecutive messages of one partition,
``first_offset..last_offset``, with the deterministic key ``"<topic>:<partition>:<first>-<last>"``.
Batch ids downstream derive from (pipeline, table, topic, partition, first, last)
(:meth:`Chunk.batch_id`), so a chunk written again after a crash is dropped by the stores
(ClickHouse dedup token, PostgreSQL ledger). That holds only if a replay cuts exactly the
same chunks, hence:

1. before a chunk is handed on, its boundaries are recorded in a durable
   :class:`ChunkLog` (:class:`TableChunkLog`: a ``kafka_chunks`` table in the store);
2. a reader that (re)gets a partition loads the boundaries recorded from the committed
   offset on and replays them exactly; new chunks are cut after them (by size, bytes
   or linger) and may never overlap them;
3. offsets are committed per partition in offset order, only up to the last chunk whose
   rows are all durable (``Pending.wait()``) and whose undecodable messages were delivered
   to the dead-letter topic (``acks=all``). Chunk n+1 can be in flight while n is not
   yet durable; the commit waits for n.

The handler contract: ``handler(chunk) -> Pending``, synchronous and cheap. ``Pending``
lists the messages that could not be decoded or mapped (with the reason) and resolves
``wait()`` when every row of the chunk is durable. A handler with no room raises
:class:`~orbitstream.errors.BackpressureError` having taken nothing: the partition is
paused, the chunk is offered again after ``retry_after_secs``, and the partition resumes
once it is taken. Any other exception from the handler sends the whole chunk to the
dead-letter topic with that error (never silently dropped, never stopping the stream).

Threads: librdkafka's ``consume()`` blocks, and rebalance callbacks run inside it, so it
runs on a dedicated poll thread; messages are handed to the event loop, where all state
lives. confluent-kafka serializes every call on a consumer with a running ``consume()``
(measured: a ``pause()`` from another thread waits for it, and one made during a
rebalance callback waits for the callback), so only the poll thread touches the consumer:
pause/resume are queued for it, commits run on it between two ``consume()`` calls.
A rebalance callback runs its work on the loop (``run_coroutine_threadsafe``) and blocks
until it is done: on revoke, what is buffered for the revoked partitions is cut, recorded
and handed on, their in-flight chunks get ``revoke_timeout_secs`` to become durable, the
callback commits what is durable, and only then are the partitions given up. ``stop()``
does the same for every partition before leaving the group.

Limits: a reader whose session expired while it kept running (a "zombie") can still
record and hand on chunks the new owner cuts differently; the commit it then attempts
fails (unknown member / illegal generation), but rows it wrote stay written. Lag from
:meth:`KafkaReader.stats` uses librdkafka's cached high watermarks (wrong on Tansu).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orbitstream.core.batch import Ack, Batch
from orbitstream.core.protocols import Sink
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import BackpressureError, ConfigError, SourceError
from orbitstream.logging import kafka_client_log
from orbitstream.sinks.kafka import (
    DEFAULT_DEAD_LETTER_TOPIC,
    AsyncProducer,
    ConfigValue,
    OutgoingMessage,
)

__all__ = [
    "CHUNK_LOG_TABLE",
    "Chunk",
    "ChunkCutter",
    "ChunkLog",
    "DeadLetterHeaders",
    "KafkaMessage",
    "KafkaReader",
    "KafkaSettings",
    "MemoryChunkLog",
    "Pending",
    "TableChunkLog",
    "chunk_log_table",
    "log_topic",
    "topic_incarnation",
]

logger = logging.getLogger(__name__)

Range = tuple[int, int]
TopicPartitionKey = tuple[str, int]


# -- settings -----------------------------------------------------------------------------
class KafkaSettings(BaseModel):
    """Settings of :class:`KafkaReader` (the caller maps ``KAFKA_*`` variables onto them).

    :param bootstrap_servers: ``host:port[,host:port]`` (``KAFKA_BOOTSTRAP`` /
        ``KAFKA_BOOTSTRAP_SERVERS``).
    :param consumer_group: the group id (``KAFKA_CONSUMER_GROUP``).
    :param topics: topics to subscribe to.
    :param dead_letter_topic: where undecodable / unmappable messages go.
    :param chunk_messages: a new chunk is cut at this many messages...
    :param chunk_max_bytes: ...or this many value+key bytes...
    :param linger_secs: ...or when its first message waited this long.
    :param session_timeout_ms: librdkafka ``session.timeout.ms`` (tests: ~6000 on Tansu).
    :param revoke_timeout_secs: on revoke and stop, how long in-flight chunks may take to
        become durable before the partitions are given up uncommitted.
    :param max_waiting_chunks: chunks cut but not yet taken by the handler, per partition,
        before the partition is paused.
    :param poll_messages: most messages one ``consume()`` call returns.
    :param poll_timeout_secs: how long one ``consume()`` call waits.
    :param extra: librdkafka settings for the consumer and the dead-letter producer
        (security, tuning).
    :param consumer_extra: librdkafka settings for the consumer only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    consumer_group: str
    topics: tuple[str, ...]
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    chunk_messages: int = Field(default=10_000, ge=1)
    chunk_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    linger_secs: float = Field(default=1.0, gt=0)
    session_timeout_ms: int = Field(default=45_000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    revoke_timeout_secs: float = Field(default=30.0, ge=0)
    max_waiting_chunks: int = Field(default=2, ge=1)
    poll_messages: int = Field(default=2000, ge=1)
    poll_timeout_secs: float = Field(default=0.1, gt=0)
    client_id: str = "orbitstream"
    extra: dict[str, ConfigValue] = Field(default_factory=dict)
    consumer_extra: dict[str, ConfigValue] = Field(default_factory=dict)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("bootstrap_servers is empty (KAFKA_BOOTSTRAP_SERVERS)")
        return value.strip()

    @field_validator("consumer_group")
    @classmethod
    def _group(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("consumer_group is empty (KAFKA_CONSUMER_GROUP)")
        return value

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(t.strip() for t in value):
            raise ValueError("topics must name at least one topic")
        return value

    def consumer_config(self) -> dict[str, ConfigValue]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.consumer_group,
            "client.id": self.client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": self.auto_offset_reset,
            "session.timeout.ms": self.session_timeout_ms,
            **self.extra,
            **self.consumer_extra,
        }

    def admin_config(self) -> dict[str, ConfigValue]:
        """Connection and security settings for an admin client (topic ids)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": f"{self.client_id}-admin",
            **{
                k: v
                for k, v in self.extra.items()
                if k.startswith(("security.", "sasl.", "ssl.", "socket.", "broker."))
            },
        }

    def producer_config(self) -> dict[str, ConfigValue]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": f"{self.client_id}-dead-letters",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            **self.extra,
        }


def topic_incarnation(
    config: dict[str, ConfigValue], topic: str, timeout_secs: float = 10.0
) -> str:
    """A short hex digest of ``topic``'s topic id (Kafka >= 2.8, KIP-516), which changes
    when the topic is deleted and created again; ``""`` when the broker does not answer
    with one (an older broker, a timeout): chunks then carry no incarnation."""
    try:
        _confluent()
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(kafka_client_log(dict(config)))
        futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_secs)
        description = futures[topic].result(timeout_secs + 1)
        topic_id = str(description.topic_id or "")
    except Exception as exc:  # the source still works; only recreation goes unnoticed
        logger.warning(
            "Kafka topic id unknown; a recreated topic would not be told apart.",
            extra={"component": "kafka", "topic": topic, "error": repr(exc)},
        )
        return ""
    if not topic_id or set(topic_id) <= {"A", "="}:  # no id (all-zero UUID)
        return ""
    return hashlib.sha1(topic_id.encode(), usedforsecurity=False).hexdigest()[:12]


class BrokerState:
    """Whether the consumer reaches a broker, from librdkafka's own reports: its
    statistics (every :attr:`interval_ms`, each broker connection's state) and the
    ``_ALL_BROKERS_DOWN`` error. Both callbacks run on the poll thread; :meth:`report` is
    read from the event loop (plain attribute reads)."""

    def __init__(self, interval_ms: int = 2000) -> None:
        self.interval_ms = interval_ms
        self.up: int | None = None  # brokers whose connection is UP, at the last report
        self.known = 0
        self.down_since: float | None = None  # monotonic time all were found down
        self.last_error: str | None = None

    def watch(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the statistics and error callbacks (a user's own interval
        stands)."""
        out = dict(config)
        out.setdefault("statistics.interval.ms", self.interval_ms)
        out["stats_cb"] = self._on_stats
        out["error_cb"] = self._on_error
        return out

    def _on_stats(self, text: str) -> None:
        try:
            brokers = json.loads(text).get("brokers") or {}
        except ValueError:
            return
        # the bootstrap entries (nodeid -1) stand for the address list, not a broker
        states = [b.get("state") for b in brokers.values() if b.get("nodeid", -1) >= 0]
        if not states:
            states = [b.get("state") for b in brokers.values()]
        self.known = len(states)
        self.up = sum(1 for st in states if st == "UP")
        if self.up:
            if self.down_since is not None:
                logger.info(
                    "Kafka broker reachable again.",
                    extra={"component": "kafka", "down_secs": round(self.down_secs() or 0, 1)},
                )
            self.down_since = None
        elif self.known:
            self._down("all broker connections down")

    def _on_error(self, err: Any) -> None:
        self.last_error = str(err)
        if err.code() == _confluent().KafkaError._ALL_BROKERS_DOWN:
            self.up = 0
            self._down(self.last_error)

    def assume_down(self, since: float, reason: str) -> None:
        """No broker answered another client since ``since`` (monotonic): down from then
        until a statistics report finds one UP."""
        if self.up:
            return
        self.last_error = self.last_error or reason
        if self.down_since is None or since < self.down_since:
            self.down_since = since

    def _down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning(
                "No Kafka broker reachable; consuming waits for one.",
                extra={"component": "kafka", "error": reason},
            )

    def down_secs(self) -> float | None:
        """How long no broker has been reachable, ``None`` while one is."""
        since = self.down_since
        return None if since is None else time.monotonic() - since

    def report(self) -> dict[str, Any]:
        down = self.down_secs()
        return {
            "up": self.up,
            "known": self.known,
            "down_secs": None if down is None else round(down, 1),
            "last_error": self.last_error,
        }


# -- values -------------------------------------------------------------------------------
class KafkaMessage(msgspec.Struct, frozen=True, gc=False):
    """One consumed message. A null value (tombstone) is ``b""``.

    :param timestamp_ms: the message timestamp (create or log-append time), if any.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def timestamp_ns(self) -> int:
        """The message timestamp in epoch nanoseconds (0 when unknown), as mappers'
        :class:`~orbitstream.pipelines.mapping.Position` has it."""
        ts = self.timestamp_ms
        return ts * 1_000_000 if ts is not None and ts > 0 else 0


def log_topic(topic: str, incarnation: str) -> str:
    """``topic@incarnation`` (just ``topic`` without one): how chunk keys and the chunk
    log name a topic."""
    return f"{topic}@{incarnation}" if incarnation else topic


@dataclass(slots=True)
class Chunk:
    """Consecutive messages of one partition.

    ``first_offset``/``last_offset`` are the chunk's boundaries, as recorded: a replayed
    chunk keeps them even if some offsets inside no longer hold a message.

    :param replayed: the boundaries came from the :class:`ChunkLog` (a replay).
    :param incarnation: which topic of that name (:func:`topic_incarnation`): a topic
        deleted and created again, or emptied by a broker that lost its storage, starts its
        offsets at 0 again, and its chunks must get other batch ids than the old topic's
        (the stores would drop them as already written) and must not replay its
        boundaries. ``""`` when the broker does not say (keys without it).
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    messages: list[KafkaMessage]
    replayed: bool = False
    incarnation: str = ""

    @property
    def log_topic(self) -> str:
        """The topic as the chunk log and the keys name it (:func:`log_topic`)."""
        return log_topic(self.topic, self.incarnation)

    @property
    def key(self) -> str:
        return f"{self.log_topic}:{self.partition}:{self.first_offset}-{self.last_offset}"

    @property
    def nbytes(self) -> int:
        return sum(len(m.value) + len(m.key or b"") for m in self.messages)

    def batch_id(self, pipeline: str, table: str) -> str:
        """The deterministic batch id for ``table``'s rows from this chunk."""
        return f"{pipeline}:{table}:{self.key}"


class Pending:
    """What a handler returns for a chunk it took.

    :param dead: messages that cannot be decoded or mapped, with the reason; they go to the
        dead-letter topic.
    :param waits: resolve when the chunk's rows are durable: :class:`~orbitstream.core.batch.Ack`
        objects (what ``Pipeline.submit`` resolves) or futures. None: durable already.
    """

    __slots__ = ("_waits", "dead")

    def __init__(
        self,
        dead: Iterable[tuple[KafkaMessage, str]] = (),
        waits: Iterable[Ack | asyncio.Future[Any]] = (),
    ) -> None:
        self.dead = list(dead)
        self._waits = list(waits)

    async def wait(self) -> None:
        """Resolve when every row of the chunk is durable (raise if that failed)."""
        for w in self._waits:
            if isinstance(w, Ack):
                await w.wait()
            else:
                await asyncio.shield(w)


Handler = Callable[[Chunk], Pending]


class DeadLetterHeaders:
    """Header names on dead-letter messages (values are UTF-8 text). The original key,
    value and headers follow unchanged (the value: one bad point alone, for an array
    message whose other points were stored, with :attr:`ELEMENT`)."""

    ERROR = "orbitstream.error"
    TOPIC = "orbitstream.source.topic"
    PARTITION = "orbitstream.source.partition"
    OFFSET = "orbitstream.source.offset"
    TIMESTAMP = "orbitstream.source.timestamp_ms"
    GROUP = "orbitstream.consumer_group"
    CHUNK = "orbitstream.chunk"
    DROPPED = "orbitstream.value_dropped"
    #: one bad point of an array message whose other points were stored: its index (the
    #: value is that point alone); the source position is then shared by several letters
    ELEMENT = "orbitstream.source.element"


# -- chunk logs ---------------------------------------------------------------------------
class ChunkLog(Protocol):
    """Durable record of chunk boundaries per (group, topic, partition)."""

    async def record(self, group: str, chunks: Sequence[Chunk]) -> None:
        """Persist the boundaries of ``chunks``; raise if they may not be durable."""

    async def load(self, group: str, topic: str, partition: int, from_offset: int) -> list[Range]:
        """``(first, last)`` of recorded chunks with ``last >= from_offset``, in order."""


def _non_overlapping(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, de-duplicated; a range overlapping an earlier one is dropped."""
    out: list[Range] = []
    for first, last in sorted(set(ranges)):
        if first > last:
            continue
        if out and first <= out[-1][1]:
            continue
        out.append((first, last))
    return out


class MemoryChunkLog:
    """A :class:`ChunkLog` in memory (tests; survives a reader, not the process).

    ``fail_next`` makes that many ``record``/``load`` calls raise (fault injection).
    """

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, str, int], set[Range]] = {}
        self.records = 0
        self.fail_next = 0

    def _fault(self) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise OSError("chunk log unavailable (injected)")

    async def record(self, group: str, chunks: Sequence[Chunk]) -> None:
        self._fault()
        for c in chunks:
            self.ranges.setdefault((group, c.log_topic, c.partition), set()).add(
                (c.first_offset, c.last_offset)
            )
        self.records += 1

    async def load(self, group: str, topic: str, partition: int, from_offset: int) -> list[Range]:
        self._fault()
        found = self.ranges.get((group, topic, partition), set())
        return _non_overlapping(r for r in found if r[1] >= from_offset)


CHUNK_LOG_TABLE_NAME = "kafka_chunks"


def chunk_log_table(name: str = CHUNK_LOG_TABLE_NAME, ttl_days: int | None = 30) -> Table:
    """The table a :class:`TableChunkLog` keeps boundaries in (give it to the sink's
    ``start`` with the pipeline's tables)."""
    return Table(
        name=name,
        columns=(
            Column("recorded_at", ColType.TIMESTAMP),
            Column("consumer_group", ColType.STRING, low_cardinality=True),
            Column("topic", ColType.STRING, low_cardinality=True),
            Column("kafka_partition", ColType.INT64),
            Column("first_offset", ColType.INT64),
            Column("last_offset", ColType.INT64),
        ),
        time_column="recorded_at",
        order_by=("consumer_group", "topic", "kafka_partition", "first_offset"),
        ttl_days=ttl_days,
        comment="Kafka source: chunk boundaries, so a replay cuts the same chunks",
    )


CHUNK_LOG_TABLE = chunk_log_table()


class _QueryStore(Protocol):
    async def query(self, sql: str, params: dict[str, object] | None = None) -> Any: ...


class TableChunkLog:
    """A :class:`ChunkLog` in a store table, written through the sink's ``write(Batch)``
    and read back with the store's ``query(sql, params)``.

    The batch id of a ``record`` is a hash of the boundaries, so recording the same chunks
    again (a retry) is deduplicated like any batch.

    :param sink: writes the rows (chDB, ClickHouse, PostgreSQL sinks).
    :param store: answers the read query; the sink itself when omitted.
    :param dialect: ``clickhouse`` (chDB and ClickHouse server) or ``postgres``; guessed
        from ``sink.name`` when omitted.
    :param table: the table declaration (:func:`chunk_log_table`).
    :param qualified_name: the table as the query must name it (a database prefix);
        derived from the sink's ClickHouse dialect when it has one.
    """

    def __init__(
        self,
        sink: Sink,
        store: _QueryStore | None = None,
        *,
        dialect: Literal["clickhouse", "postgres"] | None = None,
        table: Table = CHUNK_LOG_TABLE,
        qualified_name: str | None = None,
    ) -> None:
        self.sink = sink
        self.store: _QueryStore = store if store is not None else _as_store(sink)
        self.dialect = dialect or ("postgres" if sink.name == "postgres" else "clickhouse")
        self.table = table
        if qualified_name is None:
            ch = getattr(sink, "dialect", None)
            name_of = getattr(ch, "name", None)
            if self.dialect == "clickhouse" and callable(name_of):
                qualified_name = str(name_of(table.name))
            elif self.dialect == "clickhouse":
                qualified_name = f"`{table.name}`"
            else:
                qualified_name = '"' + table.name.replace('"', '""') + '"'
        self.qualified_name = qualified_name

    async def record(self, group: str, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        now = time.time_ns()
        rows: list[tuple[object, ...]] = [
            (now, group, c.log_topic, c.partition, c.first_offset, c.last_offset) for c in chunks
        ]
        digest = hashlib.sha1(
            "\n".join([group, *(c.key for c in chunks)]).encode(), usedforsecurity=False
        ).hexdigest()
        await self.sink.write(Batch(self.table, rows, f"{self.table.name}:{digest}"))

    async def load(self, group: str, topic: str, partition: int, from_offset: int) -> list[Range]:
        if self.dialect == "clickhouse":
            sql = (
                f"SELECT DISTINCT first_offset, last_offset FROM {self.qualified_name} "
                "WHERE consumer_group = {group:String} AND topic = {topic:String} "
                "AND kafka_partition = {partition:Int64} AND last_offset >= {offset:Int64} "
                "ORDER BY first_offset, last_offset"
            )
        else:
            sql = (
                f"SELECT DISTINCT first_offset, last_offset FROM {self.qualified_name} "
                "WHERE consumer_group = %(group)s AND topic = %(topic)s "
                "AND kafka_partition = %(partition)s AND last_offset >= %(offset)s "
                "ORDER BY first_offset, last_offset"
            )
        result = await self.store.query(
            sql, {"group": group, "topic": topic, "partition": partition, "offset": from_offset}
        )
        return _non_overlapping((int(r[0]), int(r[1])) for r in result.rows)


def _as_store(sink: Sink) -> _QueryStore:
    if not callable(getattr(sink, "query", None)):
        raise ConfigError(f"sink {sink.name} cannot answer queries: pass store=")
    return sink  # type: ignore[return-value]


# -- cutting --------------------------------------------------------------------------------
class ChunkCutter:
    """Cuts one partition's messages into chunks, replaying recorded boundaries first.

    Pure (no I/O, no clock of its own): unit-testable on offsets.

    :param plan: recorded ``(first, last)`` ranges from the committed offset on, sorted,
        non-overlapping. A message inside a range belongs to that chunk; the chunk is cut
        when its last offset (or anything after it) arrives. New chunks never reach into
        the next recorded range.
    :param incarnation: given to every chunk (:attr:`Chunk.incarnation`).
    """

    __slots__ = (
        "_buf",
        "_bytes",
        "_range",
        "_started",
        "duplicates",
        "incarnation",
        "max_bytes",
        "max_messages",
        "next_offset",
        "partition",
        "plan",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        plan: Iterable[Range] = (),
        *,
        max_messages: int,
        max_bytes: int,
        incarnation: str = "",
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.incarnation = incarnation
        self.plan: deque[Range] = deque(_non_overlapping(plan))
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.next_offset: int | None = None
        self.duplicates = 0
        self._buf: list[KafkaMessage] = []
        self._bytes = 0
        self._started = 0.0
        self._range: Range | None = None  # replaying this recorded range

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def replaying(self) -> bool:
        return self._range is not None or bool(self.plan)

    def add(self, msg: KafkaMessage, now: float) -> list[Chunk]:
        """Take the next message; returns the chunks it completed (in order)."""
        o = msg.offset
        if self.next_offset is not None and o < self.next_offset:
            self.duplicates += 1  # fetched twice (pause/resume, seek): already here
            return []
        self.next_offset = o + 1
        out: list[Chunk] = []
        rng = self._range
        if rng is not None and o > rng[1]:
            out.append(self._cut_replay())
            rng = None
        plan = self.plan
        if rng is None:
            if self._buf and plan and o >= plan[0][0]:
                out.append(self._cut_new())
            while plan and plan[0][1] < o:
                plan.popleft()  # nothing left of it (retention)
            if plan and plan[0][0] <= o:
                self._range = rng = plan.popleft()
        if not self._buf:
            self._started = now
        self._buf.append(msg)
        self._bytes += len(msg.value) + (len(msg.key) if msg.key else 0)
        if rng is not None:
            if o >= rng[1]:
                out.append(self._cut_replay())
        elif (
            len(self._buf) >= self.max_messages
            or self._bytes >= self.max_bytes
            or (plan and o + 1 >= plan[0][0])
        ):
            out.append(self._cut_new())
        return out

    def extend(self, msgs: Iterable[KafkaMessage], now: float) -> list[Chunk]:
        """:meth:`add` for a run of messages (a fast path once no replay is pending)."""
        if self.plan or self._range is not None:
            out: list[Chunk] = []
            for m in msgs:
                out += self.add(m, now)
            return out
        out = []
        nxt = self.next_offset
        buf = self._buf
        nbytes = self._bytes
        max_messages = self.max_messages
        max_bytes = self.max_bytes
        for m in msgs:
            o = m.offset
            if nxt is not None and o < nxt:
                self.duplicates += 1
                continue
            nxt = o + 1
            if not buf:
                self._started = now
            buf.append(m)
            key = m.key
            nbytes += len(m.value) + (len(key) if key else 0)
            if len(buf) >= max_messages or nbytes >= max_bytes:
                out.append(self._chunk(buf[0].offset, buf[-1].offset, buf))
                buf = []
                nbytes = 0
        self._buf = buf
        self._bytes = nbytes
        self.next_offset = nxt
        return out

    def due(self, now: float, linger_secs: float) -> list[Chunk]:
        """The open new chunk if its first message waited ``linger_secs`` (replayed chunks
        are only cut at their recorded end)."""
        if self._buf and self._range is None and now - self._started >= linger_secs:
            return [self._cut_new()]
        return []

    def deadline(self, linger_secs: float) -> float | None:
        if self._buf and self._range is None:
            return self._started + linger_secs
        return None

    def flush(self) -> tuple[list[Chunk], int]:
        """Cut the open new chunk now (revoke, stop). A partly replayed chunk is NOT
        handed on — its recorded boundaries reach further, and the next owner replays
        it whole — so it is dropped; returns ``(chunks, messages dropped)``."""
        if self._range is not None:
            dropped = len(self._buf)
            self._buf, self._bytes, self._range = [], 0, None
            return [], dropped
        if self._buf:
            return [self._cut_new()], 0
        return [], 0

    def _chunk(
        self, first: int, last: int, messages: list[KafkaMessage], replayed: bool = False
    ) -> Chunk:
        return Chunk(self.topic, self.partition, first, last, messages, replayed, self.incarnation)

    def _cut_new(self) -> Chunk:
        buf = self._buf
        chunk = self._chunk(buf[0].offset, buf[-1].offset, buf)
        self._buf, self._bytes = [], 0
        return chunk

    def _cut_replay(self) -> Chunk:
        assert self._range is not None
        first, last = self._range
        chunk = self._chunk(first, last, self._buf, replayed=True)
        self._buf, self._bytes, self._range = [], 0, None
        return chunk


# -- the reader ---------------------------------------------------------------------------
@dataclass(eq=False)
class _InFlight:
    chunk: Chunk
    pending: Pending
    durable: bool = False
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Waiting:
    chunk: Chunk
    recorded: bool


@dataclass(eq=False)
class _Partition:
    topic: str
    partition: int
    cutter: ChunkCutter | None = None
    raw: list[KafkaMessage] = field(default_factory=list)
    waiting: deque[_Waiting] = field(default_factory=deque)
    inflight: deque[_InFlight] = field(default_factory=deque)
    commit_to: int | None = None  # next offset to commit (after the durable prefix)
    committed: int | None = None
    blocked_until: float = 0.0  # handler pushed back: offer again after this
    paused: bool = False
    released: bool = False

    @property
    def key(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    def buffered(self) -> int:
        n = len(self.raw)
        if self.cutter is not None:
            n += self.cutter.buffered
        return n


class KafkaReader:
    """Reads a consumer group and hands chunks to ``handler``; commits what is durable.

    :param settings: connection, group, topics, chunking.
    :param handler: ``handler(chunk) -> Pending``; may raise ``BackpressureError``.
    :param chunk_log: where chunk boundaries are recorded before a chunk is handed on.
    :param retry: backoff for a failing chunk log, dead-letter topic or commit.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        handler: Handler,
        chunk_log: ChunkLog,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.chunk_log = chunk_log
        self.retry = retry or RetryPolicy(base_secs=0.2, max_secs=5.0)
        self.dead_letters = AsyncProducer(settings.producer_config(), name="kafka-dead-letters")
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "chunks",
                "chunks_replayed",
                "dead_letters",
                "commits",
                "backpressure",
                "duplicates_dropped",
                "dropped_not_owned",
                "abandoned_chunks",
                "handler_errors",
            ),
            0,
        )
        self._parts: dict[TopicPartitionKey, _Partition] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Any = None
        self._poll = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        # touched on the poll thread only:
        self._assigned: set[TopicPartitionKey] = set()
        self._high: dict[TopicPartitionKey, int] = {}  # highest offset committed
        self._watermarks_at = 0.0
        # written by the poll thread, read by stats():
        self._watermarks: dict[TopicPartitionKey, int] = {}
        self.brokers = BrokerState()
        self._ops_lock = threading.Lock()
        self._ops: list[tuple[_Partition, bool]] = []  # queued pause (True) / resume
        self._lock = asyncio.Lock()  # cut / record / hand-on rounds, and releases
        self._wake = asyncio.Event()
        self._commit_wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._done = asyncio.Event()
        self._dispatch_done = False
        self._retry_at = 0.0  # chunk log failing: next attempt
        self._failures = 0
        self._incarnations: dict[str, str] = {}  # topic -> incarnation, this assignment
        self._seen_incarnations: dict[str, str] = {}  # the last known, for the warning

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until :meth:`stop`; then hand on, commit and leave the group.

        One-shot: a stopped reader cannot run again.
        """
        ck = _confluent()
        self._loop = loop = asyncio.get_running_loop()
        self._running = True
        try:
            self._consumer = ck.Consumer(
                kafka_client_log(self.brokers.watch(self.settings.consumer_config()))
            )
        except ck.KafkaException as exc:
            self._running = False
            self._done.set()
            raise ConfigError(
                f"invalid Kafka consumer settings: {exc}", setting="KAFKA_BOOTSTRAP_SERVERS"
            ) from exc
        self.dead_letters.start()
        consumer = self._consumer
        await loop.run_in_executor(
            self._poll,
            lambda: consumer.subscribe(
                list(self.settings.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            ),
        )
        logger.info(
            "Kafka reader started.",
            extra={
                "component": "kafka",
                "component_kind": "source",
                "consumer_group": self.settings.consumer_group,
                "topics": list(self.settings.topics),
            },
        )
        dispatcher = asyncio.create_task(self._dispatch_loop(), name="kafka-dispatch")
        committer = asyncio.create_task(self._commit_loop(), name="kafka-commit")
        try:
            while not self._stopping:
                msgs = await loop.run_in_executor(self._poll, self._poll_once)
                if msgs:
                    self._ingest(msgs)
                if dispatcher.done():
                    dispatcher.result()  # a bug in the dispatcher: surface it
        finally:
            await self._shutdown(dispatcher, committer)

    async def stop(self) -> None:
        """Stop consuming; hand on, wait (bounded) and commit what is buffered; leave."""
        self._stopping = True
        if self._running:
            await self._done.wait()

    async def _shutdown(
        self, dispatcher: asyncio.Task[None], committer: asyncio.Task[None]
    ) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            self._dispatch_done = True
            self._wake.set()
            await asyncio.gather(dispatcher, return_exceptions=True)
            keys = list(self._parts)
            offsets = await self._prepare_release(keys, commit=True)
            results = await loop.run_in_executor(self._poll, self._commit_now, offsets)
            await self._finish_release(keys, results, commit=True)
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            consumer = self._consumer
            await loop.run_in_executor(self._poll, consumer.close)
            self._consumer = None
            await self.dead_letters.close()
            logger.info(
                "Kafka reader stopped.",
                extra={"component": "kafka", "consumer_group": self.settings.consumer_group},
            )
        finally:
            self._poll.shutdown(wait=False)
            self._running = False
            self._done.set()

    # -- the poll thread ----------------------------------------------------------------------
    # confluent-kafka serializes every call on a consumer with a running consume(), and a
    # call from another thread during a rebalance callback waits for the callback: so only
    # the poll thread touches the consumer (pause/resume are queued for it, commits run on
    # it between two consume() calls, or inside the revoke callback itself).
    def _poll_once(self) -> list[Any]:
        consumer = self._consumer
        with self._ops_lock:
            ops, self._ops = self._ops, []
        if ops:
            ck = _confluent()
            for p, pause in ops:
                if p.released or p.key not in self._assigned:
                    continue
                tp = [ck.TopicPartition(p.topic, p.partition)]
                try:
                    if pause:
                        consumer.pause(tp)
                    else:
                        consumer.resume(tp)
                except Exception as exc:
                    logger.debug(
                        "Pause or resume failed.",
                        extra={"component": "kafka", "error": repr(exc)},
                    )
        now = time.monotonic()
        if now >= self._watermarks_at:
            self._watermarks_at = now + 5.0
            self._read_watermarks(consumer)
        msgs: list[Any] = consumer.consume(
            self.settings.poll_messages, self.settings.poll_timeout_secs
        )
        return msgs

    def _read_watermarks(self, consumer: Any) -> None:
        ck = _confluent()
        marks: dict[TopicPartitionKey, int] = {}
        for key in list(self._assigned):
            try:
                _low, high = consumer.get_watermark_offsets(ck.TopicPartition(*key), cached=True)
            except Exception:
                continue
            if high is not None and high >= 0:
                marks[key] = int(high)
        self._watermarks = marks

    def _commit_now(
        self, offsets: list[tuple[str, int, int]]
    ) -> list[tuple[str, int, int, str | None]]:
        """Commit on the poll thread; never moves a partition's commit backwards, never
        commits a partition no longer assigned. Returns ``(topic, partition, offset, error)``."""
        todo = [
            (t, p, o)
            for t, p, o in offsets
            if (t, p) in self._assigned and o > self._high.get((t, p), -1)
        ]
        if not todo or self._consumer is None:
            return []
        ck = _confluent()
        try:
            result = self._consumer.commit(
                offsets=[ck.TopicPartition(t, p, o) for t, p, o in todo], asynchronous=False
            )
        except ck.KafkaException as exc:
            return [(t, p, o, str(exc.args[0])) for t, p, o in todo]
        out: list[tuple[str, int, int, str | None]] = []
        for tp in result or []:
            err = None if tp.error is None else str(tp.error)
            if err is None:
                key = (tp.topic, tp.partition)
                self._high[key] = max(self._high.get(key, -1), tp.offset)
            out.append((tp.topic, tp.partition, tp.offset, err))
        return out

    def _run_on_loop(self, coro: Any, timeout: float | None) -> Any:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except Exception as exc:
            fut.cancel()
            logger.error(
                "Rebalance handling failed.",
                extra={"component": "kafka", "error": repr(exc)},
            )
            return None

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._assigned.update(keys)
        self._run_on_loop(self._assign(keys), 30.0)

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        self._give_up([(tp.topic, tp.partition) for tp in partitions], commit=True)

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        self._give_up([(tp.topic, tp.partition) for tp in partitions], commit=False)

    def _give_up(self, keys: list[TopicPartitionKey], *, commit: bool) -> None:
        """Revoke/lost, on the poll thread: the loop drains and waits, this thread commits."""
        results: list[tuple[str, int, int, str | None]] = []
        try:
            offsets = self._run_on_loop(
                self._prepare_release(keys, commit=commit),
                self.settings.revoke_timeout_secs + 30.0,
            )
            if commit and offsets:
                results = self._commit_now(offsets)
        finally:
            self._run_on_loop(self._finish_release(keys, results, commit=commit), 30.0)
            self._assigned.difference_update(keys)
            for key in keys:
                self._high.pop(key, None)

    async def _assign(self, keys: list[TopicPartitionKey]) -> None:
        for topic in {t for t, _ in keys}:
            self._incarnations.pop(topic, None)  # asked again at the first message
        for key in keys:
            stale = self._parts.get(key)
            if stale is not None:  # left over from a revoke that did not finish
                self._forget(stale)
            self._parts[key] = _Partition(*key)
        logger.info(
            "Partitions assigned.",
            extra={"component": "kafka", "partitions": [f"{t}:{p}" for t, p in keys]},
        )

    # -- ingest (loop thread) -----------------------------------------------------------------
    def _ingest(self, msgs: list[Any]) -> None:
        """Turn consumed messages into :class:`KafkaMessage` runs per partition (a batch
        holds long runs of one partition) and feed each run to its partition."""
        now = time.monotonic()
        parts = self._parts
        touched: set[_Partition] = set()
        p: _Partition | None = None
        run: list[KafkaMessage] = []
        dropped = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise SourceError(f"Kafka consumer failed: {err.str()}")
                logger.warning(
                    "Kafka consumer error.", extra={"component": "kafka", "error": err.str()}
                )
                continue
            topic = m.topic()
            partition = m.partition()
            if p is None or partition != p.partition or topic != p.topic:
                if run and p is not None:
                    self._feed(p, run, now)
                run = []
                p = parts.get((topic, partition))
                if p is None or p.released:
                    p = None
                    dropped += 1
                    continue
                touched.add(p)
            ts_type, ts = m.timestamp()
            hdrs = m.headers()
            run.append(
                KafkaMessage(
                    topic,
                    partition,
                    m.offset(),
                    m.key(),
                    m.value() or b"",
                    ts if ts_type else None,
                    tuple(hdrs) if hdrs else (),
                )
            )
        if run and p is not None:
            self._feed(p, run, now)
        self.counters["messages"] += len(msgs) - dropped
        self.counters["dropped_not_owned"] += dropped
        for part in touched:
            self._flow(part)
        self._wake.set()

    def _feed(self, p: _Partition, run: list[KafkaMessage], now: float) -> None:
        if p.cutter is None:
            p.raw.extend(run)
            return
        for chunk in p.cutter.extend(run, now):
            p.waiting.append(_Waiting(chunk, chunk.replayed))

    def _flow(self, p: _Partition) -> None:
        """Pause a partition that has too much not yet taken, resume it when it drained."""
        s = self.settings
        # (a cutter bounds its own buffer; raw messages pile up only while the replay
        # plan is not loaded yet)
        full = (
            len(p.waiting) >= s.max_waiting_chunks
            or (p.cutter is None and len(p.raw) >= s.chunk_messages)
            or p.blocked_until > 0
        )
        if full and not p.paused:
            self._pause(p, True)
        elif not full and p.paused:
            self._pause(p, False)

    def _pause(self, p: _Partition, pause: bool) -> None:
        """Queue a pause or resume for the poll thread (applied before its next consume)."""
        if p.released:
            return
        with self._ops_lock:
            self._ops.append((p, pause))
        p.paused = pause
        logger.debug(
            "Partition paused." if pause else "Partition resumed.",
            extra={"component": "kafka", "partition": f"{p.topic}:{p.partition}"},
        )

    # -- dispatch (loop thread) -----------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        """Rounds on new messages, linger deadlines and retry times, until shutdown.

        It waits on an event with a timer rather than ``asyncio.wait_for``: on Python 3.11
        a cancel that lands while ``wait_for`` times out can be swallowed (measured: the
        reader hung at shutdown), so shutdown asks this loop to end instead of cancelling.
        """
        assert self._loop is not None
        while not self._dispatch_done:
            timeout = self._next_deadline() - time.monotonic()
            if timeout > 0:
                timer = self._loop.call_later(timeout, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            self._wake.clear()
            if self._dispatch_done:
                return
            async with self._lock:
                await self._round(final=False)

    def _next_deadline(self) -> float:
        now = time.monotonic()
        linger = self.settings.linger_secs
        soonest = now + linger
        for p in self._parts.values():
            if p.cutter is not None:
                d = p.cutter.deadline(linger)
                if d is not None:
                    soonest = min(soonest, d)
            if p.blocked_until > 0:
                soonest = min(soonest, p.blocked_until)
            elif p.raw:
                soonest = min(soonest, max(now, self._retry_at))
        return soonest

    async def _round(self, *, final: bool, only: set[TopicPartitionKey] | None = None) -> None:
        """One pass: load replay plans, cut due chunks, record new ones, hand them on."""
        parts = [
            p for p in self._parts.values() if not p.released and (only is None or p.key in only)
        ]
        now = time.monotonic()
        if now < self._retry_at and not final:
            return
        try:
            await self._load_plans(parts)
        except Exception as exc:
            self._log_failure("Chunk log could not be read; retrying.", exc)
            return
        now = time.monotonic()
        for p in parts:
            if p.cutter is None:
                continue
            if final:
                chunks, dropped = p.cutter.flush()
                if dropped:
                    logger.info(
                        "Partly replayed chunk left for the next owner.",
                        extra={
                            "component": "kafka",
                            "partition": f"{p.topic}:{p.partition}",
                            "records": dropped,
                        },
                    )
            else:
                chunks = p.cutter.due(now, self.settings.linger_secs)
            p.waiting.extend(_Waiting(c, c.replayed) for c in chunks)
        new = [w for p in parts for w in p.waiting if not w.recorded]
        if new:
            try:
                await self.chunk_log.record(self.settings.consumer_group, [w.chunk for w in new])
            except Exception as exc:
                self._log_failure("Chunk boundaries could not be recorded; retrying.", exc)
                return
            for w in new:
                w.recorded = True
        self._failures = 0
        self._retry_at = 0.0
        for p in parts:
            self._hand_on(p)
            self._flow(p)

    async def _load_plans(self, parts: list[_Partition]) -> None:
        group = self.settings.consumer_group
        for p in parts:
            if p.cutter is not None or not p.raw:
                continue
            incarnation = await self._incarnation(p.topic)
            plan = await self.chunk_log.load(
                group, log_topic(p.topic, incarnation), p.partition, p.raw[0].offset
            )
            if p.released:
                continue
            cutter = ChunkCutter(
                p.topic,
                p.partition,
                plan,
                max_messages=self.settings.chunk_messages,
                max_bytes=self.settings.chunk_max_bytes,
                incarnation=incarnation,
            )
            now = time.monotonic()
            raw, p.raw = p.raw, []
            for msg in raw:
                for chunk in cutter.add(msg, now):
                    p.waiting.append(_Waiting(chunk, chunk.replayed))
            p.cutter = cutter
            if plan:
                logger.info(
                    "Replaying recorded chunk boundaries.",
                    extra={
                        "component": "kafka",
                        "partition": f"{p.topic}:{p.partition}",
                        "chunks": len(plan),
                        "first_offset": plan[0][0],
                    },
                )

    async def _incarnation(self, topic: str) -> str:
        """:func:`topic_incarnation` of ``topic``, asked once per assignment (a rebalance
        asks again: a recreated topic comes back with a new id). A topic whose id changed
        since this reader last saw it is logged: its offsets started again."""
        known = self._incarnations.get(topic)
        if known is not None:
            return known
        found = await asyncio.to_thread(topic_incarnation, self.settings.admin_config(), topic)
        before = self._seen_incarnations.get(topic)
        if found and before and before != found:
            logger.warning(
                "Kafka topic recreated: its offsets start again; chunks get new batch ids.",
                extra={"component": "kafka", "topic": topic, "was": before, "now": found},
            )
        if found:
            self._seen_incarnations[topic] = found
        self._incarnations[topic] = found
        return found

    def _log_failure(self, message: str, exc: BaseException) -> None:
        self._failures += 1
        delay = self.retry.delay(self._failures)
        self._retry_at = time.monotonic() + delay
        logger.warning(
            message,
            extra={
                "component": "kafka",
                "attempt": self._failures,
                "retry_in_secs": round(delay, 3),
                "error": repr(exc),
            },
        )
        self._wake_later(delay)

    def _wake_later(self, delay: float) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, self._wake.set)

    def _hand_on(self, p: _Partition) -> None:
        """Offer the recorded waiting chunks of ``p`` to the handler, in order."""
        now = time.monotonic()
        if p.blocked_until > now:
            return
        p.blocked_until = 0.0
        while p.waiting and p.waiting[0].recorded:
            chunk = p.waiting[0].chunk
            try:
                pending = self.handler(chunk)
            except BackpressureError as exc:
                delay = max(0.01, min(exc.retry_after_secs, 5.0))
                p.blocked_until = now + delay
                self.counters["backpressure"] += 1
                self._wake_later(delay)
                logger.debug(
                    "Handler has no room; partition paused.",
                    extra={
                        "component": "kafka",
                        "partition": f"{p.topic}:{p.partition}",
                        "retry_in_secs": delay,
                    },
                )
                return
            except Exception as exc:
                self.counters["handler_errors"] += 1
                logger.error(
                    "Handler failed; chunk sent to dead letters.",
                    extra={"component": "kafka", "chunk": chunk.key, "error": repr(exc)},
                )
                pending = Pending(dead=[(m, f"handler error: {exc!r}") for m in chunk.messages])
            p.waiting.popleft()
            entry = _InFlight(chunk, pending)
            entry.task = asyncio.create_task(self._settle(p, entry), name=f"kafka:{chunk.key}")
            p.inflight.append(entry)
            self.counters["chunks_replayed" if chunk.replayed else "chunks"] += 1

    async def _settle(self, p: _Partition, entry: _InFlight) -> None:
        """Dead letters delivered and rows durable → the chunk may be committed."""
        chunk = entry.chunk
        if entry.pending.dead:
            await self._deliver_dead(chunk, entry.pending.dead)
        attempt = 0
        while True:
            try:
                await entry.pending.wait()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                delay = self.retry.delay(attempt)
                logger.warning(
                    "Chunk not durable; handing it on again.",
                    extra={
                        "component": "kafka",
                        "chunk": chunk.key,
                        "attempt": attempt,
                        "retry_in_secs": round(delay, 3),
                        "error": repr(exc),
                    },
                )
                await asyncio.sleep(delay)
                entry.pending = await self._offer_again(chunk)
        entry.durable = True
        self._commit_wake.set()

    async def _offer_again(self, chunk: Chunk) -> Pending:
        while True:
            try:
                pending = self.handler(chunk)
            except BackpressureError as exc:
                await asyncio.sleep(max(0.01, min(exc.retry_after_secs, 5.0)))
                continue
            return Pending(waits=pending._waits)  # dead letters went out the first time

    async def _deliver_dead(self, chunk: Chunk, dead: list[tuple[KafkaMessage, str]]) -> None:
        group = self.settings.consumer_group.encode()
        messages = [
            _dead_letter(self.settings.dead_letter_topic, m, why, group, chunk.key)
            for m, why in dead
        ]
        attempt = 0
        while messages:
            failures = await self.dead_letters.deliver(messages)
            if not failures:
                break
            attempt += 1
            retry = []
            for f in failures:
                msg = messages[f.index]
                if f.name == "MSG_SIZE_TOO_LARGE" and msg.value:
                    # too large for the dead-letter topic: keep the headers, say so
                    msg = OutgoingMessage(
                        msg.topic,
                        b"",
                        msg.key,
                        [
                            *(msg.headers or ()),
                            (
                                DeadLetterHeaders.DROPPED,
                                f"{f.name}: {len(msg.value)} bytes".encode(),
                            ),
                        ],
                    )
                retry.append(msg)
            delay = self.retry.delay(attempt)
            logger.warning(
                "Dead letters not delivered; retrying.",
                extra={
                    "component": "kafka",
                    "chunk": chunk.key,
                    "records": len(retry),
                    "attempt": attempt,
                    "retry_in_secs": round(delay, 3),
                    "error": f"{failures[0].name}: {failures[0].reason}",
                },
            )
            messages = retry
            await asyncio.sleep(delay)
        self.counters["dead_letters"] += len(dead)
        logger.info(
            "Messages sent to the dead-letter topic.",
            extra={
                "component": "kafka",
                "chunk": chunk.key,
                "records": len(dead),
                "topic": self.settings.dead_letter_topic,
                "error": dead[0][1],
            },
        )

    # -- commits -------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            if not await self._commit():
                await asyncio.sleep(self.retry.delay(1))
                self._commit_wake.set()

    def _durable_offsets(self, only: set[TopicPartitionKey] | None) -> list[tuple[str, int, int]]:
        """Advance each partition past its durable prefix; the offsets not yet committed."""
        out: list[tuple[str, int, int]] = []
        for p in self._parts.values():
            if only is not None and p.key not in only:
                continue
            while p.inflight and p.inflight[0].durable:
                p.commit_to = p.inflight.popleft().chunk.last_offset + 1
            if p.commit_to is not None and p.commit_to != p.committed:
                out.append((p.topic, p.partition, p.commit_to))
        return out

    async def _commit(self) -> bool:
        """Commit the durable prefix of every partition; False if a commit failed."""
        # No lock held across the wait: during a revoke the poll thread runs this only
        # after the callback, and then skips the partitions it gave up.
        offsets = self._durable_offsets(None)
        if not offsets or self._consumer is None or self._stopping:
            return True
        assert self._loop is not None
        results = await self._loop.run_in_executor(self._poll, self._commit_now, offsets)
        return self._apply_commits(results)

    def _apply_commits(self, results: list[tuple[str, int, int, str | None]]) -> bool:
        ok = True
        for topic, partition, offset, err in results:
            if err is not None:
                ok = False
                logger.warning(
                    "Offset commit failed.",
                    extra={
                        "component": "kafka",
                        "partition": f"{topic}:{partition}",
                        "offset": offset,
                        "error": err,
                    },
                )
                continue
            p = self._parts.get((topic, partition))
            if p is not None:
                p.committed = offset
        if results:
            self.counters["commits"] += 1
            logger.debug(
                "Offsets committed.",
                extra={
                    "component": "kafka",
                    "offsets": {f"{t}:{p}": o for t, p, o, e in results if e is None},
                },
            )
        return ok

    # -- revoke and stop --------------------------------------------------------------------
    async def _prepare_release(
        self, keys: list[TopicPartitionKey], *, commit: bool
    ) -> list[tuple[str, int, int]]:
        """Hand on what is buffered for ``keys``, wait (bounded) for durability; the
        offsets to commit before the partitions are given up."""
        deadline = time.monotonic() + self.settings.revoke_timeout_secs
        wanted = {k for k in keys if k in self._parts}
        if not wanted:
            return []
        async with self._lock:
            if commit:
                await self._drain(wanted, deadline)
            for k in wanted:
                self._parts[k].released = True
        if not commit:
            return []
        parts = [self._parts[k] for k in wanted if k in self._parts]
        tasks = [e.task for p in parts for e in p.inflight if e.task is not None]
        remaining = deadline - time.monotonic()
        if tasks and remaining > 0:
            await asyncio.wait(tasks, timeout=remaining)
        return self._durable_offsets(wanted)

    async def _finish_release(
        self,
        keys: list[TopicPartitionKey],
        results: list[tuple[str, int, int, str | None]],
        *,
        commit: bool,
    ) -> None:
        self._apply_commits(results)
        parts = [self._parts[k] for k in keys if k in self._parts]
        abandoned = 0
        for p in parts:
            abandoned += len(p.inflight) + len(p.waiting)
            self._forget(p)
        if not parts:
            return
        self.counters["abandoned_chunks"] += abandoned
        logger.info(
            "Partitions released.",
            extra={
                "component": "kafka",
                "partitions": {f"{p.topic}:{p.partition}": p.committed for p in parts},
                "chunks_not_durable": abandoned,
                "committed": commit,
            },
        )

    def _forget(self, p: _Partition) -> None:
        p.released = True
        for e in p.inflight:
            if e.task is not None:
                e.task.cancel()
        if self._parts.get(p.key) is p:
            del self._parts[p.key]

    async def _drain(self, wanted: set[TopicPartitionKey], deadline: float) -> None:
        """Cut, record and hand on everything buffered for ``wanted`` (until ``deadline``)."""
        while True:
            self._retry_at = 0.0
            await self._round(final=True, only=wanted)
            parts = [self._parts[k] for k in wanted if k in self._parts]
            left = [p for p in parts if p.waiting or p.raw]
            now = time.monotonic()
            if not left or now >= deadline:
                return
            wake = min([p.blocked_until for p in left if p.blocked_until > now] or [now + 0.05])
            await asyncio.sleep(max(0.0, min(wake, deadline) - now))

    # -- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and per-partition state. ``lag`` comes from librdkafka's cached high
        watermarks (refreshed every 5 s; wrong on brokers that report them wrong, such as
        Tansu)."""
        parts: dict[str, Any] = {}
        marks = self._watermarks
        for p in self._parts.values():
            nxt = p.cutter.next_offset if p.cutter else None
            high = marks.get(p.key)
            parts[f"{p.topic}:{p.partition}"] = {
                "committed": p.committed,
                "next_offset": nxt,
                "buffered": p.buffered(),
                "waiting_chunks": len(p.waiting),
                "inflight_chunks": len(p.inflight),
                "paused": p.paused,
                "lag": None if high is None or nxt is None else max(0, high - nxt),
            }
        return {**self.counters, "partitions": parts, "brokers": self.brokers.report()}

    def assignment(self) -> list[TopicPartitionKey]:
        return sorted(self._parts)


def _dead_letter(
    topic: str, m: KafkaMessage, reason: str, group: bytes, chunk: str
) -> OutgoingMessage:
    headers: list[tuple[str, bytes]] = [
        (DeadLetterHeaders.ERROR, reason.encode()[:8192]),
        (DeadLetterHeaders.TOPIC, m.topic.encode()),
        (DeadLetterHeaders.PARTITION, str(m.partition).encode()),
        (DeadLetterHeaders.OFFSET, str(m.offset).encode()),
        (DeadLetterHeaders.GROUP, group),
        (DeadLetterHeaders.CHUNK, chunk.encode()),
    ]
    if m.timestamp_ms is not None:
        headers.append((DeadLetterHeaders.TIMESTAMP, str(m.timestamp_ms).encode()))
    headers.extend((k, v if v is not None else b"") for k, v in m.headers)
    return OutgoingMessage(topic, m.value, m.key, headers)


def _confluent() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "the Kafka source needs the kafka extra: pip install 'orbitstream[kafka]'",
            setting="KAFKA_BOOTSTRAP_SERVERS",
        ) from exc
    return confluent_kafka
