"""The simulator drives the real service; every acknowledged point is in the store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orbitstream.simulate import SimulatorConfig, run_simulation
from tests.conftest import ServiceProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("batch", [0, 50])
def test_every_acknowledged_point_is_stored_with_its_content(
    service_factory: Any, batch: int
) -> None:
    svc: ServiceProcess = service_factory({"BATCH_TIMEOUT": "200ms"})
    cfg = SimulatorConfig(
        satellites=20,
        rate=50.0,
        api_url=svc.url,
        duration=3.0,
        anomaly_rate=0.05,
        batch=batch,
        connections=16,
        seed=7,
        record_accepted=True,
        live=False,
    )
    summary = asyncio.run(run_simulation(cfg))
    assert summary.accepted_points is not None
    acked = set(summary.accepted_points)
    assert summary.accepted == len(acked) > 2000
    assert summary.rejected == 0 and summary.errors == 0
    assert svc.wait_count(len(acked)) == len(acked)
    rows = svc.query(
        "SELECT satellite_id, toUnixTimestamp64Nano(time), battery_charge_percent, "
        "storage_usage_mb, signal_strength_dbm, is_anomaly, anomaly_reasons FROM telemetry"
    )
    stored = {(r[0], int(r[1])) for r in rows}
    assert stored == acked
    assert summary.accepted_values is not None
    for sid, t, battery, storage, signal, is_anomaly, reasons in rows:
        assert (battery, storage, signal) == summary.accepted_values[(sid, int(t))]  # exact content
        assert 0 <= battery <= 100 and storage >= 0 and -200 <= signal <= 0
        expected = [
            name
            for name, hit in (
                ("battery_low", battery < 10),
                ("storage_high", storage > 95000),
                ("signal_weak", signal < -100),
            )
            if hit
        ]
        assert reasons == expected and is_anomaly == bool(expected)
    assert any(r[5] for r in rows), "injected anomalies should be flagged"
    firing = svc.count("alerts", "state = 'firing'")
    assert firing >= 1
