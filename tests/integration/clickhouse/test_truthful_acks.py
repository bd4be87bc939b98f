"""In ``sink`` ack mode a 202 means committed: rows a store refused are reported as such,
and rows still unwritten at shutdown make the request fail."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from orbitstream.sinks.clickhouse import ClickHouseSettings
from orbitstream.sinks.deadletter import read_dead_letter_file
from tests.conftest import ServiceProcess, post_json
from tests.support.clickhouse_front import ClickHouseFront

pytestmark = pytest.mark.integration

GOOD = {"battery_charge_percent": 50.0, "storage_usage_mb": 1.0, "signal_strength_dbm": -40.0}
TELEMETRY_INSERT = r"INSERT INTO `[^`]+`\.`telemetry`"


def start(factory: Any, front: ClickHouseFront, settings: ClickHouseSettings, **env: str) -> Any:
    dsn = front.url.replace("http://", "clickhouse://") + "/" + settings.database
    return factory(
        {"DATABASE_URL": dsn, "BATCH_TIMEOUT": "50ms", "ORBITSTREAM_ACK_MODE": "sink", **env}
    )


def test_a_point_the_store_refuses_is_not_acknowledged_as_committed(
    service_factory: Any, clickhouse_front: ClickHouseFront, ch_settings: ClickHouseSettings
) -> None:
    svc: ServiceProcess = start(service_factory, clickhouse_front, ch_settings)
    clickhouse_front.fail_next_with_code(
        50, code=27, status=400, message="Cannot parse input", match=TELEMETRY_INSERT
    )
    status, doc = post_json(svc.url + "/telemetry", {"satellite_id": "R-1", **GOOD})
    assert status == 422, doc
    assert doc["dead_lettered"] == {"clickhouse": 1}
    assert "Cannot parse input" in doc["errors"][0]["message"]
    clickhouse_front.reset()
    # rows that were fine after all (a refusal that bisecting shows was not theirs) commit
    clickhouse_front.fail_next_with_code(1, code=27, status=400, match=TELEMETRY_INSERT)
    status, doc = post_json(
        svc.url + "/telemetry/batch", [{"satellite_id": f"B-{i}", **GOOD} for i in range(8)]
    )
    assert status == 202 and doc["status"] == "accepted" and "dead_lettered" not in doc, doc
    assert svc.count(where="satellite_id LIKE 'B-%'") == 8
    assert svc.count(where="satellite_id = 'R-1'") == 0


def test_rows_unwritten_at_shutdown_fail_their_request(
    service_factory: Any, clickhouse_front: ClickHouseFront, ch_settings: ClickHouseSettings
) -> None:
    svc: ServiceProcess = start(
        service_factory, clickhouse_front, ch_settings, ORBITSTREAM_SHUTDOWN_TIMEOUT="1s"
    )
    clickhouse_front.down = True
    answer: dict[str, Any] = {}

    def send() -> None:
        answer["r"] = post_json(
            svc.url + "/telemetry/batch",
            [{"satellite_id": f"S-{i}", **GOOD} for i in range(5)],
            timeout=60,
        )

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # the request waits for a commit that cannot happen
    assert svc.stop(signal.SIGTERM) == 0
    sender.join(30)
    status, doc = answer["r"]
    assert status == 503, doc
    assert doc["spilled"] == {"clickhouse": 5} and "not committed" in doc["error"]
    spilled = read_dead_letter_file(svc.data_dir / "dead_letters.jsonl")
    ids = sorted(
        str(d["row"]["satellite_id"])  # type: ignore[index]
        for d in spilled
        if d["table"] == "telemetry"
    )
    assert ids == [f"S-{i}" for i in range(5)]
