"""The scale-out topology (docs/scaling.md) with real processes: ``orbitstream serve
--sink kafka`` takes satellite points over HTTP and publishes them to a 4-partition raw
topic; two ``orbitstream run satellites --source kafka`` workers in one consumer group
write them to one PostgreSQL store. One worker is killed with SIGKILL mid-stream; the
other takes over its partitions, and at the end every point is in the store exactly
once, with its values, and the group's offsets cover every message."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import http, post_json, rfc3339
from tests.integration.kafka.support import SESSION_TIMEOUT_MS, committed, new_topic
from tests.integration.postgres.conftest import fresh_database
from tests.support.runner import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SATELLITES = 40
ROUNDS = 50  # points per satellite


def _env(tmp: Path, name: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp / name / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_LOG_LEVEL": "info",
        "ORBITSTREAM_LOG_FORMAT": "text",
        "BATCH_TIMEOUT": "100ms",
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "ORBITSTREAM_KAFKA_LINGER": "200ms",
        "ORBITSTREAM_KAFKA_CHUNK_MESSAGES": "200",
        "ORBITSTREAM_KAFKA_REVOKE_TIMEOUT": "10s",
        **extra,
    }
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return env


def _assigned(worker: Running) -> int:
    _status, doc = _health(worker)
    src = doc["pipelines"]["satellites"]["source"]
    return len(src.get("partitions", {}))


def _health(run: Running) -> tuple[int, dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(run.url + "/health", timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _points(round_: int, t0: float) -> list[dict[str, Any]]:
    return [
        {
            "satellite_id": f"SAT-{s:04d}",
            "battery_charge_percent": float((s + round_) % 100),
            "storage_usage_mb": float(round_ * 10 + s),
            "signal_strength_dbm": -50.0 - s % 30,
            "timestamp": rfc3339(t0 + round_ * 0.01),
        }
        for s in range(SATELLITES)
    ]


def test_two_workers_one_killed_every_point_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, 4, "sat-raw")
    group = f"workers-{uuid.uuid4().hex[:8]}"
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ORBITSTREAM_SATELLITES__KAFKA_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group,
    }
    with fresh_database() as dsn:
        tier = Running(
            _env(tmp_path, "tier", **common, ORBITSTREAM_ACK_MODE="sink"),
            "--sink",
            "kafka",
            command="serve",
        )
        w1 = Running(
            _env(tmp_path, "w1", **common, DATABASE_URL=dsn), "satellites", "--source", "kafka"
        )
        w2 = Running(
            _env(tmp_path, "w2", **common, DATABASE_URL=dsn), "satellites", "--source", "kafka"
        )
        try:
            _wait(
                lambda: (
                    _assigned(w1) + _assigned(w2) == 4 and _assigned(w1) > 0 and _assigned(w2) > 0
                ),
                40,
                "both workers hold partitions",
            )
            t0 = time.time() - 60
            sent = 0
            for r in range(ROUNDS):
                status, doc = post_json(tier.url + "/telemetry/batch", _points(r, t0))
                assert status in (200, 202), doc
                sent += SATELLITES
                if r == ROUNDS // 2:
                    w1.kill()  # SIGKILL mid-stream: no commit, no clean revoke
            with psycopg.connect(dsn) as conn:

                def count() -> int:
                    row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
                    conn.commit()
                    return int(row[0]) if row else 0

                _wait(lambda: count() >= sent and _assigned(w2) == 4, 60, "w2 wrote every point")
                time.sleep(1.5)  # nothing more arrives
                assert count() == sent
                distinct = conn.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT satellite_id, time FROM telemetry) d"
                ).fetchone()
                assert distinct is not None and int(distinct[0]) == sent
                got = conn.execute(
                    "SELECT storage_usage_mb FROM telemetry WHERE satellite_id = 'SAT-0007' "
                    "ORDER BY time"
                ).fetchall()
                assert [float(g[0]) for g in got] == [float(r * 10 + 7) for r in range(ROUNDS)]
                # alerts are the workers' (they see every point of a satellite, in
                # order): stored and logged there; the tier, which stores none, neither
                # counts nor logs them
                alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()
                assert alerts is not None and int(alerts[0]) > 0
            assert "Anomaly alert fired" in w2.log.read_text()
            assert "Anomaly alert" not in tier.log.read_text()
            _, _, metrics = http("GET", tier.url + "/metrics")
            assert "orbitstream_alerts_total{" not in metrics.decode()
            offsets = committed(kafka_bootstrap, group, topic, 4)
            _wait(
                lambda: sum(committed(kafka_bootstrap, group, topic, 4).values()) == sent,
                20,
                f"offsets committed: {offsets}",
            )
        finally:
            w1.kill()
            for run in (w2, tier):
                code = run.stop()
                assert code == 0, run.log.read_text()[-3000:]
