"""The ``kafka`` source type: a pipeline fed by a Kafka consumer group.

It wraps :class:`~orbitstream.sources.kafka.KafkaReader`. Each chunk (consecutive
messages of one partition) is mapped by the pipeline's handler — a
:class:`KafkaMapping`: ``map_chunk`` → rows per table and dead records — and submitted
keyed by the chunk (``<pipeline>:<table>:<topic>:<partition>:<first>-<last>``, so a
chunk replayed after a crash is de-duplicated by the stores) with an :class:`Ack`. The
reader commits a chunk's offsets only when that ack resolved with every row committed in
every sink (a spill at shutdown does not count); then the mapper's state advances
(``commit``). A sink pushing back (``BackpressureError``) pauses the partition and the
chunk is offered again; messages that cannot be decoded or mapped go to the dead-letter
topic with headers naming the error, topic, partition and offset.

Settings: the brokers and consumer tuning from the ``kafka`` section
(``KAFKA_BOOTSTRAP_SERVERS`` / ``KAFKA_BOOTSTRAP``); topic, group and dead-letter topic
from the pipeline's settings (:class:`KafkaPipelineSettings`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgspec
from pydantic import Field

from orbitstream.core.batch import Ack
from orbitstream.core.protocols import SourceContext, Store
from orbitstream.core.registry import SourceType
from orbitstream.core.spec import PipelineBuild, PipelineSettings
from orbitstream.core.tables import Table
from orbitstream.errors import BackpressureError, ConfigError, SourceError
from orbitstream.pipelines.mapping import DeadRecord, MapResult, Message
from orbitstream.settings import Settings, env
from orbitstream.sources.kafka import (
    CHUNK_LOG_TABLE_NAME,
    Chunk,
    DeadLetterHeaders,
    KafkaMessage,
    KafkaReader,
    KafkaSettings,
    Pending,
    TableChunkLog,
    chunk_log_table,
)

__all__ = [
    "SOURCE",
    "KafkaHandler",
    "KafkaMapping",
    "KafkaPipelineSettings",
    "KafkaSource",
    "kafka_settings",
]

logger = logging.getLogger(__name__)

BROKER_DOWN_UNHEALTHY_SECS = 5.0
"""``/health`` reports the pipeline unhealthy once no broker was reachable this long (a
broker restart or a leader move is shorter)."""
MAX_PATH_LABELS = 64
"""Distinct ``path`` labels of ``orbitstream_unmapped_paths_total`` per source."""


class KafkaPipelineSettings(PipelineSettings):
    """Settings of a pipeline that can run on the ``kafka`` source. Pipelines redeclare
    the fields with their own defaults and seed variables.

    :param kafka_topic: the topic consumed.
    :param consumer_group: the consumer group (``KAFKA_CONSUMER_GROUP``).
    :param dead_letter_topic: where undecodable messages go (default
        ``<pipeline>-dead-letters``).
    """

    kafka_topic: str = Field("", min_length=0)
    consumer_group: str = Field("", validation_alias=env("KAFKA_CONSUMER_GROUP"))
    dead_letter_topic: str = ""


@runtime_checkable
class KafkaMapping(Protocol):
    """What the ``kafka`` source takes as its handler (a pipeline's mapper).

    ``map_chunk`` sees the committed state plus results not yet committed; ``commit`` is
    called once a result's rows are durable in every sink, ``discard`` when a result was
    not taken (backpressure: the chunk is mapped again later), ``rollback`` when a
    partition rewinds (its uncommitted results are forgotten).
    """

    def map_chunk(self, messages: Iterable[Message]) -> MapResult: ...

    def commit(self, result: MapResult) -> None: ...

    def discard(self, result: MapResult) -> None: ...

    def rollback(self, topic: str | None = None, partition: int | None = None) -> int: ...


Restore = Callable[[Store, Mapping[str, Table]], Awaitable[None]]
OnDead = Callable[[DeadRecord], None]


@dataclass(frozen=True, slots=True)
class KafkaHandler:
    """A mapping with the hooks around it (what a pipeline's build hands the source).

    :param restore: reads the mapper's state back from the primary store at start.
    :param on_dead: called for every dead record (alerts).
    :param on_stop: called once the reader stopped (flush alerts).
    """

    mapping: KafkaMapping
    restore: Restore | None = None
    on_dead: OnDead | None = None
    on_stop: Callable[[], None] | None = None


def kafka_settings(build: PipelineBuild, *, topic: str | None = None) -> KafkaSettings:
    """The reader's settings for the pipeline of ``build``.

    :raises ConfigError: no brokers, or no topic.
    """
    k = build.settings.kafka
    own = build.own
    name = build.spec.name
    topic = topic or str(getattr(own, "kafka_topic", "") or "")
    if not topic:
        raise ConfigError(
            f"pipeline {name} has no Kafka topic (ORBITSTREAM_{name.upper()}__KAFKA_TOPIC)",
            setting=f"ORBITSTREAM_{name.upper()}__KAFKA_TOPIC",
        )
    group = str(getattr(own, "consumer_group", "") or "") or f"orbitstream-{name}"
    dead = str(getattr(own, "dead_letter_topic", "") or "") or f"{name}-dead-letters"
    return KafkaSettings(
        bootstrap_servers=k.servers(),
        consumer_group=group,
        topics=(topic,),
        dead_letter_topic=dead,
        chunk_messages=k.chunk_messages,
        linger_secs=k.linger_secs,
        session_timeout_ms=k.session_timeout_ms,
        auto_offset_reset=k.auto_offset_reset,
        revoke_timeout_secs=k.revoke_timeout_secs,
        client_id=f"orbitstream-{name}",
    )


def _qualified(store: Store, table: Table) -> str:
    if store.query_dialect == "postgres":
        parts = [table.namespace, table.name] if table.namespace else [table.name]
        return ".".join('"' + p.replace('"', '""') + '"' for p in parts)
    parts = [table.namespace, table.name] if table.namespace else [table.name]
    return ".".join("`" + p.replace("`", "``") + "`" for p in parts)


class KafkaSource:
    """One pipeline's consumer group member.

    :param mapping: the pipeline's mapper (:class:`KafkaMapping`).
    :param restore: reads the mapper's state back from the store at start.
    :param on_dead: called for every dead record (alerts), after it is counted.
    :param create_topics: create the topic and the dead-letter topic when missing.
    :param on_stop: called (in a thread) once the reader stopped: flush alerts.
    """

    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        mapping: KafkaMapping,
        *,
        restore: Restore | None = None,
        on_dead: OnDead | None = None,
        create_topics: bool = True,
        topic_partitions: int = 4,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.restore = restore
        self.on_dead = on_dead
        self.create_topics = create_topics
        self.topic_partitions = topic_partitions
        self.on_stop = on_stop
        self.reader: KafkaReader | None = None
        self._ctx: SourceContext | None = None
        self._next: dict[tuple[str, int], int] = {}
        self._rows_per_message = 1.0
        self._stopping = threading.Event()
        self.counters = {
            "messages": 0,
            "rows": 0,
            "dead": 0,
            "ignored": 0,
            "unmapped_paths": 0,
            "backpressure": 0,
            "rewinds": 0,
        }
        self._path_labels: set[str] = set()
        self._creating_since: float | None = None  # monotonic start of topic creation

    async def start(self, ctx: SourceContext) -> None:
        self._ctx = ctx
        table = ctx.tables.get(CHUNK_LOG_TABLE_NAME)
        if table is None:  # pragma: no cover - the source type declares it
            raise ConfigError("the kafka source needs its chunk log table", setting="--source")
        log = TableChunkLog(
            ctx.store,
            dialect=ctx.store.query_dialect,
            table=table,
            qualified_name=_qualified(ctx.store, table),
        )
        if self.restore is not None:
            await self.restore(ctx.store, ctx.tables)
        self.reader = KafkaReader(self.settings, self._handle, log)
        ctx.on_health(self._health)

    def _ensure_topics(self) -> bool:
        """Create the topics; ``False`` when the broker did not answer."""
        from orbitstream.simulate.publisher import ensure_topics

        s = self.settings
        created = ensure_topics(
            s.bootstrap_servers,
            (*s.topics, s.dead_letter_topic),
            self.topic_partitions,
            stop=self._stopping,
        )
        for topic, outcome in created.items():
            if outcome.error is not None:
                logger.warning(
                    "Kafka topic could not be created.",
                    extra={"component": "kafka", "topic": topic, "error": str(outcome.error)},
                )
        return all(outcome.answered for outcome in created.values())

    async def run(self) -> None:
        assert self.reader is not None, "start() first"
        if self.create_topics:
            # here, not in start(): with no broker reachable this waits for its timeout
            # per topic, and /health, /metrics (PORT) must be served meanwhile
            since = self._creating_since = time.monotonic()
            try:
                answered = await asyncio.to_thread(self._ensure_topics)
            finally:
                self._creating_since = None
            if not answered:  # down since then, until the consumer reaches a broker
                self.reader.brokers.assume_down(since, "creating the topics got no answer")
        await self.reader.run()

    async def stop(self, timeout_secs: float) -> None:
        self._stopping.set()  # ends a wait for topics to be created
        if self.reader is not None:
            await self.reader.stop()
        if self.on_stop is not None:
            await asyncio.to_thread(self.on_stop)

    def _health(self) -> dict[str, object]:
        out: dict[str, object] = {
            "topics": list(self.settings.topics),
            "consumer_group": self.settings.consumer_group,
            **self.counters,
        }
        creating = self._creating_since
        if creating is not None and time.monotonic() - creating >= BROKER_DOWN_UNHEALTHY_SECS:
            # the consumer is not started yet; the admin request is what waits
            out["healthy"] = False
            out["problem"] = (
                f"no Kafka broker reachable for {time.monotonic() - creating:.0f} s "
                f"(KAFKA_BOOTSTRAP_SERVERS={self.settings.bootstrap_servers}): "
                "creating the topics got no answer"
            )
            return out
        if self.reader is not None:
            stats = self.reader.stats()
            out["commits"] = stats["commits"]
            out["dead_letters"] = stats["dead_letters"]
            brokers = stats["brokers"]
            out["brokers"] = brokers
            down = brokers["down_secs"]
            if down is not None and down >= BROKER_DOWN_UNHEALTHY_SECS:
                out["healthy"] = False
                out["problem"] = (
                    f"no Kafka broker reachable for {down:.0f} s "
                    f"(KAFKA_BOOTSTRAP_SERVERS={self.settings.bootstrap_servers}): "
                    f"{brokers['last_error'] or 'all broker connections down'}"
                )
            out["partitions"] = {
                k: {"committed": v["committed"], "next_offset": v["next_offset"]}
                for k, v in stats["partitions"].items()
            }
        return out

    # -- the reader's handler ----------------------------------------------------------
    def _handle(self, chunk: Chunk) -> Pending:
        ctx = self._ctx
        assert ctx is not None
        key = (chunk.topic, chunk.partition)
        expected = self._next.get(key)
        if expected is not None and chunk.first_offset < expected:
            # a rewind (revoke and re-assign, a chunk offered again): forget what the
            # mapper holds of this partition beyond its committed state
            self.counters["rewinds"] += 1
            self.mapping.rollback(chunk.topic, chunk.partition)
        # refuse before mapping when the chunk would not fit by the rows per message seen
        # so far: under backpressure a chunk is offered again every few tens of ms, and
        # mapping it each time (a large network chunk: a second of CPU) starves the loop
        guess = int(len(chunk.messages) * self._rows_per_message)
        if guess and not ctx.has_room(guess):
            self.counters["backpressure"] += 1
            raise BackpressureError("pipeline buffers full", retry_after_secs=0.05)
        result = self.mapping.map_chunk(chunk.messages)
        rows = {t: r for t, r in result.rows.items() if len(r)}  # tuples or a record batch
        n = sum(len(r) for r in rows.values())
        if chunk.messages:
            self._rows_per_message = n / len(chunk.messages)
        ack: Ack | None = None
        if n:
            if not ctx.has_room(n):
                self.mapping.discard(result)
                self.counters["backpressure"] += 1
                raise BackpressureError("pipeline buffers full", retry_after_secs=0.05)
            ack = Ack()
            try:
                ctx.submit(rows, ack, key=chunk.key)
            except BackpressureError:
                self.mapping.discard(result)
                self.counters["backpressure"] += 1
                raise
        self._next[key] = chunk.last_offset + 1
        self.counters["messages"] += len(chunk.messages)
        self.counters["rows"] += n
        dead = self._dead(chunk, result.dead)
        self._count(ctx, len(chunk.messages), result.dead, result.partial)
        self._count_unmapped(ctx, result)
        if ack is None:
            self.mapping.commit(result)
            return Pending(dead=dead)
        fut = asyncio.ensure_future(self._durable(ack, result))
        # at shutdown nobody may be left waiting on it: the spill is logged already
        fut.add_done_callback(_retrieve)
        return Pending(dead=dead, waits=[fut])

    async def _durable(self, ack: Ack, result: MapResult) -> None:
        await ack.wait()
        if ack.spilled:
            raise SourceError(f"rows not written before shutdown: {ack.spilled}")
        self.mapping.commit(result)

    @staticmethod
    def _count(ctx: SourceContext, messages: int, dead: list[DeadRecord], partial: int) -> None:
        """``/metrics``: messages received, accepted (some or all of their rows taken, or
        nothing to take) and rejected (dead-lettered whole): received = accepted +
        rejected. ``source_errors{kind}`` counts the dead records: a whole message, or
        one bad point of an array whose others were taken (``partial`` such messages)."""
        labels = (ctx.pipeline,)
        ctx.metrics.inc("received", labels, messages)
        wholly_dead = len({(d.position.partition, d.position.offset) for d in dead}) - partial
        ctx.metrics.inc("accepted", labels, messages - wholly_dead)
        if wholly_dead:
            ctx.metrics.inc("rejected", labels, wholly_dead)
        for kind, n in collections.Counter(rec.kind for rec in dead).items():
            ctx.metrics.inc("source_errors", (ctx.pipeline, kind), n)

    def _count_unmapped(self, ctx: SourceContext, result: MapResult) -> None:
        """Tolerated input: messages with nothing to map and path updates of paths the
        mapper does not know (a real device sends many more than the documented ones).
        ``/metrics`` labels the first :data:`MAX_PATH_LABELS` paths seen by name and the
        rest ``other``: the paths come from the input, the label set must stay bounded."""
        if result.ignored:
            self.counters["ignored"] += result.ignored
            ctx.metrics.inc("ignored_messages", (ctx.pipeline,), result.ignored)
        for path, n in result.unknown_paths.items():
            self.counters["unmapped_paths"] += n
            label = path[:200]
            if label not in self._path_labels:
                if len(self._path_labels) < MAX_PATH_LABELS:
                    self._path_labels.add(label)
                else:
                    label = "other"
            ctx.metrics.inc("unmapped_paths", (ctx.pipeline, label), n)

    def _dead(self, chunk: Chunk, records: list[DeadRecord]) -> list[tuple[KafkaMessage, str]]:
        if not records:
            return []
        by_offset: dict[int, KafkaMessage] | None = None
        out: list[tuple[KafkaMessage, str]] = []
        for rec in records:
            msg = rec.position
            if not isinstance(msg, KafkaMessage):
                if by_offset is None:
                    by_offset = {m.offset: m for m in chunk.messages}
                found = by_offset.get(rec.position.offset)
                if found is None:  # pragma: no cover - mappers keep the position
                    continue
                msg = found
            if rec.element is not None:  # one point of the message: it alone, and its index
                msg = msgspec.structs.replace(
                    msg,
                    value=rec.value,
                    headers=((DeadLetterHeaders.ELEMENT, str(rec.element).encode()), *msg.headers),
                )
            out.append((msg, f"{rec.kind}: {rec.reason}"))
            if self.on_dead is not None:
                try:
                    self.on_dead(rec)
                except Exception as exc:  # alerting must not stop the stream
                    logger.warning("Dead-record callback failed.", extra={"error": repr(exc)})
        self.counters["dead"] += len(out)
        return out


def _create(build: PipelineBuild, handler: Any) -> KafkaSource:
    """``handler``: a :class:`KafkaMapping`, or a :class:`KafkaHandler` around one."""
    restore: Restore | None = None
    on_dead: OnDead | None = None
    on_stop: Callable[[], None] | None = None
    if isinstance(handler, KafkaHandler):
        handler, restore, on_dead, on_stop = (
            handler.mapping,
            handler.restore,
            handler.on_dead,
            handler.on_stop,
        )
    if not isinstance(handler, KafkaMapping):
        raise TypeError(f"the kafka source needs a KafkaMapping, got {type(handler).__name__}")
    return KafkaSource(
        kafka_settings(build),
        handler,
        restore=restore,
        on_dead=on_dead,
        on_stop=on_stop,
        topic_partitions=build.settings.kafka.topic_partitions,
    )


def _tables(settings: Settings) -> tuple[Table, ...]:
    return (chunk_log_table(ttl_days=max(settings.retention_days, 1)),)


SOURCE = SourceType(
    name="kafka",
    description="a Kafka consumer group (KAFKA_BOOTSTRAP_SERVERS, the pipeline's topic and "
    "KAFKA_CONSUMER_GROUP); offsets committed once every sink wrote the rows",
    handler="orbitstream.sources.kafka_source.KafkaMapping",
    create=_create,
    tables=_tables,
)


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a durability future's outcome as seen (asyncio would log a traceback for a
    chunk spilled at shutdown whose reader had already stopped waiting)."""
    if not fut.cancelled():
        fut.exception()
