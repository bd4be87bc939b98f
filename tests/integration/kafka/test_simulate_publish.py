"""The simulators' publisher against a real broker: every message arrives once, with its key,
an entity stays on one partition in order, and pacing holds the rate down."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from typing import NamedTuple

import pytest

from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.network import NetworkMapper
from orbitstream.pipelines.sessions import SessionsMapper
from orbitstream.simulate.network import FabricConfig, NetworkSimulator, simulate_network
from orbitstream.simulate.publisher import ensure_topic, publish
from orbitstream.simulate.sessions import SessionsConfig, SessionsSimulator, simulate_sessions
from tests.integration.kafka.support import reader

pytestmark = pytest.mark.integration


class Got(NamedTuple):
    partition: int
    offset: int
    key: bytes
    value: bytes


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Got]:
    from confluent_kafka import Message

    consumer = reader(bootstrap, topic, timeout)
    got: list[Got] = []

    def keep(msg: Message) -> None:
        assert msg.error() is None, msg.error()
        p, o, k, v = msg.partition(), msg.offset(), msg.key(), msg.value()
        assert p is not None and o is not None and k is not None and v is not None
        got.append(Got(p, o, k, v))

    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                keep(msg)
        # anything beyond the expected count would be a duplicate: give it a moment to show
        for msg in consumer.consume(500, 1.0):
            keep(msg)
    finally:
        consumer.close()
    return got


def test_sessions_arrive_once_keyed_by_session_in_order_per_partition(
    kafka_bootstrap: str,
) -> None:
    topic = f"sessions-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(kafka_bootstrap, topic, 4) is True
    assert ensure_topic(kafka_bootstrap, topic, 4) is False  # already there
    config = SessionsConfig(vehicles=8, seed=21, malformed_rate=0.05)
    sent = list(SessionsSimulator(config).messages(3000))
    stats = simulate_sessions(
        kafka_bootstrap, topic=topic, config=config, max_messages=3000, start_ns=config.start_ns
    )
    assert (stats.sent, stats.failed) == (3000, 0)
    assert stats.malformed == sum(m.malformed is not None for m in sent)

    got = consume_all(kafka_bootstrap, topic, len(sent))
    pairs = Counter((m.key, m.value) for m in got)
    assert pairs == Counter((m.key, m.value) for m in sent)  # all, once, with their keys
    partitions: dict[bytes, set[int]] = defaultdict(set)
    per_key: dict[bytes, list[tuple[int, int, bytes]]] = defaultdict(list)
    for m in got:
        partitions[m.key].add(m.partition)
        per_key[m.key].append((m.partition, m.offset, m.value))
    assert all(len(p) == 1 for p in partitions.values())  # a session stays on one partition
    assert len({p for ps in partitions.values() for p in ps}) == 4  # and sessions spread out
    expected_order: dict[bytes, list[bytes]] = defaultdict(list)
    for s in sent:
        expected_order[s.key].append(s.value)
    for key, msgs in per_key.items():
        assert [v for _, _, v in sorted(msgs)] == expected_order[key]  # in order per session
    # what came back maps: good messages to rows, the malformed ones to dead records
    mapper = SessionsMapper()
    dead = 0
    for m in got:
        dead += len(mapper.map(m.value, MessagePosition(topic, m.partition, m.offset)).dead)
    assert dead == stats.malformed


def test_network_messages_are_keyed_by_node_and_paced(kafka_bootstrap: str) -> None:
    topic = f"network-{uuid.uuid4().hex[:8]}"
    config = FabricConfig(spines=2, leaves=3, seed=2, malformed_rate=0.1)
    stats = simulate_network(
        kafka_bootstrap,
        topic=topic,
        config=config,
        rate=400.0,
        max_messages=200,
        partitions=2,
        start_ns=config.start_ns,
    )
    assert stats.sent == 200 and stats.duration_secs >= 199 / 400.0  # never faster than asked
    got = consume_all(kafka_bootstrap, topic, 200)
    assert len(got) == 200
    sent = list(NetworkSimulator(config).messages(200))
    assert Counter((m.key, m.value) for m in got) == Counter((m.key, m.value) for m in sent)
    mapper = NetworkMapper()
    outcome: Counter[str] = Counter()
    for m in sorted(got, key=lambda m: (m.partition, m.offset)):
        result = mapper.map(m.value, MessagePosition(topic, m.partition, m.offset))
        outcome["dead" if result.dead else "rows"] += 1
        mapper.commit(result)
    assert outcome["dead"] == stats.malformed and outcome["rows"] == 200 - stats.malformed


def test_publish_stops_at_its_duration(kafka_bootstrap: str) -> None:
    topic = f"duration-{uuid.uuid4().hex[:8]}"
    sim = SessionsSimulator(SessionsConfig(vehicles=2, seed=1))
    stats = publish(
        sim.messages(), bootstrap=kafka_bootstrap, topic=topic, rate=200.0, duration_secs=0.5
    )
    assert 0 < stats.sent <= 0.5 * 200 + 1 and stats.failed == 0
    assert len(consume_all(kafka_bootstrap, topic, stats.sent)) == stats.sent
