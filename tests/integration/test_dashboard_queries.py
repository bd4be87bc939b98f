"""Dashboard queries on chDB: totals from the rollup, latest values from recent rows only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orbitstream.core.batch import Batch
from orbitstream.dashboard.queries import DashboardQueries
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.chdb import ChdbSink

pytestmark = pytest.mark.integration


async def test_summary_counts_from_rollup_and_marks_silent_satellites_stale(tmp_path: Path) -> None:
    telemetry, alerts = tables()
    store = ChdbSink(tmp_path / "chdb")
    await store.start([telemetry, alerts])
    now = time.time_ns()
    old = now - 20 * 60 * 10**9  # 20 minutes ago: outside the 5-minute "latest" window
    recent: list[tuple[object, ...]] = [
        (
            now - i * 10**6,
            "SAT-A",
            80.0 - i,
            1000.0,
            -60.0,
            i == 0,
            ("battery_low",) if i == 0 else (),
            now,
        )
        for i in range(30)
    ]
    silent: list[tuple[object, ...]] = [
        (old - i * 10**6, "SAT-B", 50.0, 2000.0, -70.0, False, (), old) for i in range(12)
    ]
    rows = recent + silent
    try:
        await store.write(Batch(telemetry, rows, "dash"))
        summary = await DashboardQueries(store).summary()
        by_id = {s["satellite_id"]: s for s in summary["satellites"]}
        assert summary["total_points"] == 42 and summary["total_anomalies"] == 1
        assert by_id["SAT-A"]["points"] == 30 and by_id["SAT-A"]["battery"] == 80.0
        assert by_id["SAT-A"]["status"] == "anomaly"
        assert by_id["SAT-B"]["points"] == 12 and by_id["SAT-B"]["status"] == "stale"
        assert by_id["SAT-B"]["battery"] is None and by_id["SAT-B"]["last_seen"] is not None
        assert summary["ingest_rate"] == pytest.approx(
            30.0, rel=0.05
        )  # the 30 recent points, 1 s span floor
        assert summary["anomaly_rate"] == pytest.approx(1 / 30)
        raw = await store.query("SELECT count() FROM telemetry")
        assert raw.rows == [(42,)]
    finally:
        await store.close()
