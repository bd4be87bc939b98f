"""Logging: librdkafka's lines through :class:`KafkaClientLog` (structured records, the
first of each (client, facility, level) at once, repeats folded into one per window with a
count), and libraries' detail-less lines kept quiet."""

from __future__ import annotations

import logging

import pytest

from orbitstream.logging import KafkaClientLog, kafka_client_log

LINE = "[thrd:b/bootstrap]: b/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"


def test_repeats_are_folded_into_one_line_per_window_with_their_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("orbitstream.logging.time.monotonic", lambda: clock[0])
    log = KafkaClientLog(window_secs=60.0, name="test.kafka.client")
    with caplog.at_level(logging.DEBUG, logger="test.kafka.client"):
        for _ in range(200):  # librdkafka repeats a refused connection every ~50 ms
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", LINE)
            clock[0] += 0.05
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-2", LINE)  # another client
        log.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", LINE)  # another level
        clock[0] += 60.0
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", LINE)
    got = [
        (r.levelno, r.client, r.facility, r.suppressed)  # type: ignore[attr-defined]
        for r in caplog.records
    ]
    assert got == [
        (logging.ERROR, "rdkafka#consumer-1", "FAIL", 0),
        (logging.ERROR, "rdkafka#producer-2", "FAIL", 0),
        (logging.WARNING, "rdkafka#consumer-1", "FAIL", 0),
        (logging.ERROR, "rdkafka#consumer-1", "FAIL", 199),
    ]
    assert all(r.getMessage() == "Kafka client reports." for r in caplog.records)
    assert caplog.records[0].detail == LINE  # type: ignore[attr-defined]


def test_a_users_own_logger_stands() -> None:
    mine = logging.getLogger("mine")
    assert kafka_client_log({"logger": mine})["logger"] is mine
    assert isinstance(kafka_client_log({})["logger"], KafkaClientLog)


def test_libraries_that_log_without_detail_before_raising_are_quiet() -> None:
    from orbitstream.logging import configure_logging

    configure_logging("info", "json")
    backend = logging.getLogger("clickhouse_connect.driver._backend.http_sync")
    assert not backend.isEnabledFor(logging.WARNING)  # its "Unexpected Http Driver Exception"
    assert backend.isEnabledFor(logging.ERROR)
    assert logging.getLogger("orbitstream.sinks").isEnabledFor(logging.INFO)
