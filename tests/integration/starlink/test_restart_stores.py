"""The starlink pipeline across a restart on every store (chDB, PostgreSQL, a ClickHouse
server: chDB behind the HTTP front):

- near-duplicate rows whose two copies straddle a restart land once (the recent keys are
  read back from the store at start, at the store's timestamp precision);
- ``orbitstream run starlink`` as a process against the fake on PostgreSQL and on the
  ClickHouse front: every served row once through a SIGTERM restart, alert events and
  terminal addresses equal to one uninterrupted mapping (the state-restore SQL of the
  store), ``/api/dashboard/starlink`` answers from the store.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg
import pytest

from orbitstream.core.metrics import Metrics
from orbitstream.core.protocols import Store
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.starlink import StarlinkEnvelopeError, StarlinkMapper
from orbitstream.simulate.starlink import (
    COLUMNS,
    DEVICE_TYPES,
    ROUTER_ALERTS,
    UT_ALERTS,
    FakeStarlinkConfig,
    Fault,
    Fleet,
    FleetConfig,
)
from orbitstream.sources.starlink import StarlinkIngest
from tests.conftest import _has_chdb, http, require
from tests.integration.postgres.conftest import fresh_database
from tests.integration.starlink.conftest import fleet
from tests.integration.starlink.test_end_to_end import TABLES, Pipeline, expected_rows
from tests.integration.starlink.test_run_cli import ThreadedFake, _env
from tests.support.clickhouse_front import ClickHouseFront
from tests.support.runner import Running, wait_until

pytestmark = pytest.mark.integration

STORES = ("chdb", "postgres", "clickhouse")


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind: str = request.param
    if kind == "chdb":
        require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
        from orbitstream.sinks.chdb import ChdbSink

        sink: Any = ChdbSink(tmp_path / "store")
        await sink.start(TABLES)
        try:
            yield sink
        finally:
            await sink.close()
    elif kind == "postgres":
        from orbitstream.sinks.postgres.settings import PostgresSettings
        from orbitstream.sinks.postgres.sink import PostgresSink

        with fresh_database() as dsn:
            sink = PostgresSink(PostgresSettings(dsn=dsn, max_connections=4))
            await sink.start(list(TABLES))
            try:
                yield sink
            finally:
                await sink.close()
    else:
        require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
        from orbitstream.sinks.clickhouse import ClickHouseSettings
        from orbitstream.sinks.clickhouse.sink import ClickHouseSink

        front = ClickHouseFront(tmp_path / "front").start()
        sink = ClickHouseSink(ClickHouseSettings(url=front.url, database="sl"))
        await sink.start(list(TABLES))
        try:
            yield sink
        finally:
            await sink.close()
            front.stop()


def _body(values: list[Any]) -> bytes:
    return msgspec.json.encode(
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


async def _keys(store: Store, table: str) -> list[tuple[str, int]]:
    ts = (
        "(extract(epoch FROM ts_ns) * 1000000)::bigint"
        if store.query_dialect == "postgres"
        else "intDiv(toUnixTimestamp64Nano(ts_ns), 1000)"
    )
    rows = (await store.query(f"SELECT device_id, {ts} FROM {table}")).rows
    return [(str(d), int(str(t))) for d, t in rows]


async def test_near_duplicates_straddling_a_restart_land_once(store: Store) -> None:
    fl = Fleet(
        FleetConfig(
            terminals=6,
            routers_per_terminal=1.0,
            seed=5,
            start_ns=time.time_ns() - 3_600_000_000_000,
            alert_open_probability=0.4,
            duplicate_probability=0.0,
        )
    )
    first_values = fl.tick() + fl.tick() + fl.tick() + fl.tick()
    first = Pipeline(store, StarlinkMapper())  # type: ignore[arg-type]
    await first.deliver(_body(first_values), 1)
    assert first.mapper.open_alerts()

    # restart: a new mapper restored by the source's own SQL for this store
    mapper = StarlinkMapper()
    ingest = StarlinkIngest(mapper, {t.name: t for t in TABLES}, TimeWindow(), Metrics())
    opened, with_ips = await ingest.restore(store)
    unit = 1000 if store.query_dialect == "postgres" else 1
    assert sorted((t, d, c, n, o // unit) for t, d, c, n, o in mapper.open_alerts()) == sorted(
        (t, d, c, n, o // unit) for t, d, c, n, o in first.mapper.open_alerts()
    )
    assert sorted((d, ts // unit, v4) for d, ts, v4, *_ in mapper.ip_state()) == sorted(
        (d, ts // unit, v4) for d, ts, v4, *_ in first.mapper.ip_state()
    )
    assert (opened, with_ips) == (len(mapper.open_alerts()), len(mapper.ip_state()))
    assert ingest.restored_keys == sum(
        len(b.rows) for b in first.batches if b.table.name in ("telemetry", "ip_allocations")
    )

    # the next body repeats a terminal, a router and an IpAllocs row of the first one
    copies = [next(r for r in reversed(first_values) if r[0] == code) for code in "uri"]
    second = Pipeline(store, mapper)  # type: ignore[arg-type]
    body = _body([*copies, *fl.tick()])
    assert mapper.map(body, time.time_ns()).duplicates == 3
    await second.deliver(body, 2)
    for table in ("telemetry", "ip_allocations"):
        keys = await _keys(store, table)
        assert len(keys) == len(set(keys)), f"{table}: a row stored twice"
    alerts = (await store.query("SELECT device_id, ts_ns, alert_code FROM alerts")).rows
    assert len(alerts) == len({tuple(map(str, a)) for a in alerts})


# -- orbitstream run starlink as a process, on PostgreSQL and on a ClickHouse server ------


class Target:
    """Where ``run starlink`` writes (its variables) and how the test reads it back."""

    def __init__(self, kind: str, env: dict[str, str], read: Any) -> None:
        self.kind = kind
        self.env = env
        self.read = read
        self.unit = 1000 if kind == "postgres" else 1

    def ts(self, column: str = "ts_ns") -> str:
        if self.kind == "postgres":
            return f"(extract(epoch FROM {column}) * 1000000)::bigint"
        return f"toUnixTimestamp64Nano({column})"


@pytest.fixture(params=("postgres", "clickhouse"))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "postgres":
        with fresh_database(f"os_starlink_{uuid.uuid4().hex[:10]}") as dsn:

            def read_pg(sql: str) -> list[tuple[Any, ...]]:
                with psycopg.connect(dsn, options="-c search_path=starlink") as conn:
                    return conn.execute(sql).fetchall()

            yield Target(
                "postgres", {"DATABASE_URL": dsn.replace("postgresql:", "postgres:")}, read_pg
            )
        return
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    front = ClickHouseFront(tmp_path / "front").start()

    def read_ch(sql: str) -> list[tuple[Any, ...]]:
        status, _, body = http(
            "POST",
            f"{front.url}/?database={quote('starlink')}",
            (sql + " FORMAT JSONCompactEachRow").encode(),
        )
        assert status == 200, body
        return [tuple(json.loads(line)) for line in body.decode().splitlines() if line]

    try:
        yield Target(
            "clickhouse", {"DATABASE_URL": front.url.replace("http://", "clickhouse://")}, read_ch
        )
    finally:
        front.stop()


def test_run_starlink_across_a_restart(target: Target, tmp_path: Path) -> None:
    threaded = ThreadedFake(
        FakeStarlinkConfig(
            fleet=fleet(terminals=8, alert_open_probability=0.3, alert_clear_probability=0.3),
            backlog_ticks=8,
            record_bodies=True,
            reorder_columns=True,
        )
    )
    try:
        _run_twice(threaded, target, tmp_path)
    finally:
        threaded.close()


def _run_twice(threaded: ThreadedFake, target: Target, tmp_path: Path) -> None:
    f = threaded.fake
    env = {**_env(f, tmp_path), **target.env}

    def faults() -> None:  # every switch the service rides out (the stall: test_end_to_end)
        f.inject(Fault.TOKEN_429, retry_after=0.01)
        f.inject(Fault.TOKEN_500)
        f.inject(Fault.STREAM_429, retry_after=0.01)
        f.inject(Fault.STREAM_429)
        f.inject(Fault.STREAM_503, retry_after=0.01)
        for fault in (
            Fault.STREAM_500,
            Fault.STREAM_404,
            Fault.STREAM_401,
            Fault.STREAM_TRUNCATE,
            Fault.STREAM_INVALID_JSON,
        ):
            f.inject(fault)

    threaded.call(faults)
    first = Running(env, "starlink")
    try:
        wait_until(lambda: threaded.call(lambda: f.available()) == 0, 30)
        wait_until(lambda: int(target.read("SELECT count(*) FROM telemetry")[0][0]) > 0, 10)
    finally:
        assert first.stop() == 0, first.log.read_text()[-3000:]
    served_first = len(threaded.call(lambda: list(f.served)))
    assert threaded.call(lambda: f.pending_faults()) == 0  # every switch was hit

    # copies of already stored rows (a terminal, a router, an IpAllocs row), then more
    def push_copies() -> None:
        f.push([next(r for r in reversed(f.stream) if r[0] == code) for code in "uri"])
        f.extend(6)

    threaded.call(push_copies)
    second = Running(env, "starlink")
    try:
        wait_until(lambda: threaded.call(lambda: f.available()) == 0, 30)
        want = threaded.call(lambda: expected_rows(f))
        count = "SELECT count(*) FROM telemetry"
        wait_until(lambda: int(target.read(count)[0][0]) >= len(want["telemetry"]), 15)
        status, _, body = http("GET", second.url + "/health")
        source = json.loads(body)["pipelines"]["starlink"]["source"]
        assert status == 200 and source["polls"] >= 1 and source["halted"] is False
        status, _, body = http("GET", second.url + "/api/dashboard/starlink?minutes=180")
        summary = json.loads(body)
        assert status == 200, summary
    finally:
        assert second.stop() == 0, second.log.read_text()[-3000:]
    served = threaded.call(lambda: list(f.served))
    assert len(served) > served_first and not any(r.lost for r in served)

    # every served row exactly once (at the store's precision)
    u = target.unit
    keys = [(d, int(t)) for d, t in target.read(f"SELECT device_id, {target.ts()} FROM telemetry")]
    want_tel = {(d, t // u) for d, t in want["telemetry"]}
    assert len(keys) == len(set(keys)) and set(keys) == want_tel
    ips = [
        (d, int(t)) for d, t in target.read(f"SELECT device_id, {target.ts()} FROM ip_allocations")
    ]
    assert sorted(ips) == sorted((d, t // u) for d, t in want["ip_allocations"])

    # alert events and addresses: those of one mapper over the same bodies, no restart
    reference = StarlinkMapper()
    want_events: list[tuple[Any, ...]] = []
    want_ips: list[tuple[Any, ...]] = []
    open_at_restart = 0
    for i, resp in enumerate(served):
        assert resp.body is not None
        try:
            mapping = reference.map(resp.body, 0)
        except StarlinkEnvelopeError:  # pragma: no cover - truncated bodies are not served
            continue
        event_rows: list[tuple[Any, ...]] = mapping.rows["alert_events"]
        want_events += [(e[1], e[2] // u, e[3], e[5]) for e in event_rows]
        terminal_rows: list[tuple[Any, ...]] = mapping.tuples("telemetry")
        want_ips += [
            (r[1], r[2] // u, tuple(r[5])) for r in terminal_rows if r[0] == "UserTerminal"
        ]
        reference.commit(mapping)
        if i + 1 == served_first:
            open_at_restart = len(reference.open_alerts())
    assert open_at_restart > 0, "the fleet should have open alerts at the restart"
    events = [
        (d, int(t), int(c), e)
        for d, t, c, e in target.read(
            f"SELECT device_id, {target.ts()}, alert_code, event FROM alert_events"
        )
    ]
    assert sorted(events) == sorted(want_events) and len(set(events)) == len(events)
    got_ips = sorted(
        (d, int(t), tuple(v4))
        for d, t, v4 in target.read(
            f"SELECT device_id, {target.ts()}, ipv4 FROM telemetry WHERE device_type = 'UserTerminal'"
        )
    )
    assert got_ips == sorted(want_ips)

    # the dashboard view: terminals seen, alerts open now as the reference has them
    assert summary["terminals_seen"] == 8 and summary["routers_seen"] >= 1
    assert summary["alerts_open"] == len(reference.open_alerts())
    assert any(v is not None for v in summary["trend"]["latency_ms"])
