"""The ``kafka`` source's handler in-process (no broker): a chunk's rows go to the pipeline
keyed by the chunk, the mapper's state advances only once they are written, a chunk
refused by backpressure leaves no state behind, a rewound partition maps from its
committed state, bad messages come back as dead letters, settings come from the
``kafka`` section and the pipeline's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import BackpressureError
from orbitstream.pipelines import network
from orbitstream.pipelines.network import NetworkMapper
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sinks.memory import MemorySink
from orbitstream.sources.http.server import Router
from orbitstream.sources.kafka import Chunk, KafkaMessage, KafkaSettings, chunk_log_table
from orbitstream.sources.kafka_source import KafkaSource

NS = 1_800_000_000 * 10**9


def stats_message(offset: int, octets: int, t_ns: int) -> KafkaMessage:
    doc = [
        {
            "path": network.STATISTICS_PATH,
            "timestamp": t_ns,
            "entries": [
                {
                    "keys": {"node_name": "leaf1", "interface_name": "ethernet-1/1"},
                    "fields": {"in_octets": octets, "out_octets": octets},
                }
            ],
        }
    ]
    return KafkaMessage("raw", 0, offset, b"leaf1", json.dumps(doc).encode(), t_ns // 10**6)


def chunk(*msgs: KafkaMessage) -> Chunk:
    return Chunk("raw", 0, msgs[0].offset, msgs[-1].offset, list(msgs))


async def harness(
    tmp_path: Path, max_buffer_rows: int = 100_000
) -> tuple[KafkaSource, Pipeline, MemorySink, NetworkMapper]:
    sink = MemorySink()
    tables = (*NetworkMapper.tables, chunk_log_table())
    pipeline = Pipeline(
        "network",
        tables,
        [sink],
        limits=PipelineLimits(batch_size=1000, linger_secs=0.01, max_buffer_rows=max_buffer_rows),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.02),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )
    await pipeline.start()
    ctx = PipelineContext(
        pipeline,
        tables,
        metrics=pipeline.metrics,
        store=sink,  # type: ignore[arg-type]
        router=Router(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )
    mapper = NetworkMapper()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", consumer_group="g", topics=("raw",))
    source = KafkaSource(settings, mapper, create_topics=False)
    source._ctx = ctx  # what start() sets, without the chunk log and the broker
    return source, pipeline, sink, mapper


def rates(sink: MemorySink) -> list[object]:
    idx = network.INTERFACE_COUNTERS_TABLE.index("in_bits_per_sec")
    return [r[idx] for r in sink.tables.get("interface_counters", [])]


async def test_rows_keyed_by_chunk_and_state_advances_once_written(tmp_path: Path) -> None:
    source, pipeline, sink, mapper = await harness(tmp_path)
    pending = source._handle(chunk(stats_message(0, 1000, NS), stats_message(1, 2000, NS + 10**9)))
    assert mapper.pending == 1
    await pending.wait()
    assert mapper.pending == 0  # committed: the rows are in the sink
    assert "network:interface_counters:raw:0:0-1" in sink.batch_ids
    assert rates(sink) == [None, 8000.0]
    await pipeline.close(5)


async def test_backpressure_leaves_no_state_behind(
    tmp_path: Path,
) -> None:
    source, pipeline, sink, mapper = await harness(tmp_path, max_buffer_rows=1)
    sink.down = True  # what gets in stays in the buffer
    # an empty buffer takes a chunk larger than the whole buffer (else it never would)
    first = source._handle(chunk(stats_message(0, 1000, NS), stats_message(1, 2000, NS + 10**9)))
    assert mapper.pending == 1
    second = Chunk("raw", 0, 2, 2, [stats_message(2, 3000, NS + 2 * 10**9)])
    with pytest.raises(BackpressureError):
        source._handle(second)
    assert mapper.pending == 1  # the refused chunk left nothing behind
    assert source.counters["backpressure"] == 1
    sink.down = False
    await first.wait()
    assert mapper.pending == 0
    again = source._handle(second)  # offered again once there is room
    await again.wait()
    assert rates(sink) == [None, 8000.0, 8000.0]
    await pipeline.close(5)


async def test_a_rewound_partition_maps_from_its_committed_state(tmp_path: Path) -> None:
    source, pipeline, sink, mapper = await harness(tmp_path)
    sink.down = True  # nothing becomes durable
    msgs = (stats_message(0, 1000, NS), stats_message(1, 3000, NS + 10**9))
    source._handle(chunk(*msgs))
    assert mapper.pending == 1
    # the partition comes back from offset 0 (revoked, re-assigned): the uncommitted
    # result is forgotten, the replay maps from the committed state
    sink.down = False
    again = source._handle(chunk(*msgs))
    assert source.counters["rewinds"] == 1
    assert mapper.pending == 1  # only the replay's result
    await again.wait()
    assert mapper.pending == 0
    assert rates(sink) == [None, 16000.0]
    await pipeline.close(5)


async def test_bad_messages_come_back_as_dead_letters_with_their_kind(tmp_path: Path) -> None:
    seen: list[str] = []
    source, pipeline, _sink, _ = await harness(tmp_path)
    source.on_dead = lambda rec: seen.append(rec.kind)
    bad = KafkaMessage("raw", 0, 1, b"x", b"{not json", None)
    pending = source._handle(chunk(stats_message(0, 1000, NS), bad))
    assert [(m.offset, why.split(":")[0]) for m, why in pending.dead] == [(1, "decode")]
    assert seen == ["decode"]
    await pending.wait()
    await pipeline.close(5)


def test_settings_from_the_kafka_section_and_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orbitstream.runtime import plan_pipelines
    from orbitstream.settings import load_settings

    monkeypatch.setenv("KAFKA_BOOTSTRAP", "10.0.0.1:9092")
    monkeypatch.setenv("KAFKA_TOPIC", "my-sessions")
    monkeypatch.setenv("ORBITSTREAM_KAFKA_CHUNK_MESSAGES", "123")
    monkeypatch.delenv("KAFKA_CONSUMER_GROUP", raising=False)
    settings = load_settings()
    assert settings.kafka.servers() == "10.0.0.1:9092"
    plan = next(p for p in plan_pipelines(settings, ["sessions"]))
    assert plan.source == "kafka"
    assert [t.qualified_name for t in plan.tables][-1] == "sessions.kafka_chunks"
    own = plan.own
    assert getattr(own, "kafka_topic", None) == "my-sessions"
    assert getattr(own, "consumer_group", None) == "jupiter-consumer-group"
