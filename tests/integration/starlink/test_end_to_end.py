"""Fake API -> client/poller -> mapper -> the embedded store (chDB): every row the fake
served is stored exactly once, alerts are named from their own response, and a restart in
the middle (state restored from the store) gives the same alert events as one run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from orbitstream.core.batch import Batch
from orbitstream.pipelines.starlink import IP_KEY, StarlinkMapper, body_digest, tables
from orbitstream.simulate.starlink import FakeStarlink, Fault
from orbitstream.sinks.chdb import ChdbSink
from orbitstream.sources.starlink_api import (
    StarlinkClient,
    StarlinkPermissionError,
    StarlinkPoller,
)
from tests.conftest import _has_chdb, require
from tests.integration.starlink.conftest import FakeFactory, fleet, settings_for

pytestmark = pytest.mark.integration

TABLES = tables(retention_days=30)


class Pipeline:
    """What the runtime does per poll: map, write every table (content-derived batch ids),
    then commit the mapper's state."""

    def __init__(self, sink: ChdbSink, mapper: StarlinkMapper) -> None:
        self.sink = sink
        self.mapper = mapper
        self.batches: list[Batch] = []

    async def deliver(self, body: bytes, number: int) -> None:
        mapping = self.mapper.map(body, time.time_ns())
        digest = body_digest(body)
        for table in TABLES:
            rows = mapping.rows[table.name]
            if rows:
                batch = Batch(table, rows, f"starlink:{table.name}:{digest}")
                await self.sink.write(batch)
                self.batches.append(batch)
        if mapping.dead:
            await self.sink.write_dead_letters(mapping.dead_letters(f"starlink:{digest}"))
        self.mapper.commit(mapping)


async def drain(fake: FakeStarlink, pipeline: Pipeline, until: int, **settings: Any) -> None:
    """Poll until the fake's position reaches ``until``, then stop after the batch in hand."""
    async with StarlinkClient(settings_for(fake, **settings)) as client:
        poller = StarlinkPoller(client, pipeline.deliver)
        task = asyncio.create_task(poller.run())
        while fake.position() < until and not task.done():
            await asyncio.sleep(0.02)
        poller.stop()
        await asyncio.wait_for(task, 30)


def expected_rows(fake: FakeStarlink) -> dict[str, Any]:
    """Keys of every served row (first copy wins), and the alerts named per response."""
    tel: dict[tuple[str, int], dict[str, Any]] = {}
    ips: set[tuple[str, int]] = set()
    alerts: set[tuple[str, int, int, str]] = set()
    for resp in fake.served:
        assert not resp.lost
        for code, row in resp.named_rows():
            ts = row["UtcTimestampNs"]
            if code == "i":
                ips.add((row["DeviceId"].removeprefix("ip-"), ts))
                continue
            key = (row["DeviceId"], ts)
            if key in tel:
                continue
            tel[key] = row
            names = resp.alert_names[code]
            for c in row["ActiveAlerts"]:
                alerts.add((row["DeviceId"], ts, c, names.get(str(c), f"unknown_alert_{c}")))
    return {"telemetry": tel, "ip_allocations": ips, "alerts": alerts}


async def q(sink: ChdbSink, sql: str) -> list[tuple[Any, ...]]:
    return list((await sink.query(sql)).rows)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    sink = ChdbSink(tmp_path / "store")
    await sink.start(TABLES)
    yield sink
    await sink.close()


async def test_every_served_row_is_stored_exactly_once(
    fake_factory: FakeFactory, store: ChdbSink
) -> None:
    fake = await fake_factory(
        fleet=fleet(terminals=12, routers_per_terminal=1.5),
        backlog_ticks=12,
        reorder_columns=True,
        extra_columns=True,
    )
    total = len(fake.stream)
    # every fault switch a poller recovers from (403 is permanent: the test below)
    for fault in (Fault.TOKEN_429, Fault.TOKEN_500, Fault.TOKEN_503):
        fake.inject(fault, retry_after=0.01 if fault is not Fault.TOKEN_500 else None)
    fake.inject(Fault.STREAM_429, retry_after=0.01)
    fake.inject(Fault.STREAM_429)  # without Retry-After: the client's own back-off
    for fault in (
        Fault.STREAM_500,
        Fault.STREAM_503,
        Fault.STREAM_404,
        Fault.STREAM_401,
        Fault.STREAM_TRUNCATE,
    ):
        fake.inject(fault)
    pipeline = Pipeline(store, StarlinkMapper())
    await drain(fake, pipeline, total // 2, batch_size=60)
    fake.change_alert_map()  # re-pointed codes from here on
    fake.inject(Fault.STREAM_INVALID_JSON)
    fake.inject(Fault.STREAM_STALL, stall_secs=1.5)  # the client's timeout ends it first
    await drain(fake, pipeline, total, batch_size=60, max_linger_ms=50, timeout_margin_secs=1.0)
    assert fake.position() == total and len(fake.served) >= 6
    assert not fake.pending_faults()  # every switch was hit

    want = expected_rows(fake)
    got = await q(store, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) FROM telemetry")
    keys = [(d, int(t)) for d, t in got]
    assert len(keys) == len(set(keys))  # nothing twice
    assert set(keys) == set(want["telemetry"])  # nothing missing
    got = await q(store, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) FROM ip_allocations")
    assert sorted((d, int(t)) for d, t in got) == sorted(want["ip_allocations"])
    got = await q(
        store,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns), alert_code, alert_name FROM alerts",
    )
    alerts = [(d, int(t), int(c), n) for d, t, c, n in got]
    assert len(alerts) == len(set(alerts)) and set(alerts) == want["alerts"]
    assert any(n.endswith("_v2") for *_, n in alerts)  # names from the changed map
    # exact 64-bit values survive the store
    sample = next((k, r) for k, r in want["telemetry"].items() if "H3CellId" in r)
    (info,) = await q(
        store,
        f"SELECT info['H3CellId'] FROM telemetry WHERE device_id = '{sample[0][0]}' "
        f"AND toUnixTimestamp64Nano(ts_ns) = {sample[0][1]}",
    )
    assert info[0] == format(sample[1]["H3CellId"], "x")
    # a retried batch (same id) is stored once
    before = (await q(store, "SELECT count() FROM telemetry"))[0][0]
    first = next(b for b in pipeline.batches if b.table.name == "telemetry")
    await store.write(first)
    assert (await q(store, "SELECT count() FROM telemetry"))[0][0] == before
    assert int((await q(store, "SELECT count() FROM dead_letters"))[0][0]) == 0


async def test_a_403_stops_polling_with_every_row_read_so_far_stored(
    fake_factory: FakeFactory, store: ChdbSink
) -> None:
    fake = await fake_factory(fleet=fleet(terminals=8), backlog_ticks=8)
    total = len(fake.stream)
    pipeline = Pipeline(store, StarlinkMapper())
    await drain(fake, pipeline, total // 2, batch_size=40)
    fake.inject(Fault.STREAM_403)  # the account lost its permission
    with pytest.raises(StarlinkPermissionError):
        await drain(fake, pipeline, total, batch_size=40)
    assert 0 < fake.position() < total  # it stopped, and read nothing after the 403
    want = expected_rows(fake)
    got = await q(store, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) FROM telemetry")
    keys = [(d, int(t)) for d, t in got]
    assert len(keys) == len(set(keys)) and set(keys) == set(want["telemetry"])


OPEN_ALERTS_SQL = """
SELECT device_type, device_id, alert_code, argMax(alert_name, ts_ns),
       toUnixTimestamp64Nano(max(ts_ns))
FROM alert_events GROUP BY device_type, device_id, alert_code
HAVING argMax(event, ts_ns) = 'opened'
"""
# the near-duplicate keys the service reads back at start (StarlinkSource: the store's most
# recent rows; here all of them), so a copy served after the restart of a row stored before
# it lands once, as without a restart
KEYS_SQL = f"""
SELECT toString(device_type), device_id, toUnixTimestamp64Nano(ts_ns) FROM telemetry
UNION ALL
SELECT '{IP_KEY}', device_id, toUnixTimestamp64Nano(ts_ns) FROM ip_allocations
"""
IPS_SQL = """
SELECT device_id, toUnixTimestamp64Nano(max(ts_ns)), argMax(ipv4, ts_ns),
       argMax(ipv6_ue, ts_ns), argMax(ipv6_cpe, ts_ns)
FROM ip_allocations GROUP BY device_id
"""


async def test_a_restart_in_the_middle_carries_alerts_and_ips_over(
    fake_factory: FakeFactory, store: ChdbSink
) -> None:
    fake = await fake_factory(
        fleet=fleet(terminals=10, alert_open_probability=0.3, alert_clear_probability=0.3),
        backlog_ticks=16,
        record_bodies=True,
    )
    total = len(fake.stream)
    first = Pipeline(store, StarlinkMapper())
    await drain(fake, first, total // 2, batch_size=40)

    # restart: a new mapper, its state read back from the store
    second = Pipeline(store, StarlinkMapper())
    second.mapper.restore(
        open_alerts=[
            (t, d, int(c), n, int(o)) for t, d, c, n, o in await q(store, OPEN_ALERTS_SQL)
        ],
        ips=[(d, int(ts), v4, ue, cpe) for d, ts, v4, ue, cpe in await q(store, IPS_SQL)],
        recent_keys=[(str(k), str(d), int(t)) for k, d, t in await q(store, KEYS_SQL)],
    )
    assert sorted(second.mapper.open_alerts()) == sorted(first.mapper.open_alerts())
    assert sorted(second.mapper.ip_state()) == sorted(first.mapper.ip_state())
    assert first.mapper.open_alerts(), "the fleet should have open alerts at the restart"
    await drain(fake, second, total, batch_size=40)

    # the same bodies through one mapper without a restart
    reference = StarlinkMapper()
    want_events: list[tuple[Any, ...]] = []
    want_ips: list[tuple[Any, ...]] = []
    for resp in fake.served:
        assert resp.body is not None
        mapping = reference.map(resp.body, 0)
        want_events += [(e[1], e[2], e[3], e[5]) for e in mapping.rows["alert_events"]]
        want_ips += [
            (r[1], r[2], r[5]) for r in mapping.tuples("telemetry") if r[0] == "UserTerminal"
        ]
        reference.commit(mapping)
    got = await q(
        store,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns), alert_code, event FROM alert_events",
    )
    events = [(d, int(t), int(c), e) for d, t, c, e in got]
    assert sorted(events) == sorted(want_events)
    assert len(set(events)) == len(events)  # nothing re-opened after the restart
    got = await q(
        store,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns), ipv4 FROM telemetry "
        "WHERE device_type = 'UserTerminal'",
    )
    assert sorted((d, int(t), tuple(v4)) for d, t, v4 in got) == sorted(want_ips)
