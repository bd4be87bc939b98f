"""Kafka source against a real broker: backpressure pauses and resumes without loss or
duplicates; messages that cannot be decoded go to the dead-letter topic with headers."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import pytest

from orbitstream.sources.kafka import (
    Chunk,
    DeadLetterHeaders,
    KafkaMessage,
    KafkaReader,
    MemoryChunkLog,
)
from tests.integration.kafka.support import (
    Recorder,
    committed,
    eventually,
    header_map,
    new_topic,
    produce,
    read_all,
    running,
    settings,
)

pytestmark = pytest.mark.integration


async def test_backpressure_pauses_and_resumes_without_loss_or_duplicates(
    kafka_bootstrap: str,
) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 6000
    produce(
        kafka_bootstrap,
        topic,
        [f"m{i}".encode() for i in range(n)],
        partition=lambda i: i % 2,
    )
    handler = Recorder(budget=4)  # takes 4 chunks, then has no room
    reader = KafkaReader(
        settings(
            kafka_bootstrap,
            topic,
            group,
            chunk_messages=100,
            max_waiting_chunks=2,
            poll_messages=200,
        ),
        handler,
        MemoryChunkLog(),
    )
    paused_seen: set[str] = set()

    def paused() -> bool:
        for name, part in reader.stats()["partitions"].items():
            if part["paused"]:
                paused_seen.add(name)
        return paused_seen == {f"{topic}:0", f"{topic}:1"}

    async with running(reader):
        await eventually(paused, what="both partitions paused")
        await eventually(lambda: handler.refused >= 10, what="offers refused and retried")
        assert len(handler.chunks) == 4  # nothing taken while refusing
        assert reader.counters["messages"] < n  # paused: the rest stays in the broker
        handler.budget = None
        await eventually(lambda: len(handler.offsets()) >= n, what="all messages after resume")
        await eventually(
            lambda: committed(kafka_bootstrap, group, topic, 2) == {0: n // 2, 1: n // 2},
            what="everything committed",
        )
        await eventually(
            lambda: not any(p["paused"] for p in reader.stats()["partitions"].values()),
            what="partitions resumed",
        )
    assert reader.counters["backpressure"] >= 10
    for p in (0, 1):
        assert handler.offsets(p) == list(range(n // 2)), f"partition {p}: loss or duplicates"
    # chunks were offered again whole, in order: keys are consecutive per partition
    for p in (0, 1):
        chunks = [c for c in handler.chunks if c.partition == p]
        assert all(a.last_offset + 1 == b.first_offset for a, b in itertools.pairwise(chunks))


def decode(chunk: Chunk) -> list[tuple[KafkaMessage, str]]:
    """The handler's mapping step: JSON objects with an ``id`` only."""
    dead: list[tuple[KafkaMessage, str]] = []
    for m in chunk.messages:
        try:
            doc: Any = json.loads(m.value)
        except ValueError as exc:
            dead.append((m, f"invalid JSON: {exc}"))
            continue
        if not isinstance(doc, dict) or "id" not in doc:
            dead.append((m, "missing field: id"))
    return dead


async def test_undecodable_messages_go_to_the_dead_letter_topic_with_headers(
    kafka_bootstrap: str,
) -> None:
    topic = new_topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    values = [json.dumps({"id": i}).encode() for i in range(30)]
    values[3] = b"{not json"
    values[17] = b'{"no_id": true}'
    values[25] = b"boom"  # makes the handler itself fail: its whole chunk is dead-lettered
    produce(
        kafka_bootstrap,
        topic,
        values,
        key=lambda i: f"k{i}".encode(),
        headers=[("trace", b"abc")],
    )

    class Failing(Recorder):
        def __call__(self, chunk: Chunk) -> Any:
            if any(m.value == b"boom" for m in chunk.messages):
                raise RuntimeError("mapper bug")
            return super().__call__(chunk)

    handler = Failing(decode=decode)
    conf = settings(kafka_bootstrap, topic, group)
    reader = KafkaReader(conf, handler, MemoryChunkLog())
    async with running(reader):
        await eventually(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 30})
    assert reader.counters["handler_errors"] == 1
    # chunk 20-29 failed in the handler: all ten of its messages are dead letters
    dead = read_all(kafka_bootstrap, conf.dead_letter_topic, 12)
    assert len(dead) == 12
    by_offset = {}
    for m in dead:
        headers = header_map(m)
        assert headers[DeadLetterHeaders.TOPIC] == topic.encode()
        assert headers[DeadLetterHeaders.PARTITION] == b"0"
        assert headers[DeadLetterHeaders.GROUP] == group.encode()
        assert headers["trace"] == b"abc"  # the original headers follow
        offset = int(headers[DeadLetterHeaders.OFFSET])
        assert m.value() == values[offset]  # the original message, unchanged
        assert m.key() == f"k{offset}".encode()
        by_offset[offset] = headers[DeadLetterHeaders.ERROR].decode()
    assert sorted(by_offset) == [3, 17, *range(20, 30)]
    assert by_offset[3].startswith("invalid JSON")
    assert by_offset[17] == "missing field: id"
    assert all("mapper bug" in by_offset[o] for o in range(20, 30))
    # the stream went on: every other message was handled
    assert {m.offset for c in handler.chunks for m in c.messages} == set(range(20))


async def test_dead_letters_count_towards_durability(kafka_bootstrap: str) -> None:
    """A chunk whose dead letters cannot be delivered is not committed (the dead-letter
    topic name is invalid, so delivery keeps failing)."""
    topic = new_topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [b"not json"] * 5)
    handler = Recorder(decode=decode)
    conf = settings(
        kafka_bootstrap, topic, group, dead_letter_topic="bad topic!!", revoke_timeout_secs=1.0
    )
    reader = KafkaReader(conf, handler, MemoryChunkLog())
    async with running(reader):
        await eventually(lambda: len(handler.chunks) == 1)
        await asyncio.sleep(1.5)
        assert reader.counters["dead_letters"] == 0
    assert committed(kafka_bootstrap, group, topic, 1) == {0: -1001}
