"""Stop PostgreSQL during a 30-second load: the service keeps answering (503 with
Retry-After once its buffer is full, never a crash), /health shows the sink down, and after
recovery every acknowledged point is in the store exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.conftest import ServiceProcess
from tests.support.pgcluster import TempCluster, started_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = {"battery_charge_percent": 55.0, "storage_usage_mb": 1000.0, "signal_strength_dbm": -60.0}


@pytest.fixture
def cluster() -> Iterator[TempCluster]:
    with started_cluster() as c:
        yield c


def test_postgres_outage_during_load(cluster: TempCluster, service_factory: Any) -> None:
    svc: ServiceProcess = service_factory(
        {
            "DATABASE_URL": cluster.url,
            "BATCH_SIZE": "500",
            "BATCH_TIMEOUT": "200ms",
            "ORBITSTREAM_MAX_BUFFER_ROWS": "20000",
            "ORBITSTREAM_RETRY_MAX_BACKOFF": "1s",
        }
    )
    acked: list[str] = []
    statuses: Counter[int] = Counter()
    health_seen: list[tuple[float, int, str]] = []

    async def load(stop_at: float) -> None:
        counter = 0

        async def worker(session: aiohttp.ClientSession, wid: int) -> None:
            nonlocal counter
            while time.monotonic() < stop_at:
                counter += 1
                batch = [{"satellite_id": f"PG-{wid}-{counter}-{k}", **GOOD} for k in range(20)]
                try:
                    async with session.post(svc.url + "/telemetry/batch", json=batch) as r:
                        statuses[r.status] += 1
                        doc = await r.json()
                        if r.status == 202:
                            assert doc["accepted"] == 20
                            acked.extend(str(p["satellite_id"]) for p in batch)
                        elif r.status == 503:
                            assert int(r.headers["Retry-After"]) >= 1
                            await asyncio.sleep(0.2)
                except (aiohttp.ClientError, OSError) as exc:  # the service must not go away
                    raise AssertionError(f"service stopped answering: {exc!r}") from exc
                await asyncio.sleep(0.005)

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session, i) for i in range(8)))

    async def watch_health(stop_at: float) -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop_at:
                async with session.get(svc.url + "/health") as r:
                    doc = await r.json()
                    health_seen.append(
                        (time.monotonic(), r.status, doc["sinks"]["postgres"]["status"])
                    )
                await asyncio.sleep(0.5)

    async def scenario() -> None:
        start = time.monotonic()
        stop_at = start + 18
        tasks = [asyncio.ensure_future(load(stop_at)), asyncio.ensure_future(watch_health(stop_at))]
        await asyncio.sleep(4)
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(7)  # the buffer (20,000 rows) fills within a few seconds
        await asyncio.to_thread(cluster.start)
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert svc.proc is not None and svc.proc.poll() is None, "service crashed"
    assert statuses[202] > 50
    assert statuses[503] > 0, "the buffer should have filled during the outage"
    assert any(code == 503 and state == "down" for _, code, state in health_seen)
    assert health_seen[-1][1] == 200 or _wait_healthy(svc)

    deadline = time.monotonic() + 60
    stored: list[str] = []
    while time.monotonic() < deadline:
        with psycopg.connect(cluster.url) as conn:
            stored = [r[0] for r in conn.execute("SELECT satellite_id FROM telemetry").fetchall()]
        if len(stored) >= len(acked):
            break
        time.sleep(0.5)
    counts = Counter(stored)
    assert not [k for k, n in counts.items() if n > 1], "duplicates in the store"
    assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged points lost"
    assert svc.stop() == 0


def _wait_healthy(svc: ServiceProcess) -> bool:
    from tests.conftest import http

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http("GET", svc.url + "/health")[0] == 200:
            return True
        time.sleep(0.5)
    return False


def test_health_notices_a_store_that_went_down_while_idle(
    cluster: TempCluster, service_factory: Any
) -> None:
    svc: ServiceProcess = service_factory(
        {"DATABASE_URL": cluster.url, "ORBITSTREAM_HEALTH_CHECK_INTERVAL": "1s"}
    )
    status, body = _health(svc)
    assert status == 200
    cluster.stop()  # nothing is being written: only the service's own ping can tell
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and status == 200:
        time.sleep(0.5)
        status, body = _health(svc)
    assert status == 503 and body["sinks"]["postgres"]["status"] == "down", body
    cluster.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and status != 200:
        time.sleep(0.5)
        status, body = _health(svc)
    assert status == 200, body


def _health(svc: ServiceProcess) -> tuple[int, Any]:
    import json

    from tests.conftest import http

    status, _, raw = http("GET", svc.url + "/health", timeout=10)
    return status, json.loads(raw)
