"""``orbitstream run satellites --source kafka`` on the embedded store: an array message
with bad points keeps its good ones, and each bad point reaches the dead-letter topic on
its own — its JSON as the value, its index in ``orbitstream.source.element``, the array's
source position in the other headers — as ``/telemetry/batch`` keeps the good points of a
batch."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import http
from tests.integration.kafka.support import header_map, new_topic, produce, read_all
from tests.support.runner import Running, wait_until

pytestmark = [pytest.mark.integration]


def test_an_array_keeps_its_good_points_and_dead_letters_each_bad_one(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = new_topic(kafka_bootstrap, 1, "sat-raw")
    dlt = f"sat-dlt-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)
    good = [
        {
            "satellite_id": f"SAT-{i}",
            "battery_charge_percent": 50.0,
            "storage_usage_mb": 10.0,
            "signal_strength_dbm": -60.0,
            "timestamp": now.isoformat(),
        }
        for i in range(3)
    ]
    too_high = {**good[0], "satellite_id": "SAT-X", "battery_charge_percent": 150.0}
    ahead = {
        **good[0],
        "satellite_id": "SAT-Y",
        "timestamp": (now + dt.timedelta(days=30)).isoformat(),
    }
    produce(
        kafka_bootstrap,
        topic,
        [
            json.dumps([good[0], too_high, good[1], ahead]).encode(),
            json.dumps(good[2]).encode(),
            b"{not json",
            b"[]",
        ],
    )
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ORBITSTREAM_SATELLITES__KAFKA_TOPIC": topic,
        "ORBITSTREAM_SATELLITES__DEAD_LETTER_TOPIC": dlt,
        "KAFKA_CONSUMER_GROUP": f"w-{uuid.uuid4().hex[:8]}",
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "ORBITSTREAM_KAFKA_LINGER": "100ms",
        "BATCH_TIMEOUT": "100ms",
    }
    env.pop("DATABASE_URL", None)
    worker = Running(env, "satellites", "--source", "kafka")
    try:
        count = "SELECT count() FROM telemetry"
        wait_until(lambda: int(worker.query(count, "satellites")[0][0]) >= 3, 40)
        rows = worker.query("SELECT satellite_id FROM telemetry ORDER BY 1", "satellites")
        assert [r[0] for r in rows] == ["SAT-0", "SAT-1", "SAT-2"]
        # messages: received = accepted (in full or in part, or nothing to take) +
        # rejected (whole); the dead records by kind
        _, _, text = http("GET", worker.url + "/metrics")
        got = _counters(text.decode())
        assert (got["received"], got["accepted"], got["rejected"]) == (4, 3, 1), got
        assert got["ignored_messages"] == 1 and got["source_errors"] == 3, got
    finally:
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    letters = read_all(kafka_bootstrap, dlt, 3)
    assert len(letters) == 3
    by_offset: dict[tuple[int, bytes | None], tuple[bytes, str]] = {}
    for m in letters:
        h = header_map(m)
        assert h["orbitstream.source.topic"] == topic.encode()
        key = (int(h["orbitstream.source.offset"]), h.get("orbitstream.source.element"))
        by_offset[key] = (m.value() or b"", h["orbitstream.error"].decode())
    assert set(by_offset) == {(0, b"1"), (0, b"3"), (2, None)}
    value, error = by_offset[(0, b"1")]
    assert json.loads(value) == too_high and "$[1].battery_charge_percent" in error
    value, error = by_offset[(0, b"3")]
    assert json.loads(value) == ahead and error.startswith("invalid_timestamp: $[3].timestamp")
    value, error = by_offset[(2, None)]
    assert value == b"{not json" and error.startswith("decode")


def _counters(metrics: str) -> dict[str, float]:
    """``orbitstream_<name>_total{pipeline="satellites"…}``, summed over other labels."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("orbitstream_") and 'pipeline="satellites"' in line:
            name = line.split("{", 1)[0][len("orbitstream_") :].removesuffix("_total")
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
