"""Kafka sink against a real broker: delivery confirmed before ``write`` returns, one topic
per table, keys, JSON content and headers checked by consuming the topics back; errors
classified."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from orbitstream.core.batch import Batch, DeadLetter, Row
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import SinkRejectedError, SinkRetryableError
from orbitstream.sinks.kafka import KafkaSink, KafkaSinkSettings, rfc3339_ns
from tests.conftest import free_port
from tests.integration.kafka.support import header_map, new_topic, read_all
from tests.support.kafka import TansuBroker

pytestmark = pytest.mark.integration

EVENTS = Table(
    "session_events",
    (
        Column("time", ColType.TIMESTAMP),
        Column("session_id", ColType.STRING),
        Column("status", ColType.STRING, low_cardinality=True),
        Column("lat", ColType.FLOAT64),
        Column("tags", ColType.STRING_LIST),
    ),
    time_column="time",
    order_by=("session_id", "time"),
    entity_column="session_id",
)
NODES = Table(
    "nodes",
    (
        Column("time", ColType.TIMESTAMP),
        Column("node_name", ColType.STRING),
        Column("counters", ColType.MAP_STR_FLOAT),
    ),
    time_column="time",
    order_by=("node_name", "time"),
    entity_column="node_name",
)
T0 = 1_752_928_496_789_000_001


def sink_for(bootstrap: str, **overrides: object) -> tuple[KafkaSink, dict[str, str]]:
    topics = {
        "session_events": new_topic(bootstrap, 3, "events"),
        "nodes": new_topic(bootstrap, 2, "nodes"),
    }
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topics": topics,
        "dead_letter_topic": new_topic(bootstrap, 1, "dlq"),
    }
    values.update(overrides)
    return KafkaSink(KafkaSinkSettings.model_validate(values)), topics


async def test_rows_are_delivered_keyed_by_entity_one_topic_per_table(
    kafka_bootstrap: str,
) -> None:
    sink, topics = sink_for(kafka_bootstrap)
    await sink.start([EVENTS, NODES])
    events: list[Row] = [
        (T0 + i * 1000, f"s{i % 5}", "en_route", 40.0 + i / 100, ("a", f"t{i}")) for i in range(60)
    ]
    nodes: list[Row] = [
        (T0 + i, f"leaf{i % 3}", {"in_octets": float(i), "out_octets": 2.0 * i}) for i in range(9)
    ]
    try:
        await sink.write(Batch(EVENTS, events, "p:session_events:t:0:0-59"))
        await sink.write(Batch(NODES, nodes, "p:nodes:t:0:0-8"))
        await sink.ping()
    finally:
        await sink.close()
    # write() returned: every message is in the broker already (read with a new client)
    got = read_all(kafka_bootstrap, topics["session_events"], 60)
    assert len(got) == 60
    partition_of: dict[bytes, set[int]] = {}
    for m in got:
        doc = json.loads(m.value() or b"")
        i = int(header_map(m)["orbitstream.row"])
        t, sid, status, lat, tags = events[i]
        assert isinstance(tags, tuple) and isinstance(t, int) and isinstance(sid, str)
        assert doc == {
            "time": rfc3339_ns(t),
            "session_id": sid,
            "status": status,
            "lat": lat,
            "tags": list(tags),
        }
        assert m.key() == sid.encode()
        assert header_map(m)["orbitstream.batch_id"] == b"p:session_events:t:0:0-59"
        assert header_map(m)["orbitstream.table"] == b"session_events"
        partition_of.setdefault(m.key() or b"", set()).add(m.partition() or 0)
    assert all(len(ps) == 1 for ps in partition_of.values())  # one entity, one partition
    got_nodes = read_all(kafka_bootstrap, topics["nodes"], 9)
    assert sorted(json.loads(m.value() or b"")["counters"]["in_octets"] for m in got_nodes) == [
        float(i) for i in range(9)
    ]
    assert {m.key() for m in got_nodes} == {b"leaf0", b"leaf1", b"leaf2"}


async def test_replayed_batch_is_not_sent_twice_and_oversized_rows_are_refused_whole(
    kafka_bootstrap: str,
) -> None:
    sink, topics = sink_for(kafka_bootstrap, message_max_bytes=2000, timestamp_format="epoch_ns")
    await sink.start([EVENTS])
    rows: list[Row] = [(T0 + i, f"s{i}", "started", 1.0, ()) for i in range(5)]
    try:
        await sink.write(Batch(EVENTS, rows, "b1"))
        await sink.write(Batch(EVENTS, rows, "b1"))  # a retry of a delivered batch
        big: list[Row] = [*rows, (T0, "s-big", "x" * 5000, 1.0, ())]
        with pytest.raises(SinkRejectedError, match="message_max_bytes") as info:
            await sink.write(Batch(EVENTS, big, "b2"))
        assert info.value.batch_id == "b2" and info.value.table == "session_events"
        await sink.write(Batch(EVENTS, rows[:1], "b3"))  # a marker after them
    finally:
        await sink.close()
    got = read_all(kafka_bootstrap, topics["session_events"], 6)
    ids = sorted(header_map(m)["orbitstream.batch_id"] for m in got)
    assert ids == [b"b1"] * 5 + [b"b3"]  # b1 once, nothing of b2
    assert json.loads(got[0].value() or b"")["time"] >= T0  # epoch nanoseconds


async def test_invalid_topic_is_rejected(kafka_bootstrap: str) -> None:
    sink, _ = sink_for(kafka_bootstrap)
    sink = KafkaSink(sink.settings.model_copy(update={"topics": {"session_events": "bad topic!!"}}))
    await sink.start([EVENTS])
    try:
        with pytest.raises(SinkRejectedError, match="TOPIC_EXCEPTION"):
            await sink.write(Batch(EVENTS, [(T0, "s", "x", 1.0, ())], "b"))
    finally:
        await sink.close()


async def test_unreachable_broker_is_retryable() -> None:
    port = free_port()  # nothing listens there
    sink = KafkaSink(
        KafkaSinkSettings(bootstrap_servers=f"127.0.0.1:{port}", delivery_timeout_ms=1500)
    )
    with pytest.raises(SinkRetryableError, match="not reachable"):
        await sink.start([EVENTS])
    started = time.monotonic()
    with pytest.raises(SinkRetryableError, match="_MSG_TIMED_OUT") as info:
        await sink.write(Batch(EVENTS, [(T0, "s", "x", 1.0, ())], "b"))
    assert not info.value.deployment
    assert time.monotonic() - started < 30  # bounded by delivery_timeout_ms
    await sink.close()


async def test_dead_letters_go_to_the_dead_letter_topic(kafka_bootstrap: str) -> None:
    sink, _ = sink_for(kafka_bootstrap)
    await sink.start([EVENTS])
    letters = [
        DeadLetter(
            "sessions", "session_events", "b9", {"session_id": "s1", "lat": 99.0}, "bad lat"
        ),
        DeadLetter("sessions", "session_events", "b9", {"session_id": "s2"}, "missing time"),
    ]
    try:
        await sink.write_dead_letters(letters)
    finally:
        await sink.close()
    got = read_all(kafka_bootstrap, sink.settings.dead_letter_topic, 2)
    docs = sorted((json.loads(m.value() or b"") for m in got), key=lambda d: d["error"])
    assert [d["error"] for d in docs] == ["bad lat", "missing time"]
    assert docs[0]["row"] == {"session_id": "s1", "lat": 99.0}
    assert docs[0]["pipeline"] == "sessions" and docs[0]["batch_id"] == "b9"
    assert {m.key() for m in got} == {b"session_events"}


async def test_a_broker_that_lost_the_producer_state_gets_a_new_producer(
    broker: TansuBroker,
) -> None:
    """A broker restarted without its storage no longer knows the idempotent producer's
    id: every retry of the old producer timed out, for good, or its produce() failed
    _FATAL (the HTTP tier of ``serve --sink kafka`` stayed wedged, its buffer growing).
    After a fatal error, or two writes that only timed out, a new producer is started."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = "events-restarted"

    def create() -> None:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            fut.result(15)

    create()
    sink = KafkaSink(
        KafkaSinkSettings(
            bootstrap_servers=broker.bootstrap,
            topics={"session_events": topic},
            delivery_timeout_ms=1500,
        )
    )
    await sink.start([EVENTS])
    rows: list[Row] = [(T0 + i, f"s{i}", "started", 1.0, ()) for i in range(10)]
    await sink.write(Batch(EVENTS, rows, "before"))
    # the broker goes away with deliveries in flight, and comes back empty
    many: list[Row] = [(T0 + i, f"s{i}", "started", 1.0, ()) for i in range(20_000)]
    inflight = asyncio.create_task(sink.write(Batch(EVENTS, many, "inflight")))
    await asyncio.sleep(0.05)
    broker.stop()
    broker.start()
    create()
    with contextlib.suppress(SinkRetryableError):
        await inflight

    async def deliver(batch_id: str) -> None:
        for _ in range(6):  # what the pipeline does: retry until it is delivered
            with contextlib.suppress(SinkRetryableError):
                await sink.write(Batch(EVENTS, rows, batch_id))
                return
        raise AssertionError(f"{batch_id}: still not delivered")

    await deliver("after")  # every message timed out, twice: a new producer
    # again with nothing in flight: the producer's next produce() is _FATAL
    broker.stop()
    broker.start()
    create()
    await deliver("again")
    await sink.close()
    got = read_all(broker.bootstrap, topic, len(rows) + 1, timeout=4)  # one more: none
    again = [m for m in got if header_map(m)["orbitstream.batch_id"] == b"again"]
    sessions = sorted(str(json.loads(m.value() or b"{}")["session_id"]) for m in again)
    assert sessions == sorted(str(r[1]) for r in rows)
