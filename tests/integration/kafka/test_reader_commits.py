"""Kafka source against a real broker: offsets are committed only once chunks are durable,
in offset order, and a restart replays exactly the chunks that were recorded."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from orbitstream.sinks.chdb import ChdbSink
from orbitstream.sources.kafka import (
    CHUNK_LOG_TABLE,
    KafkaReader,
    MemoryChunkLog,
    TableChunkLog,
)
from tests.conftest import require
from tests.integration.kafka.support import (
    Recorder,
    committed,
    eventually,
    keyed,
    new_topic,
    produce,
    running,
    settings,
)

pytestmark = pytest.mark.integration

NO_OFFSET = -1001


async def test_nothing_is_committed_until_chunks_are_durable(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(50)])
    log = MemoryChunkLog()

    never = Recorder(resolve=lambda _c: False)
    reader = KafkaReader(
        settings(kafka_bootstrap, topic, group, revoke_timeout_secs=1.0), never, log
    )
    async with running(reader):
        await eventually(lambda: len(never.offsets()) == 50, what="all 50 messages handed on")
    name = keyed(kafka_bootstrap, topic)
    assert never.keys == [f"{name}:0:{i}-{i + 9}" for i in range(0, 50, 10)]
    assert committed(kafka_bootstrap, group, topic, 1) == {0: NO_OFFSET}
    assert reader.counters["commits"] == 0

    done = Recorder()
    reader = KafkaReader(settings(kafka_bootstrap, topic, group), done, log)
    async with running(reader):
        await eventually(lambda: len(done.offsets()) == 50, what="replay of 50 messages")
        await eventually(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 50})
    # the replay cut exactly the recorded chunks
    assert done.keys == never.keys
    assert all(c.replayed for c in done.chunks)
    assert done.offsets() == list(range(50))


async def test_commit_waits_for_the_oldest_chunk_and_restart_replays_the_same_keys(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Chunks 0, 1 and 3 durable, 2 not: the commit stops at 2's first offset; a restart
    (new process: another chunk size, the chunk log read back from chDB) replays 2 and 3
    (and 4) with their recorded keys, then cuts new chunks."""
    require(_has_chdb(), "chdb")
    topic = new_topic(kafka_bootstrap)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(50)])

    store = ChdbSink(tmp_path / "chdb")
    await store.start([CHUNK_LOG_TABLE])
    first = Recorder(resolve=lambda c: c.first_offset != 20)
    reader = KafkaReader(
        settings(kafka_bootstrap, topic, group, revoke_timeout_secs=1.0),
        first,
        TableChunkLog(store),
    )
    async with running(reader):
        await eventually(lambda: len(first.offsets()) == 50)
        await eventually(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 20})
    name = keyed(kafka_bootstrap, topic)
    keys = [f"{name}:0:{i}-{i + 9}" for i in range(0, 50, 10)]
    assert first.keys == keys
    assert committed(kafka_bootstrap, group, topic, 1) == {0: 20}  # 30-39 is durable: no matter
    await store.close()

    produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(50, 55)])
    store = ChdbSink(tmp_path / "chdb")  # reopened: what was recorded is read back
    await store.start([CHUNK_LOG_TABLE])
    second = Recorder()
    reader = KafkaReader(
        settings(kafka_bootstrap, topic, group, chunk_messages=7), second, TableChunkLog(store)
    )
    async with running(reader):
        await eventually(lambda: len(second.offsets()) == 35, what="offsets 20..54")
        await eventually(lambda: committed(kafka_bootstrap, group, topic, 1) == {0: 55})
    await store.close()
    assert second.keys == [*keys[2:], f"{name}:0:50-54"]
    assert [c.replayed for c in second.chunks] == [True, True, True, False]
    assert second.offsets() == list(range(20, 55))


def _has_chdb() -> bool:
    try:
        import chdb  # noqa: F401
    except ImportError:
        return False
    return True
