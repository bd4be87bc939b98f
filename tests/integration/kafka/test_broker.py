"""The test broker itself: a topic can be created, written and read back by a group."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def test_produce_and_consume_through_a_group(kafka_bootstrap: str) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"m{i}".encode() for i in range(50)}
    for value in sent:
        producer.produce(topic, value=value, key=value[-1:])
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    got: set[bytes] = set()
    deadline = time.monotonic() + 30
    try:
        while got != sent and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                assert msg.error() is None
                got.add(msg.value() or b"")
    finally:
        consumer.close()
    assert got == sent
