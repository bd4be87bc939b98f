"""A body delivered in parts (:meth:`StarlinkIngest.deliver`) into chDB through a real
pipeline: every row the reference mapping makes is stored once, the parts' batch ids
follow the body's positions (a replay of the same body adds nothing), and rows outside
the time window leave a columnar part for the dead letters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orbitstream.core.batch import DeadLetter
from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.starlink import StarlinkMapper, tables
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sources.http.server import Router
from orbitstream.sources.starlink import StarlinkIngest
from orbitstream.sources.starlink_api import StarlinkClient, StarlinkSettings
from tests.conftest import _has_chdb, require
from tests.integration.starlink.conftest import FakeFactory, fleet

pytestmark = pytest.mark.integration

TABLES = tables(retention_days=None)


class Harness:
    def __init__(self, sink: Any, ctx: PipelineContext, pipeline: Pipeline) -> None:
        self.sink = sink
        self.ctx = ctx
        self.pipeline = pipeline

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list((await self.sink.query(sql)).rows)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.sinks.chdb import ChdbSink

    sink = ChdbSink(tmp_path / "store")
    await sink.start(TABLES)
    metrics = Metrics()
    dead = FileDeadLetters(tmp_path / "dead_letters.jsonl")
    pipeline = Pipeline(
        "starlink",
        TABLES,
        [sink],
        limits=PipelineLimits(batch_size=100_000, linger_secs=0.05),
        retry=RetryPolicy(max_secs=0.2),
        metrics=metrics,
        dead_letters=dead,
    )
    await pipeline.start(30.0, start_sinks=False)
    ctx = PipelineContext(
        pipeline, TABLES, metrics=metrics, store=sink, router=Router(), dead_letters=dead
    )
    yield Harness(sink, ctx, pipeline)
    await pipeline.close(30.0, close_sinks=False)
    await sink.close()


async def _body(fake_factory: FakeFactory, rows: int) -> bytes:
    fake = await fake_factory(
        fleet=fleet(terminals=40, duplicate_probability=0.1), backlog_ticks=30
    )
    settings = StarlinkSettings(
        client_id=fake.client_id,
        client_secret=SecretStr(fake.client_secret),
        token_url=fake.token_url,
        stream_url=fake.stream_url,
        batch_size=rows,
        max_linger_ms=100,
    )
    async with StarlinkClient(settings) as client:
        batch = await client.fetch()
    assert batch.rows == rows
    return batch.body


def _ingest(part_rows: int, window: TimeWindow | None = None) -> StarlinkIngest:
    mapper = StarlinkMapper(columnar_min_rows=0)  # columnar whatever the part size
    return StarlinkIngest(
        mapper, {t.name: t for t in TABLES}, window or TimeWindow(), Metrics(), part_rows=part_rows
    )


async def test_a_body_in_parts_lands_once_and_a_replay_adds_nothing(
    harness: Harness, fake_factory: FakeFactory
) -> None:
    body = await _body(fake_factory, 2500)
    want = StarlinkMapper(columnar=False).map(body, 1)
    assert want.duplicates > 0 and want.rows["alerts"] and want.rows["ip_allocations"]

    out = await _ingest(part_rows=300).deliver(harness.ctx, body, 1)
    assert out.committed and out.dead == 0 and out.duplicates == want.duplicates
    assert out.rows == {name: len(r) for name, r in want.rows.items()}
    stored = await harness.rows(
        "SELECT device_type, device_id, toUnixTimestamp64Nano(ts_ns), metrics, info, ipv4 "
        "FROM telemetry"
    )
    expected = [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in want.rows["telemetry"]]
    assert sorted(map(_key, stored)) == sorted(map(_key, expected))
    alerts = await harness.rows("SELECT device_id, alert_code FROM alerts")
    assert sorted(alerts) == sorted((a[1], a[3]) for a in want.rows["alerts"])
    # a replay of the same body (say the process died before committing the state): the
    # same parts, the same batch ids, nothing added
    again = await _ingest(part_rows=300).deliver(harness.ctx, body, 1)
    assert again.committed and again.rows == out.rows
    for name, n in out.rows.items():
        (count,) = (await harness.rows(f"SELECT count() FROM {name}"))[0]
        assert int(count) == n, name


async def test_rows_outside_the_window_leave_a_columnar_part_for_dead_letters(
    harness: Harness, fake_factory: FakeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = await _body(fake_factory, 1200)
    want = StarlinkMapper(columnar=False).map(body, 1)
    telemetry: list[tuple[Any, ...]] = want.tuples("telemetry")
    times = sorted(int(r[2]) for r in telemetry)
    cut = times[len(times) // 2]  # rows older than this are too old
    window = TimeWindow(max_age_ns=time.time_ns() - cut)
    ingest = _ingest(part_rows=256, window=window)
    with caplog.at_level(logging.WARNING, logger="orbitstream.sources.starlink"):
        out = await ingest.deliver(harness.ctx, body, 1)
        more = [DeadLetter("starlink", "telemetry", "b", {}, "late")] * 7
        ingest._warn_dead(more)  # within 30 s of the first: counted, not logged
        ingest._warn_dead(more, every_secs=0.0)  # the next one says how many since
    warned = [r for r in caplog.records if "dead letters" in r.getMessage()]
    assert len(warned) == 2 and "ORBITSTREAM_TIMESTAMP_MAX_AGE" in warned[0].error, warned  # type: ignore[attr-defined]
    assert [r.rows for r in warned] == [out.dead, 14]  # type: ignore[attr-defined]
    assert ingest.dead_rows == out.dead + 14
    stored = await harness.rows("SELECT toUnixTimestamp64Nano(min(ts_ns)), count() FROM telemetry")
    oldest, count = stored[0]
    assert int(count) == out.rows["telemetry"] < len(telemetry)
    assert int(oldest) >= cut - 10_000_000_000  # what is left is inside the window
    assert out.dead >= len(telemetry) - out.rows["telemetry"]
    ((letters,),) = await harness.rows(
        "SELECT count() FROM dead_letters WHERE table = 'telemetry' AND error != ''"
    )
    assert int(letters) == len(telemetry) - out.rows["telemetry"]


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    t, d, ts, m, i, v4 = row
    return (str(t), str(d), int(ts), sorted(dict(m).items()), sorted(dict(i).items()), list(v4))


@pytest.mark.parametrize("max_buffer_rows", [1_500, 100])
async def test_the_collector_runs_while_a_part_waits_for_room(
    tmp_path: Path, fake_factory: FakeFactory, max_buffer_rows: int
) -> None:
    """The collector is paused while a body is mapped, but not while a part waits for a
    full buffer (that wait lasts as long as a store is slow or down). A buffer smaller
    than one part (100 rows, parts of 300) takes each part once it is empty: the body is
    delivered whole (it waited for ever)."""
    import gc

    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.sinks.chdb import ChdbSink

    body = await _body(fake_factory, 2500)
    sink = ChdbSink(tmp_path / "store")
    await sink.start(TABLES)
    metrics = Metrics()
    dead = FileDeadLetters(tmp_path / "dead_letters.jsonl")
    limits = PipelineLimits(batch_size=100_000, linger_secs=0.05, max_buffer_rows=max_buffer_rows)
    pipeline = Pipeline(
        "starlink", TABLES, [sink], limits=limits, retry=RetryPolicy(max_secs=0.2),
        metrics=metrics, dead_letters=dead,
    )  # fmt: skip
    await pipeline.start(30.0, start_sinks=False)
    ctx = PipelineContext(
        pipeline, TABLES, metrics=metrics, store=sink, router=Router(), dead_letters=dead
    )
    waits: list[bool] = []
    wait_for_room = ctx.wait_for_room

    async def recording(rows: int = 1) -> None:
        waits.append(gc.isenabled())
        await wait_for_room(rows)

    ctx.wait_for_room = recording  # type: ignore[method-assign]
    try:
        out = await asyncio.wait_for(_ingest(part_rows=300).deliver(ctx, body, 1), 60)
        counts = {
            name: int(str((await sink.query(f"SELECT count() FROM {name}")).rows[0][0]))
            for name in out.rows
        }
    finally:
        await pipeline.close(30.0, close_sinks=False)
        await sink.close()
    assert out.committed
    want = StarlinkMapper(columnar=False).map(body, 1)
    assert counts == {name: len(r) for name, r in want.rows.items()}
    assert waits and all(waits), waits  # it waited, each time with the collector on
    assert gc.isenabled()
