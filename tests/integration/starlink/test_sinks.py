"""The Starlink tables on every store: the same mapped responses written to a ClickHouse
server (chDB behind the HTTP front, through clickhouse-connect) and to PostgreSQL (maps as
``jsonb``), read back exactly."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from orbitstream.core.batch import Batch
from orbitstream.core.protocols import Sink
from orbitstream.pipelines.starlink import StarlinkMapper, body_digest, tables
from orbitstream.simulate.starlink import (
    COLUMNS,
    DEVICE_TYPES,
    ROUTER_ALERTS,
    UT_ALERTS,
    Fleet,
    FleetConfig,
)
from tests.conftest import _has_chdb, require

pytestmark = pytest.mark.integration

TABLES = tables(retention_days=30)


def responses(n: int = 3) -> list[bytes]:
    fleet = Fleet(
        FleetConfig(
            terminals=8,
            routers_per_terminal=1.0,
            seed=9,
            start_ns=time.time_ns() - 3_600_000_000_000,
            alert_open_probability=0.3,
            tombstone_probability=0.05,
        )
    )
    out = []
    for _ in range(n):
        values = fleet.tick() + fleet.tick()
        out.append(
            msgspec.json.encode(
                {
                    "data": {"values": values, "columnNamesByDeviceType": COLUMNS},
                    "metadata": {
                        "enums": {
                            "DeviceType": DEVICE_TYPES,
                            "AlertsByDeviceType": {
                                "u": {str(k): v for k, v in UT_ALERTS.items()},
                                "r": {str(k): v for k, v in ROUTER_ALERTS.items()},
                            },
                        }
                    },
                }
            )
        )
    return out


async def write_all(sink: Sink) -> dict[str, list[tuple[object, ...]]]:
    mapper = StarlinkMapper()
    written: dict[str, list[tuple[object, ...]]] = {t.name: [] for t in TABLES}
    for body in responses():
        mapping = mapper.map(body, time.time_ns())
        for table in TABLES:
            rows = mapping.rows[table.name]
            if rows:
                batch = Batch(table, rows, f"starlink:{table.name}:{body_digest(body)}")
                await sink.write(batch)
                await sink.write(batch)  # a retry: stored once
                written[table.name] += rows
        mapper.commit(mapping)
    assert written["alert_events"] and written["ip_allocations"] and written["alerts"]
    return written


@pytest.fixture
async def clickhouse(tmp_path: Path) -> AsyncIterator[Any]:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.sinks.clickhouse import ClickHouseSettings
    from orbitstream.sinks.clickhouse.sink import ClickHouseSink
    from tests.support.clickhouse_front import ClickHouseFront

    front = ClickHouseFront(tmp_path / "front").start()
    sink = ClickHouseSink(
        ClickHouseSettings(url=front.url, database=f"starlink_{uuid.uuid4().hex[:8]}")
    )
    await sink.start(list(TABLES))
    try:
        yield sink
    finally:
        await sink.close()
        front.stop()


async def test_clickhouse_server_stores_the_starlink_tables(clickhouse: Any) -> None:
    written = await write_all(clickhouse)
    for table, rows in written.items():
        res = await clickhouse.query(f"SELECT count() FROM {table}")
        assert int(str(res.rows[0][0])) == len(rows), table
    res = await clickhouse.query(
        "SELECT device_id, toString(toUnixTimestamp64Nano(ts_ns)), metrics, info, ipv4 "
        "FROM telemetry"
    )
    stored = {(d, int(t)): (m, i, v4) for d, t, m, i, v4 in res.rows}
    for row in written["telemetry"]:
        metrics, info, v4 = stored[(str(row[1]), int(str(row[2])))]
        assert {k: float(v) for k, v in dict(metrics).items()} == row[3]
        assert dict(info) == row[4] and tuple(v4) == row[5]


async def test_postgres_stores_the_starlink_tables_with_jsonb_maps() -> None:
    from orbitstream.sinks.postgres.settings import PostgresSettings
    from orbitstream.sinks.postgres.sink import PostgresSink
    from tests.integration.postgres.conftest import require_server, server_url, with_database

    admin = server_url()
    require_server(admin)
    name = f"os_starlink_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    sink = PostgresSink(PostgresSettings(dsn=with_database(admin, name), max_connections=4))
    try:
        await sink.start(list(TABLES))
        written = await write_all(sink)
        async with await psycopg.AsyncConnection.connect(with_database(admin, name)) as conn:
            for table, rows in written.items():
                cur = await conn.execute(f"SELECT count(*) FROM {table}")
                got = await cur.fetchone()
                assert got is not None and got[0] == len(rows), table
            cur = await conn.execute(
                "SELECT device_id, (extract(epoch from ts_ns) * 1000000)::bigint, metrics, info,"
                " ipv4, jsonb_typeof(metrics) FROM telemetry"
            )
            # timestamptz keeps microseconds: router rows' nanoseconds are cut there
            stored = {(r[0], r[1]): r[2:] for r in await cur.fetchall()}
        assert len(stored) == len(written["telemetry"])
        for row in written["telemetry"]:
            metrics, info, v4, kind = stored[(row[1], int(str(row[2])) // 1000)]
            assert kind == "object" and metrics == row[3] and info == row[4]
            assert tuple(v4) == row[5]
    finally:
        await sink.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
