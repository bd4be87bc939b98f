"""Helpers for the Kafka source/sink tests: topics, producing, reading back, commits, and a
controllable handler."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from orbitstream.errors import BackpressureError
from orbitstream.sources.kafka import Chunk, KafkaReader, KafkaSettings, Pending

SESSION_TIMEOUT_MS = 6000  # Tansu: the first group join takes about half of it


def new_topic(bootstrap: str, partitions: int = 1, prefix: str = "t") -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(15)
    return topic


def keyed(bootstrap: str, topic: str) -> str:
    """``topic`` as chunk keys and the chunk log name it: with its incarnation (topic id)."""
    from orbitstream.sources.kafka import log_topic, topic_incarnation

    incarnation = topic_incarnation({"bootstrap.servers": bootstrap}, topic)
    assert incarnation, "the broker reports topic ids"
    return log_topic(topic, incarnation)


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    *,
    partition: int | Callable[[int], int] = 0,
    key: Callable[[int], bytes | None] | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    errors: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for i, value in enumerate(values):
        p = partition(i) if callable(partition) else partition
        producer.produce(
            topic,
            value,
            key(i) if key else None,
            p,
            on_delivery=report,
            headers=headers,
        )
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001: none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def reader(bootstrap: str, topic: str, timeout: float = 40.0) -> Consumer:
    """A consumer of every partition of ``topic`` from offset 0, assigned by hand: no group
    join (which takes about half of ``session.timeout.ms`` on Tansu) and no offset
    lookup (Tansu's are unreliable); waits for the topic to exist."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",  # required, never joined
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    deadline = time.monotonic() + timeout
    while True:
        meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            break
        if time.monotonic() >= deadline:
            consumer.close()
            raise AssertionError(f"topic {topic} does not exist")
        time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(meta.partitions)])
    return consumer


def read_all(bootstrap: str, topic: str, n: int, timeout: float = 40.0) -> list[Message]:
    """Read ``n`` messages of ``topic`` from the beginning (or what there is by
    ``timeout``)."""
    consumer = reader(bootstrap, topic, timeout)
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None:
                    out.append(m)
    finally:
        consumer.close()
    return out


def header_map(m: Message) -> dict[str, bytes]:
    """A consumed message's headers (first value per name)."""
    raw = m.headers() or []
    pairs: list[tuple[str, Any]] = list(raw.items()) if isinstance(raw, dict) else list(raw)
    out: dict[str, bytes] = {}
    for k, v in pairs:
        out.setdefault(k, v if isinstance(v, bytes) else str(v or "").encode())
    return out


def settings(bootstrap: str, topic: str, group: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "consumer_group": group,
        "topics": (topic,),
        "dead_letter_topic": f"{topic}-dlq",
        "chunk_messages": 10,
        "linger_secs": 0.3,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "revoke_timeout_secs": 5.0,
    }
    values.update(overrides)
    return KafkaSettings(**values)


@dataclass
class Recorder:
    """A handler: records every chunk it takes; ``resolve(chunk)`` decides whether (and
    when) the chunk becomes durable; ``refuse()`` makes it push back."""

    resolve: Callable[[Chunk], bool] = lambda _c: True
    delay_secs: float = 0.0
    refusing: bool = False
    budget: int | None = None  # chunks it takes before it starts refusing
    chunks: list[Chunk] = field(default_factory=list)
    refused: int = 0
    decode: Callable[[Chunk], list[tuple[Any, str]]] = lambda _c: []
    held: list[asyncio.Future[None]] = field(default_factory=list)

    def __call__(self, chunk: Chunk) -> Pending:
        if self.refusing or (self.budget is not None and len(self.chunks) >= self.budget):
            self.refused += 1
            raise BackpressureError("no room", retry_after_secs=0.05)
        dead = self.decode(chunk)
        self.chunks.append(chunk)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.resolve(chunk):
            if self.delay_secs:
                asyncio.get_running_loop().call_later(self.delay_secs, _resolve, fut)
            else:
                fut.set_result(None)
        else:
            self.held.append(fut)
        return Pending(dead=dead, waits=[fut])

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.chunks]

    def offsets(self, partition: int | None = None) -> list[int]:
        return [
            m.offset
            for c in self.chunks
            if partition is None or c.partition == partition
            for m in c.messages
        ]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def eventually(check: Callable[[], bool], timeout: float = 40.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(reader: KafkaReader) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``reader`` in a task; stop it (and surface its errors) on exit."""
    task = asyncio.create_task(reader.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(reader.stop(), 60)
        await task


async def check_chunk_log(log: Any) -> None:
    """The ChunkLog contract on a store-backed log whose sink was started with the
    chunk-log table: boundaries come back by partition from an offset on, per group, and
    recording the same chunks again (a retry) stores them once."""
    from orbitstream.sources.kafka import Chunk as _Chunk

    chunks = [
        _Chunk("t", 0, 0, 9, []),
        _Chunk("t", 0, 10, 19, []),
        _Chunk("t", 1, 0, 4, []),
        _Chunk("u", 0, 0, 2, []),
    ]
    await log.record("g", chunks)
    await log.record("g", chunks)  # a retried record: deduplicated by its batch id
    await log.record("h", chunks[:1])
    assert await log.load("g", "t", 0, 0) == [(0, 9), (10, 19)]
    assert await log.load("g", "t", 0, 10) == [(10, 19)]
    assert await log.load("g", "t", 0, 12) == [(10, 19)]
    assert await log.load("g", "t", 0, 20) == []
    assert await log.load("g", "t", 1, 0) == [(0, 4)]
    assert await log.load("g", "u", 0, 0) == [(0, 2)]
    assert await log.load("h", "t", 0, 0) == [(0, 9)]
    assert await log.load("nobody", "t", 0, 0) == []
    result = await log.store.query(f"SELECT count(*) FROM {log.qualified_name}")
    assert int(result.rows[0][0]) == 5
