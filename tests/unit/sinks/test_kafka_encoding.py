"""Kafka sink encoding (bytes out), error classification and settings."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydantic import ValidationError

from orbitstream.core.tables import ColType, Column, Table
from orbitstream.sinks.kafka import (
    KafkaSinkSettings,
    classify_kafka_error,
    encode_rows,
    rfc3339_ns,
)

T = Table(
    "events",
    (
        Column("time", ColType.TIMESTAMP),
        Column("session_id", ColType.STRING),
        Column("speed", ColType.FLOAT64),
        Column("count", ColType.INT64),
        Column("ok", ColType.BOOL),
        Column("tags", ColType.STRING_LIST),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
        Column("note", ColType.STRING, nullable=True),
    ),
    time_column="time",
    order_by=("session_id", "time"),
    entity_column="session_id",
)
NS = 1_752_928_496_789_123_456  # 2025-07-19T12:34:56.789123456Z


def test_rfc3339_keeps_nanoseconds() -> None:
    assert rfc3339_ns(NS) == "2025-07-19T12:34:56.789123456Z"
    assert rfc3339_ns(0) == "1970-01-01T00:00:00.000000000Z"
    text = rfc3339_ns(NS)
    parsed = dt.datetime.fromisoformat(text[:26] + "+00:00")  # microseconds
    assert int(parsed.timestamp()) * 10**9 + int(text[20:29]) == NS


def test_rows_encode_to_json_objects_keyed_by_entity() -> None:
    rows = [
        (NS, "s-1", 12.5, 3, True, ("a", "b"), {"x": 1.0}, {"k": "v"}, None),
        (NS + 1_000_000_000, "s-2", float("nan"), -1, False, (), {"y": float("inf")}, {}, "n"),
    ]
    out = encode_rows(T, rows)
    assert [k for k, _ in out] == [b"s-1", b"s-2"]
    docs = [json.loads(v) for _, v in out]
    assert docs[0] == {
        "time": "2025-07-19T12:34:56.789123456Z",
        "session_id": "s-1",
        "speed": 12.5,
        "count": 3,
        "ok": True,
        "tags": ["a", "b"],
        "metrics": {"x": 1.0},
        "info": {"k": "v"},
        "note": None,
    }
    assert list(docs[0]) == list(T.column_names)  # column order
    assert docs[1]["time"] == "2025-07-19T12:34:57.789123456Z"
    assert docs[1]["speed"] is None and docs[1]["metrics"] == {"y": None}  # not valid JSON else


def test_epoch_ns_timestamps_and_tables_without_entity() -> None:
    u = Table("u", (Column("t", ColType.TIMESTAMP), Column("v", ColType.INT64)), "t", ("t",))
    ((key, value),) = encode_rows(u, [(NS, 7)], "epoch_ns")
    assert key is None
    assert json.loads(value) == {"t": NS, "v": 7}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("MSG_SIZE_TOO_LARGE", "rejected"),
        ("TOPIC_EXCEPTION", "rejected"),
        ("INVALID_RECORD", "rejected"),
        ("_UNKNOWN_TOPIC", "deployment"),
        ("UNKNOWN_TOPIC_OR_PART", "deployment"),
        ("TOPIC_AUTHORIZATION_FAILED", "deployment"),
        ("_MSG_TIMED_OUT", "retryable"),
        ("_TRANSPORT", "retryable"),
        ("_ALL_BROKERS_DOWN", "retryable"),
        ("REQUEST_TIMED_OUT", "retryable"),
        ("NOT_ENOUGH_REPLICAS", "retryable"),
    ],
)
def test_error_classification(name: str, kind: str) -> None:
    from confluent_kafka import KafkaError

    assert classify_kafka_error(int(getattr(KafkaError, name))) == kind


def test_sink_settings() -> None:
    s = KafkaSinkSettings(
        bootstrap_servers="127.0.0.1:9092",
        topics={"nodes": "node-data"},
        topic_prefix="os.",
        extra={"linger.ms": 20},
    )
    assert s.topic_for("nodes") == "node-data"
    assert s.topic_for("interfaces") == "os.interfaces"
    conf = s.producer_config()
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["linger.ms"] == 20  # extra wins
    with pytest.raises(ValidationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSinkSettings(bootstrap_servers="")
    with pytest.raises(ValidationError):
        KafkaSinkSettings(bootstrap_servers="x:1", timestamp_format="iso")  # type: ignore[arg-type]
