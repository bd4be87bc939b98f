"""The scale-out topology's processes when things go wrong. ``serve --sink kafka`` (the
HTTP tier) when the broker goes away: /health says so within seconds (it said healthy
until the first delivery timed out, ~35 s), and SIGTERM keeps to
ORBITSTREAM_SHUTDOWN_TIMEOUT (a delivery in flight waited out its 30 s message timeout,
twice for two batches: 53 s with a 10 s timeout), every accepted point in the dead-letter
file. A worker on the embedded store says it is not shared."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import http, post_json
from tests.support.kafka import TansuBroker
from tests.support.runner import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _points(n: int, start: int) -> list[dict[str, object]]:
    return [
        {
            "satellite_id": f"SAT-{(start + i) % 7:04d}",
            "battery_charge_percent": 50.0,
            "storage_usage_mb": 1000.0 + start + i,
            "signal_strength_dbm": -70.0,
        }
        for i in range(n)
    ]


def test_the_tier_reports_a_lost_broker_and_stops_within_its_timeout(
    tmp_path: Path, broker: TansuBroker
) -> None:
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "BATCH_SIZE": "100",
        "BATCH_TIMEOUT": "100ms",
        "ORBITSTREAM_SHUTDOWN_TIMEOUT": "5s",
    }
    tier = Running(env, "--sink", "kafka", command="serve")
    try:
        status, doc = post_json(tier.url + "/telemetry/batch", _points(50, 0))
        assert status == 202, doc
        broker.stop()
        stopped_at = time.monotonic()
        for k in range(1, 4):
            status, doc = post_json(tier.url + "/telemetry/batch", _points(100, 100 * k))
            assert status == 202, doc  # accepted into the buffer (ack mode memory)
        while True:
            status, _, body = http("GET", tier.url + "/health", timeout=5)
            if status == 503:
                break
            assert time.monotonic() - stopped_at < 20, body  # ping every 5 s
            time.sleep(0.5)
        assert json.loads(body)["sinks"]["kafka"]["status"] == "down", body
    finally:
        began = time.monotonic()
        assert tier.stop() == 0, tier.log.read_text()[-3000:]
        took = time.monotonic() - began
    assert took < 5 + 8, (took, tier.log.read_text()[-3000:])
    spilled = [
        json.loads(line)
        for line in (tmp_path / "data" / "dead_letters.jsonl").read_text().splitlines()
    ]
    ids = {(r["row"]["satellite_id"], r["row"]["storage_usage_mb"]) for r in spilled}
    want = {
        (p["satellite_id"], p["storage_usage_mb"])
        for k in range(1, 4)
        for p in _points(100, 100 * k)
    }
    assert want <= ids, len(want - ids)


def test_a_worker_on_the_embedded_store_warns_that_it_is_not_shared(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ORBITSTREAM_LOG_FORMAT": "json",
    }
    env.pop("DATABASE_URL", None)
    worker = Running(env, "satellites", "--source", "kafka")
    assert worker.stop() == 0
    records = [json.loads(x) for x in worker.log.read_text().splitlines() if x.startswith("{")]
    warned = [r for r in records if r["message"].startswith("Kafka workers on the embedded")]
    assert len(warned) == 1 and warned[0]["level"] == "warning", records[:5]
    assert "DATABASE_URL" in warned[0]["message"]
