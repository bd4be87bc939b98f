"""Chunk cutting and replay (pure, on offsets), the in-memory chunk log, Pending, settings."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from orbitstream.core.batch import Ack
from orbitstream.sources.kafka import (
    CHUNK_LOG_TABLE,
    Chunk,
    ChunkCutter,
    KafkaMessage,
    KafkaSettings,
    MemoryChunkLog,
    Pending,
)


def msg(offset: int, size: int = 10, partition: int = 0) -> KafkaMessage:
    return KafkaMessage("t", partition, offset, None, b"x" * size)


def cutter(
    plan: list[tuple[int, int]] | None = None, n: int = 3, nbytes: int = 10**9
) -> ChunkCutter:
    return ChunkCutter("t", 0, plan or [], max_messages=n, max_bytes=nbytes)


def feed(c: ChunkCutter, offsets: list[int], now: float = 0.0) -> list[Chunk]:
    out: list[Chunk] = []
    for o in offsets:
        out += c.add(msg(o), now)
    return out


def spans(chunks: list[Chunk]) -> list[tuple[int, int, list[int]]]:
    return [(c.first_offset, c.last_offset, [m.offset for m in c.messages]) for c in chunks]


def test_new_chunks_cut_by_count_with_deterministic_keys() -> None:
    chunks = feed(cutter(n=3), list(range(7)))
    assert spans(chunks) == [(0, 2, [0, 1, 2]), (3, 5, [3, 4, 5])]
    assert [c.key for c in chunks] == ["t:0:0-2", "t:0:3-5"]
    assert chunks[0].batch_id("sessions", "session_events") == "sessions:session_events:t:0:0-2"
    assert not any(c.replayed for c in chunks)


def test_new_chunks_cut_by_bytes() -> None:
    c = cutter(n=100, nbytes=25)  # 10-byte messages: the third reaches 30 bytes
    assert spans(feed(c, [0, 1, 2, 3])) == [(0, 2, [0, 1, 2])]
    assert c.buffered == 1


def test_linger_cuts_the_open_chunk_only_when_due() -> None:
    c = cutter(n=100)
    c.add(msg(0), now=10.0)
    c.add(msg(1), now=10.5)
    assert c.deadline(1.0) == 11.0
    assert c.due(10.9, 1.0) == []
    assert spans(c.due(11.0, 1.0)) == [(0, 1, [0, 1])]
    assert c.due(20.0, 1.0) == [] and c.deadline(1.0) is None


def test_replay_reproduces_recorded_boundaries_exactly() -> None:
    # First run: chunks cut by size, some by linger (so boundaries are not a function of
    # the size alone); they are recorded before being handed on.
    first = cutter(n=4)
    recorded = feed(first, list(range(6)))
    recorded += first.due(5.0, 1.0)  # linger cut at 4..5
    recorded += feed(first, list(range(6, 13)), now=6.0)
    assert [c.key for c in recorded] == ["t:0:0-3", "t:0:4-5", "t:0:6-9"]
    plan = [(c.first_offset, c.last_offset) for c in recorded]
    # Replay with another chunk size: the recorded ones come back identical, then new
    # chunks follow with the new size.
    again = cutter(plan, n=2)
    replayed = feed(again, list(range(13)))
    assert [c.key for c in replayed[:3]] == ["t:0:0-3", "t:0:4-5", "t:0:6-9"]
    assert all(c.replayed for c in replayed[:3])
    assert [m.offset for m in replayed[0].messages] == [0, 1, 2, 3]
    assert spans(replayed[3:]) == [(10, 11, [10, 11])]
    assert not replayed[3].replayed


def test_replay_waits_for_the_recorded_end_and_never_lingers() -> None:
    c = cutter([(0, 4)], n=2)
    assert feed(c, [0, 1, 2]) == []  # size 2 does not apply inside a recorded chunk
    assert c.due(100.0, 1.0) == []
    assert spans(feed(c, [3, 4])) == [(0, 4, [0, 1, 2, 3, 4])]


def test_replay_with_missing_offsets_keeps_the_recorded_key() -> None:
    # 2 and 4 are gone (e.g. transaction markers); the chunk is cut once an offset past
    # its end arrives, and keeps its recorded boundaries.
    c = cutter([(0, 4), (5, 6)], n=10)
    chunks = feed(c, [0, 1, 3, 5, 6])
    assert spans(chunks) == [(0, 4, [0, 1, 3]), (5, 6, [5, 6])]


def test_recorded_range_starting_before_the_first_message_is_replayed() -> None:
    # retention removed 0..1: the first message read is 2, inside the recorded 0..4
    c = cutter([(0, 4)], n=10)
    assert spans(feed(c, [2, 3, 4])) == [(0, 4, [2, 3, 4])]
    assert [c.key for c in feed(cutter([(0, 4)]), [2, 3, 4])] == ["t:0:0-4"]


def test_ranges_wholly_gone_are_skipped() -> None:
    c = cutter([(0, 3), (4, 5), (10, 12)], n=10)
    chunks = feed(c, [10, 11, 12, 13])
    assert spans(chunks) == [(10, 12, [10, 11, 12])]


def test_new_chunks_never_reach_into_a_later_recorded_range() -> None:
    # a gap between recorded chunks (committed at 0, recorded 5..6): new messages 0..4
    # are cut before 5 whatever the size
    c = cutter([(5, 6)], n=100)
    chunks = feed(c, list(range(8)))
    assert spans(chunks) == [(0, 4, [0, 1, 2, 3, 4]), (5, 6, [5, 6])]
    assert [ch.replayed for ch in chunks] == [False, True]


def test_flush_hands_on_a_new_chunk_but_drops_a_partial_replay() -> None:
    c = cutter(n=10)
    feed(c, [0, 1])
    chunks, dropped = c.flush()
    assert spans(chunks) == [(0, 1, [0, 1])] and dropped == 0
    r = cutter([(0, 5)])
    feed(r, [0, 1, 2])
    assert r.flush() == ([], 3)
    assert r.flush() == ([], 0)


def test_duplicates_from_a_refetch_are_dropped() -> None:
    c = cutter(n=3)
    chunks = feed(c, [0, 1, 1, 0, 2, 3, 2, 4, 5])
    assert spans(chunks) == [(0, 2, [0, 1, 2]), (3, 5, [3, 4, 5])]
    assert c.duplicates == 3


def test_overlapping_recorded_ranges_keep_the_first() -> None:
    c = cutter([(0, 3), (2, 5), (0, 3), (4, 6)], n=10)
    assert list(c.plan) == [(0, 3), (4, 6)]


@pytest.mark.parametrize("seed", range(20))
def test_any_replay_of_recorded_chunks_is_identical(seed: int) -> None:
    """Random sizes, lingers and offset gaps: whatever was recorded is cut the same."""
    r = random.Random(seed)
    offsets = sorted(r.sample(range(400), 250))
    first = cutter(n=r.randint(1, 20))
    recorded: list[Chunk] = []
    now = 0.0
    for o in offsets[:200]:
        now += r.random()
        recorded += first.add(msg(o), now)
        recorded += first.due(now, 3.0)
    plan = [(c.first_offset, c.last_offset) for c in recorded]
    # resume from a committed chunk boundary with another size
    committed = r.randrange(len(recorded)) if recorded else 0
    start = recorded[committed].first_offset if recorded else 0
    replay = cutter([p for p in plan if p[1] >= start], n=r.randint(1, 20))
    again = feed(replay, [o for o in offsets if o >= start])
    expected = [(c.key, [m.offset for m in c.messages]) for c in recorded[committed:]]
    got = [(c.key, [m.offset for m in c.messages]) for c in again[: len(expected)]]
    assert got == expected
    rest, dropped = replay.flush()
    assert dropped == 0
    covered = [m.offset for c in again + rest for m in c.messages]
    assert covered == [o for o in offsets if o >= start]  # each once, in order


async def test_memory_chunk_log_loads_from_an_offset_and_injects_faults() -> None:
    log = MemoryChunkLog()
    chunks = [Chunk("t", 0, 0, 9, []), Chunk("t", 0, 10, 19, []), Chunk("t", 1, 0, 4, [])]
    await log.record("g", chunks)
    await log.record("g", chunks[:1])  # recorded twice: listed once
    assert await log.load("g", "t", 0, 0) == [(0, 9), (10, 19)]
    assert await log.load("g", "t", 0, 10) == [(10, 19)]
    assert await log.load("g", "t", 0, 15) == [(10, 19)]  # the range holding 15
    assert await log.load("g", "t", 0, 20) == []
    assert await log.load("other", "t", 0, 0) == []
    log.fail_next = 1
    with pytest.raises(OSError, match="injected"):
        await log.load("g", "t", 1, 0)
    assert await log.load("g", "t", 1, 0) == [(0, 4)]


async def test_pending_waits_for_acks_and_futures() -> None:
    ack = Ack()
    ack.add_parts(1)
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    pending = Pending(dead=[(msg(3), "bad json")], waits=[ack, fut])
    assert pending.dead == [(msg(3), "bad json")]
    task = asyncio.ensure_future(pending.wait())
    await asyncio.sleep(0)
    ack.part_done()
    await asyncio.sleep(0)
    assert not task.done()
    fut.set_result(None)
    await asyncio.wait_for(task, 1)
    await Pending().wait()  # nothing to wait for: durable already


async def test_pending_raises_when_the_write_failed() -> None:
    ack = Ack()
    ack.add_parts(1)
    ack.fail(RuntimeError("sink gave up"))
    with pytest.raises(RuntimeError, match="sink gave up"):
        await Pending(waits=[ack]).wait()


def test_settings_validate_and_build_librdkafka_config() -> None:
    s = KafkaSettings(
        bootstrap_servers=" 127.0.0.1:9092 ",
        consumer_group="g",
        topics=("a", "b"),
        session_timeout_ms=6000,
        extra={"security.protocol": "plaintext"},
        consumer_extra={"fetch.wait.max.ms": 50},
    )
    conf = s.consumer_config()
    assert conf["bootstrap.servers"] == "127.0.0.1:9092"
    assert conf["group.id"] == "g"
    assert conf["enable.auto.commit"] is False
    assert conf["session.timeout.ms"] == 6000
    assert conf["fetch.wait.max.ms"] == 50
    prod = s.producer_config()
    assert prod["enable.idempotence"] is True and prod["acks"] == "all"
    assert prod["security.protocol"] == "plaintext" and "fetch.wait.max.ms" not in prod
    with pytest.raises(ValidationError, match="topics"):
        KafkaSettings(bootstrap_servers="x:1", consumer_group="g", topics=())
    with pytest.raises(ValidationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSettings(bootstrap_servers=" ", consumer_group="g", topics=("a",))
    with pytest.raises(ValidationError, match="KAFKA_CONSUMER_GROUP"):
        KafkaSettings(bootstrap_servers="x:1", consumer_group="", topics=("a",))
    with pytest.raises(ValidationError):
        KafkaSettings(bootstrap_servers="x:1", consumer_group="g", topics=("a",), chunk_messages=0)


def test_chunk_log_table_declaration() -> None:
    assert CHUNK_LOG_TABLE.name == "kafka_chunks"
    assert CHUNK_LOG_TABLE.column_names == (
        "recorded_at",
        "consumer_group",
        "topic",
        "kafka_partition",
        "first_offset",
        "last_offset",
    )


@pytest.mark.parametrize("seed", range(10))
def test_extend_cuts_like_add(seed: int) -> None:
    """The run fast path gives the same chunks as one ``add`` per message."""
    r = random.Random(seed)
    offsets = sorted(r.sample(range(300), 200))
    offsets += offsets[-5:]  # a refetch
    plan = [(10, 19), (40, 44)] if seed % 2 else []
    sizes = {o: r.randint(1, 30) for o in offsets}
    one = ChunkCutter("t", 0, plan, max_messages=7, max_bytes=90)
    many = ChunkCutter("t", 0, plan, max_messages=7, max_bytes=90)
    by_add = [ch for o in offsets for ch in one.add(msg(o, sizes[o]), 0.0)]
    by_extend: list[Chunk] = []
    for start in range(0, len(offsets), 13):
        run = [msg(o, sizes[o]) for o in offsets[start : start + 13]]
        by_extend += many.extend(run, 0.0)
    assert spans(by_extend) == spans(by_add)
    assert [c.replayed for c in by_extend] == [c.replayed for c in by_add]
    assert many.duplicates == one.duplicates == 5
    assert many.flush() == one.flush()
