"""Two readers in one group on a 4-partition topic: a rebalance moves partitions, and what
the first reader had taken is made durable and committed before it gives them up."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from orbitstream.sources.kafka import KafkaReader, MemoryChunkLog
from tests.integration.kafka.support import (
    Recorder,
    committed,
    eventually,
    new_topic,
    produce,
    running,
    settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


async def test_rebalance_moves_partitions_with_commits_of_what_was_done(
    kafka_bootstrap: str,
) -> None:
    topic = new_topic(kafka_bootstrap, PARTITIONS)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = MemoryChunkLog()  # shared: the readers stand for two processes on one store
    # rows become durable 0.3 s after a chunk is taken: revokes find chunks in flight
    a = Recorder(delay_secs=0.3)
    b = Recorder(delay_secs=0.3)
    conf = settings(kafka_bootstrap, topic, group, revoke_timeout_secs=10.0)
    reader_a = KafkaReader(conf, a, log)
    reader_b = KafkaReader(conf, b, log)

    sent = [0] * PARTITIONS
    stop = threading.Event()

    def keep_producing() -> None:
        # a steady trickle to every partition while the group rebalances
        while not stop.is_set():
            produce(
                kafka_bootstrap,
                topic,
                [f"v{time.monotonic_ns()}".encode() for _ in range(4 * PARTITIONS)],
                partition=lambda i: i % PARTITIONS,
            )
            for p in range(PARTITIONS):
                sent[p] += 4
            time.sleep(0.1)

    producer = threading.Thread(target=keep_producing, daemon=True)
    async with running(reader_a):
        producer.start()
        await eventually(lambda: len(reader_a.assignment()) == PARTITIONS, what="a owns all")
        await eventually(lambda: len(a.offsets()) >= 100, what="a made progress")
        async with running(reader_b):
            await eventually(
                lambda: bool(reader_a.assignment()) and bool(reader_b.assignment()),
                timeout=60,
                what="partitions split between a and b",
            )
            assert set(reader_a.assignment()).isdisjoint(reader_b.assignment())
            assert len(reader_a.assignment()) + len(reader_b.assignment()) == PARTITIONS
            b_parts = {p for _, p in reader_b.assignment()}
            handled_by_b = len(b.offsets())
            await eventually(lambda: len(b.offsets()) > handled_by_b + 40, what="b progress")
            stop.set()
            await asyncio.to_thread(producer.join, 30)
            total = sum(sent)
            await eventually(
                lambda: len(a.offsets()) + len(b.offsets()) >= total, what="everything handled"
            )
            await eventually(
                lambda: (
                    committed(kafka_bootstrap, group, topic, PARTITIONS) == dict(enumerate(sent))
                ),
                what="every partition committed to its end",
            )
    # every message exactly once: the revoke waited for the in-flight chunks and
    # committed them, so b started where a stopped
    for p in range(PARTITIONS):
        seen = sorted(a.offsets(p) + b.offsets(p))
        assert seen == list(range(sent[p])), f"partition {p}"
    assert {c.partition for c in b.chunks} == b_parts
    assert reader_a.counters["abandoned_chunks"] == 0
    assert reader_b.counters["chunks_replayed"] == 0
