"""A Kafka broker outage shows in ``/health``: ``orbitstream run sessions`` against a broker
of its own (Tansu) answers 200 while the broker is up, 503 naming
``KAFKA_BOOTSTRAP_SERVERS`` once no broker has been reachable for a few seconds, and 200
again after the broker is back on the same address."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import http
from tests.integration.kafka.support import SESSION_TIMEOUT_MS
from tests.support.kafka import TansuBroker
from tests.support.runner import Running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _health(url: str) -> tuple[int, dict[str, Any]]:
    status, _, body = http("GET", url + "/health", timeout=5)
    doc: dict[str, Any] = json.loads(body)
    return status, doc


def test_a_broker_outage_is_unhealthy_until_the_broker_is_back(
    broker: TansuBroker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_LOG_FORMAT": "text",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "KAFKA_TOPIC": f"sessions-{tag}",
        "ORBITSTREAM_SESSIONS__CONSUMER_GROUP": f"jupiter-{tag}",
        "ORBITSTREAM_SESSIONS__DEAD_LETTER_TOPIC": f"sessions-dlt-{tag}",
    }
    env.pop("KAFKA_CONSUMER_GROUP", None)
    env.pop("KAFKA_BOOTSTRAP", None)
    run = Running(env, "sessions")
    try:

        def source() -> dict[str, Any]:
            src: dict[str, Any] = _health(run.url)[1]["pipelines"]["sessions"]["source"]
            return src

        wait_until(lambda: (source().get("brokers") or {}).get("up"), 30)
        assert _health(run.url)[0] == 200

        broker.stop()
        wait_until(lambda: _health(run.url)[0] == 503, 40)
        status, doc = _health(run.url)
        pipeline = doc["pipelines"]["sessions"]
        assert status == 503 and doc["status"] == "unhealthy"
        assert pipeline["status"] == "unhealthy"
        assert "KAFKA_BOOTSTRAP_SERVERS" in pipeline["source"]["problem"]
        assert pipeline["source"]["brokers"]["down_secs"] >= 5
        assert pipeline["sinks"]["chdb"]["status"] == "up"  # the store is fine

        broker.start()  # the same address
        wait_until(lambda: _health(run.url)[0] == 200, 60)
        assert "problem" not in source()
        assert run.stop() == 0
    finally:
        run.kill()
