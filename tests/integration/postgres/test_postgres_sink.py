"""The PostgreSQL sink against a real server: migrations, plain layout, exact content,
effectively-once, rollups, maintenance, dead letters, error classes, read-only queries."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orbitstream.core.batch import Batch, Row
from orbitstream.core.columns import record_batch
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import SinkRejectedError, SinkRetryableError
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.deadletter import FileDeadLetters, read_dead_letter_file
from orbitstream.sinks.postgres import ddl
from orbitstream.sinks.postgres.migrations import maintain, migrate
from orbitstream.sinks.postgres.settings import PostgresSettings
from orbitstream.sinks.postgres.sink import (
    PostgresRejectedError,
    PostgresRetryableError,
    PostgresSink,
)
from orbitstream.sinks.results import QueryError
from tests.conftest import free_port

pytestmark = pytest.mark.integration

TEL, ALERTS = tables(30)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
REASONS = [
    (),
    (),
    (),
    ("battery_low",),
    ("signal_weak",),
    ("battery_low", "storage_high", "signal_weak"),
]


def now_ns() -> int:
    return (dt.datetime.now(dt.UTC) - EPOCH) // dt.timedelta(microseconds=1) * 1000


def sat_rows(n: int, start_ns: int, *, seed: int = 1, step_ns: int = 1_001) -> list[Row]:
    rnd = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        reasons = rnd.choice(REASONS)
        t = start_ns + i * step_ns + rnd.randrange(1000)  # sub-microsecond parts
        out.append(
            (
                t,
                f"SAT-{rnd.randrange(25):03d}",
                rnd.uniform(0, 100),
                rnd.uniform(0, 100_000),
                rnd.uniform(-150, 0),
                bool(reasons),
                reasons,
                t + rnd.randrange(10**9),
            )
        )
    return out


def alert_rows(n: int, start_ns: int) -> list[Row]:
    return [
        (start_ns + i, "satellites", f"SAT-{i % 5}", "battery_low", "firing", 5.0, 10.0, "low")
        for i in range(n)
    ]


def to_ns(value: dt.datetime) -> int:
    return (value - EPOCH) // dt.timedelta(microseconds=1) * 1000


async def fetch(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return [tuple(r) for r in await cur.fetchall()]


async def count(dsn: str, table: str = "telemetry") -> int:
    rows = await fetch(dsn, f"SELECT count(*) FROM {ddl.quote_ident(table)}")
    return int(rows[0][0])


# -- migrations and layout -----------------------------------------------------------------


async def test_migrate_twice_applies_once(pg_settings: PostgresSettings) -> None:
    dsn = pg_settings.dsn
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as b,
    ):
        # two workers starting together: the advisory lock lets one apply everything
        results = await asyncio.gather(
            migrate(a, [TEL, ALERTS], pg_settings), migrate(b, [TEL, ALERTS], pg_settings)
        )
        first = max(results, key=len)
        assert min(results, key=len) == []
        assert first[:4] == [
            "0001_core",
            "0002_layout_plain",
            "0003_rollup_state",
            "table/telemetry/create",
        ]
        assert "rollup/satellite_stats/create" in first
        assert await migrate(a, [TEL, ALERTS], pg_settings) == []
    recorded = await fetch(dsn, "SELECT version, name, applied_at FROM schema_migrations")
    assert sorted(r[0] for r in recorded) == sorted(first)
    assert all(r[1] and r[2] is not None for r in recorded)


async def test_reported_timescale_takes_that_path_and_rolls_back_whole(
    pg_settings: PostgresSettings,
) -> None:
    """With availability injected, the TimescaleDB path runs first thing; this server
    cannot load it, so the one migration transaction leaves nothing behind."""
    async with await psycopg.AsyncConnection.connect(pg_settings.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="timescaledb"):
            await migrate(conn, [TEL], pg_settings, timescale_available=True)
        cur = await conn.execute(
            "SELECT to_regclass('schema_migrations'), to_regclass('telemetry')"
        )
        assert await cur.fetchone() == (None, None)
        assert await migrate(conn, [TEL], pg_settings, timescale_available=False) != []


async def test_plain_layout_is_chosen_and_complete(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    dsn = pg_settings.dsn
    assert pg_sink.layout == "plain"
    assert await fetch(dsn, "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'") == []
    parts = {
        r[0]
        for r in await fetch(
            dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'telemetry'::regclass",
        )
    }
    today = dt.datetime.now(dt.UTC).date()
    for offset in range(-1, pg_settings.partitions_ahead_days + 1):
        assert ddl.partition_name(TEL, today + dt.timedelta(days=offset)) in parts
    assert "telemetry_default" in parts
    bound = await fetch(
        dsn,
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE relname = %s",
        (ddl.partition_name(TEL, today),),
    )
    lo, hi = (dt.datetime.combine(today + dt.timedelta(days=d), dt.time()) for d in (0, 1))
    assert bound[0][0] == (
        f"FOR VALUES FROM ('{lo:%Y-%m-%d %H:%M:%S}+00') TO ('{hi:%Y-%m-%d %H:%M:%S}+00')"
    )
    indexes = dict(
        await fetch(dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'telemetry'")
    )
    assert "USING brin" in indexes["telemetry_time_brin"]
    assert '(satellite_id, "time" DESC)' in indexes["telemetry_satellite_id_time_idx"]
    assert "WHERE is_anomaly" in indexes["telemetry_anomaly_idx"]
    view_cols = [
        r[0]
        for r in await fetch(
            dsn,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'satellite_stats' ORDER BY ordinal_position",
        )
    ]
    assert view_cols == [
        "bucket",
        "satellite_id",
        *[f"{fn}_{m}" for m in ("battery", "storage", "signal") for fn in ("avg", "min", "max")],
        "data_points",
        "anomaly_points",
    ]
    types = dict(
        await fetch(
            dsn,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'telemetry'",
        )
    )
    assert types["time"] == "timestamp with time zone"
    assert types["battery_charge_percent"] == "double precision"
    assert types["anomaly_reasons"] == "ARRAY"
    await pg_sink.ping()


# -- content, effectively-once, rollups ----------------------------------------------------


async def test_batch_lands_exactly_and_replay_is_skipped(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    # > 1 µs apart, so every row has its own microsecond once stored
    rows = sat_rows(10_000, now_ns() - 3_600 * 10**9, step_ns=2_003)
    batch = Batch(TEL, rows, "exact-1")
    await pg_sink.write(batch)
    await pg_sink.write(Batch(TEL, list(rows), "exact-1"))  # a replay: same id
    got = await fetch(pg_settings.dsn, f"SELECT {', '.join(TEL.column_names)} FROM telemetry")
    assert len(got) == 10_000
    by_time = {to_ns(r[0]): r for r in got}
    for row in rows:
        g = by_time[int(str(row[0])) // 1000 * 1000]
        assert g[1] == row[1]
        assert g[2:6] == row[2:6]  # floats bit-exact, bool
        assert tuple(g[6]) == row[6]  # text[]
        assert to_ns(g[7]) == int(str(row[7])) // 1000 * 1000
    ledger = await fetch(
        pg_settings.dsn, "SELECT batch_id, table_name, rows FROM orbitstream_batches"
    )
    assert ledger == [("exact-1", "telemetry", 10_000)]


async def test_awkward_values_and_out_of_range_times(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    t2200 = (dt.datetime(2200, 1, 1, tzinfo=dt.UTC) - EPOCH) // dt.timedelta(microseconds=1) * 1000
    before_2000 = 946_684_800_000_000_000 - 1  # 1 ns before 2000-01-01
    weird = ("a,b", 'q"uote', "back\\slash", "{brace}", "", "NULL", "é ✓")
    rows: list[Row] = [
        (before_2000, "SAT-é", -0.0, math.inf, -1e308, True, weird, before_2000),
        (t2200, "SAT 'x'", 1e-300, 0.0, -0.5, False, (), t2200),
    ]
    await pg_sink.write(Batch(TEL, rows, "odd-1"))
    got = await fetch(
        pg_settings.dsn,
        "SELECT tableoid::regclass::text, time, satellite_id, storage_usage_mb, "
        "anomaly_reasons FROM telemetry ORDER BY time",
    )
    assert [g[0] for g in got] == ["telemetry_default", "telemetry_default"]
    assert got[0][1] == dt.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)
    assert to_ns(got[1][1]) == t2200
    assert got[0][2] == "SAT-é"
    assert got[0][3] == math.inf
    assert tuple(got[0][4]) == weird
    assert got[1][4] == []


async def test_rollup_view_equals_group_by_over_raw_rows(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    start = now_ns() - 20 * 60 * 10**9
    step = 7 * 10**9 // 10  # 0.7 s apart: 1,500 rows span ~17 min = several buckets
    batches = [
        Batch(TEL, sat_rows(1_500, start, seed=1, step_ns=step), "r-1"),
        Batch(TEL, sat_rows(1_500, start + 10**8, seed=2, step_ns=step), "r-2"),
        Batch(TEL, sat_rows(700, start + 3 * 10**8, seed=3, step_ns=step), "r-3"),
    ]
    for b in batches:
        await pg_sink.write(b)
    await pg_sink.write(Batch(TEL, list(batches[1].rows), "r-2"))  # replayed: no double count
    await pg_sink.write(Batch(TEL, sat_rows(300, start, seed=4, step_ns=step), "r-4"))
    view = await fetch(pg_settings.dsn, "SELECT * FROM satellite_stats ORDER BY 1, 2")
    raw = await fetch(
        pg_settings.dsn,
        "SELECT date_bin('5 minutes', time, TIMESTAMPTZ '1970-01-01 00:00:00+00'), "
        "satellite_id, "
        "avg(battery_charge_percent), min(battery_charge_percent), max(battery_charge_percent), "
        "avg(storage_usage_mb), min(storage_usage_mb), max(storage_usage_mb), "
        "avg(signal_strength_dbm), min(signal_strength_dbm), max(signal_strength_dbm), "
        "count(*), count(*) FILTER (WHERE is_anomaly) "
        "FROM telemetry GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert len(view) == len(raw) > 25
    assert sum(r[11] for r in view) == 4_000
    assert_same_stats(view, raw)


RAW_STATS = (
    "SELECT date_bin('5 minutes', time, TIMESTAMPTZ '1970-01-01 00:00:00+00'), satellite_id, "
    "avg(battery_charge_percent), min(battery_charge_percent), max(battery_charge_percent), "
    "avg(storage_usage_mb), min(storage_usage_mb), max(storage_usage_mb), "
    "avg(signal_strength_dbm), min(signal_strength_dbm), max(signal_strength_dbm), "
    "count(*), count(*) FILTER (WHERE is_anomaly) FROM telemetry GROUP BY 1, 2 ORDER BY 1, 2"
)


def assert_same_stats(view: list[tuple[Any, ...]], raw: list[tuple[Any, ...]]) -> None:
    assert len(view) == len(raw)
    for v, r in zip(view, raw, strict=True):
        assert v[:2] == r[:2]
        assert v[2:11] == pytest.approx(r[2:11], rel=1e-9)
        assert v[11:] == r[11:]


async def _view(dsn: str) -> list[tuple[Any, ...]]:
    return await fetch(dsn, "SELECT * FROM satellite_stats ORDER BY 1, 2")


async def test_rollup_view_is_exact_before_and_after_refreshes(
    pg_settings: PostgresSettings,
) -> None:
    """Rows after the watermark and late rows (before it, not yet refreshed) are aggregated
    when read; a refresh materializes the late buckets and those the watermark passes —
    two workers refreshing at once, replays and columnar batches included — and the view
    equals a GROUP BY over the raw rows before, between and after refreshes."""
    dsn = pg_settings.dsn
    manual = dataclasses.replace(pg_settings, rollup_refresh_secs=3600.0)
    a, b = PostgresSink(manual), PostgresSink(manual)
    await a.start(tables())
    await b.start(tables())
    try:
        live = now_ns() - 5 * 10**9
        await a.write(Batch(TEL, sat_rows(800, live, seed=1, step_ns=10**6), "l-1"))
        await b.write(Batch(TEL, record_batch(TEL, sat_rows(600, live, seed=2)), "l-2"))
        assert_same_stats(await _view(dsn), await fetch(dsn, RAW_STATS))  # no refresh yet
        assert await count(dsn, "satellite_stats_agg") == 0
        # late rows, 20 minutes back: pending until a refresh
        late = now_ns() - 20 * 60 * 10**9
        step = 7 * 10**9 // 10
        await a.write(Batch(TEL, sat_rows(1_500, late, seed=3, step_ns=step), "late-1"))
        columnar = record_batch(TEL, sat_rows(900, late, seed=4, step_ns=step))
        await b.write(Batch(TEL, columnar, "late-2"))
        assert await count(dsn, "orbitstream_rollup_pending") > 0
        assert_same_stats(await _view(dsn), await fetch(dsn, RAW_STATS))  # exact already
        ranges = await asyncio.gather(a.refresh_rollups(), b.refresh_rollups())
        assert sum(ranges) >= 1  # one of them did the work (the other may have skipped)
        assert await count(dsn, "orbitstream_rollup_pending") == 0
        assert await count(dsn, "satellite_stats_agg") > 0
        view = await _view(dsn)
        assert sum(r[11] for r in view) == 800 + 600 + 1_500 + 900
        assert_same_stats(view, await fetch(dsn, RAW_STATS))
        # a replay changes nothing; more late rows into materialized buckets do, once
        await a.write(Batch(TEL, sat_rows(1_500, late, seed=3, step_ns=step), "late-1"))
        await a.write(Batch(TEL, sat_rows(400, late, seed=5, step_ns=step), "late-3"))
        assert_same_stats(await _view(dsn), await fetch(dsn, RAW_STATS))
        await asyncio.gather(*(s.refresh_rollups() for s in (a, b, a, b)))
        assert_same_stats(await _view(dsn), await fetch(dsn, RAW_STATS))
        # the watermark moves: pretend it is 40 minutes behind, as after a long stop
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE orbitstream_rollups SET materialized_until = "
                "materialized_until - interval '40 minutes'"
            )
        assert_same_stats(await _view(dsn), await fetch(dsn, RAW_STATS))  # raw after it
        while await a.refresh_rollups():  # up to 12 buckets at a time
            pass
        state = await fetch(dsn, "SELECT materialized_until FROM orbitstream_rollups")
        assert state[0][0] > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=7)
        view = await _view(dsn)
        assert sum(r[11] for r in view) == 800 + 600 + 1_500 + 900 + 400
        assert_same_stats(view, await fetch(dsn, RAW_STATS))
    finally:
        await a.close()
        await b.close()


async def test_an_old_rollup_view_is_upgraded_and_keeps_its_state(
    pg_settings: PostgresSettings,
) -> None:
    """A database from before the watermark (the state table, kept exact by each batch,
    and a view over it only): the next start adds the watermark at the current bucket and
    replaces the view; the old state still counts, newer rows are read raw."""
    dsn = pg_settings.dsn
    sink = PostgresSink(pg_settings)
    await sink.start(tables())
    start = now_ns() - 30 * 60 * 10**9
    await sink.write(Batch(TEL, sat_rows(600, start, seed=5, step_ns=10**9), "u-1"))
    await sink.close()  # refreshes: the state of those buckets is in satellite_stats_agg
    measures = ("battery", "storage", "signal")
    old_view = ", ".join(
        f'"s_sum_{m}" / NULLIF("s_data_points", 0) AS "avg_{m}", "s_min_{m}" AS "min_{m}", '
        f'"s_max_{m}" AS "max_{m}"'
        for m in measures
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("DROP VIEW satellite_stats")
        await conn.execute("DROP TABLE orbitstream_rollups, orbitstream_rollup_pending")
        await conn.execute(
            f'CREATE VIEW satellite_stats AS SELECT "bucket", "satellite_id", {old_view}, '
            '"s_data_points" AS "data_points", "s_anomaly_points" AS "anomaly_points" '
            "FROM satellite_stats_agg"
        )
        await conn.execute(
            "DELETE FROM schema_migrations WHERE version IN "
            "('0003_rollup_state', 'rollup/satellite_stats/realtime')"
        )
    again = PostgresSink(pg_settings)
    await again.start(tables())
    try:
        assert {"0003_rollup_state", "rollup/satellite_stats/realtime"} <= set(again.applied)
        await again.write(Batch(TEL, sat_rows(400, now_ns() - 10**9, seed=6), "u-2"))
        view = await _view(dsn)
        assert sum(r[11] for r in view) == 1_000
        assert_same_stats(view, await fetch(dsn, RAW_STATS))
    finally:
        await again.close()


async def test_concurrent_writes_of_different_tables(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    start = now_ns() - 60 * 10**9
    tel = [Batch(TEL, sat_rows(2_000, start, seed=i), f"c-t-{i}") for i in range(4)]
    alerts = [Batch(ALERTS, alert_rows(500, start + i * 1000), f"c-a-{i}") for i in range(4)]
    dup = Batch(TEL, list(tel[0].rows), "c-t-0")  # the same id, concurrently
    await asyncio.gather(*(pg_sink.write(b) for b in [*tel, *alerts, dup]))
    assert await count(pg_settings.dsn, "telemetry") == 8_000
    assert await count(pg_settings.dsn, "alerts") == 2_000
    points = await fetch(pg_settings.dsn, "SELECT sum(data_points) FROM satellite_stats")
    assert int(points[0][0]) == 8_000
    assert await count(pg_settings.dsn, "orbitstream_batches") == 8


# -- maintenance ---------------------------------------------------------------------------


async def test_maintenance_creates_ahead_moves_default_rows_and_drops_old(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    dsn = pg_settings.dsn
    now = dt.datetime.now(dt.UTC)
    today = now.date()

    def at(day: dt.date) -> int:
        return to_ns(dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC))

    old_day = today - dt.timedelta(days=40)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(ddl.plain_partition_statement(TEL, old_day))
    future_day = today + dt.timedelta(days=6)  # beyond the 3 days created ahead
    rows = [
        *sat_rows(3, at(old_day)),
        *sat_rows(2, at(today - dt.timedelta(days=50)), seed=2),  # no partition: DEFAULT
        *sat_rows(4, at(future_day), seed=3),  # DEFAULT until its partition exists
        *sat_rows(5, at(today), seed=4),
    ]
    await pg_sink.write(Batch(TEL, rows, "m-1"))
    assert await count(dsn, "telemetry_default") == 6

    later = now + dt.timedelta(days=5)
    report = await maintain(pg_sink.pool, [TEL, ALERTS], pg_settings, later)
    assert report.errors == []
    assert report.layout == "plain"
    assert ddl.partition_name(TEL, old_day) in report.dropped
    assert ddl.partition_name(TEL, future_day) in report.created
    assert ddl.partition_name(TEL, later.date() + dt.timedelta(days=3)) in report.created
    assert report.default_rows_moved == 4
    assert report.default_rows_deleted == 2
    placed = await fetch(
        dsn,
        "SELECT DISTINCT tableoid::regclass::text FROM telemetry WHERE time > now()"
        " + INTERVAL '2 days'",
    )
    assert placed == [(ddl.partition_name(TEL, future_day),)]
    assert await count(dsn, "telemetry") == 9  # 14 - 3 dropped - 2 expired

    again = await maintain(pg_sink.pool, [TEL, ALERTS], pg_settings, later)
    assert (again.created, again.dropped, again.errors) == ([], [], [])

    pruned = await maintain(pg_sink.pool, [TEL], pg_settings, now + dt.timedelta(days=8))
    assert pruned.ledger_rows_pruned == 1
    assert await count(dsn, "orbitstream_batches") == 0


# -- rejected rows, retryable failures -----------------------------------------------------


async def test_poison_row_goes_to_dead_letters_and_neighbours_are_written(
    pg_settings: PostgresSettings, tmp_path: Path
) -> None:
    sink = PostgresSink(pg_settings)
    dead_file = tmp_path / "dead.jsonl"
    pipeline = Pipeline(
        "satellites",
        [TEL, ALERTS],
        [sink],
        limits=PipelineLimits(batch_size=50, linger_secs=0.05),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.05),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(dead_file),
    )
    await pipeline.start()
    rows = sat_rows(200, now_ns())
    poison = list(rows[77])
    poison[2] = None  # battery_charge_percent is NOT NULL
    rows[77] = tuple(poison)
    pipeline.submit({"telemetry": rows})
    await pipeline.close(timeout_secs=20)

    dsn = pg_settings.dsn
    assert await count(dsn) == 199
    letters = await fetch(
        dsn, "SELECT pipeline, table_name, batch_id, row, error FROM dead_letters"
    )
    assert len(letters) == 1
    pipeline_name, table, batch_id, row, error = letters[0]
    assert (pipeline_name, table) == ("satellites", "telemetry")
    assert row["satellite_id"] == rows[77][1]
    assert row["battery_charge_percent"] is None
    assert "battery_charge_percent" in error
    assert batch_id.startswith("satellites:telemetry:postgres:")
    assert read_dead_letter_file(dead_file) == []


async def test_unencodable_value_is_rejected_without_a_round_trip(pg_sink: PostgresSink) -> None:
    row = list(sat_rows(1, now_ns())[0])
    row[3] = "lots"
    with pytest.raises(PostgresRejectedError) as info:
        await pg_sink.write(Batch(TEL, [tuple(row)], "bad-type"))
    assert info.value.table == "telemetry"
    assert info.value.batch_id == "bad-type"
    assert "storage_usage_mb" in str(info.value)


async def test_a_write_failing_mid_copy_leaves_nothing_and_its_connection_usable(
    pg_settings: PostgresSettings,
) -> None:
    # One connection, so the write after the failed one runs on the same connection.
    sink = PostgresSink(dataclasses.replace(pg_settings, max_connections=1))
    await sink.start(tables())
    try:
        start = now_ns() - 600 * 10**9
        rows = sat_rows(5_000, start, step_ns=10**8)
        bad = list(rows[4_500])
        bad[3] = "lots"  # in the third COPY piece: two were sent before it fails
        rows[4_500] = tuple(bad)
        with pytest.raises(PostgresRejectedError) as info:
            await sink.write(Batch(TEL, rows, "mid-copy"))
        assert "storage_usage_mb" in str(info.value) and info.value.bad_rows == (4_500,)
        dsn = pg_settings.dsn
        assert await count(dsn) == 0
        assert await fetch(dsn, "SELECT batch_id FROM orbitstream_batches") == []
        assert await fetch(dsn, "SELECT count(*) FROM orbitstream_rollup_pending") == [(0,)]
        # a server-side refusal after some rows were copied rolls back the claim too
        nulls = list(rows[:3_000])
        nulls[2_900] = (*nulls[2_900][:2], None, *nulls[2_900][3:])  # NOT NULL column
        with pytest.raises(PostgresRejectedError):
            await sink.write(Batch(TEL, nulls, "server-refused"))
        assert await fetch(dsn, "SELECT batch_id FROM orbitstream_batches") == []
        good = Batch(TEL, rows[:4_000], "after")
        await sink.write(good)
        pending = await fetch(dsn, "SELECT count(*) FROM orbitstream_rollup_pending")
        assert pending[0][0] > 0
        await sink.write(Batch(TEL, list(good.rows), "after"))  # a replay: no row, no bucket
        assert await count(dsn) == 4_000
        assert await fetch(dsn, "SELECT count(*) FROM orbitstream_rollup_pending") == pending
        ledger = await fetch(dsn, "SELECT batch_id, rows FROM orbitstream_batches")
        assert ledger == [("after", 4_000)]
    finally:
        await sink.close()


async def test_terminated_connections_are_retryable_then_recover(
    pg_sink: PostgresSink, pg_settings: PostgresSettings, pg_server: str
) -> None:
    await pg_sink.write(Batch(TEL, sat_rows(10, now_ns()), "t-1"))
    async with await psycopg.AsyncConnection.connect(pg_server, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (pg_settings.application_name,),
        )
        row = await cur.fetchone()
        assert row is not None
        assert row[0] >= 1
    await asyncio.sleep(0.2)
    errors: list[SinkRetryableError] = []
    batch = Batch(TEL, sat_rows(10, now_ns(), seed=9), "t-2")
    for _ in range(pg_settings.max_connections + 2):
        try:
            await pg_sink.write(batch)
            break
        except SinkRetryableError as exc:
            errors.append(exc)
    assert errors, "a write on a terminated connection must fail"
    for err in errors:
        assert isinstance(err, PostgresRetryableError)
        assert err.sqlstate in (None, "57P01")
        assert (err.table, err.batch_id) == ("telemetry", "t-2")
    assert await count(pg_settings.dsn) == 20


async def test_unreachable_server_is_retryable_and_password_stays_hidden() -> None:
    settings = PostgresSettings(
        dsn=f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres",
        connect_timeout_secs=1,
    )
    sink = PostgresSink(settings)
    with pytest.raises(PostgresRetryableError) as info:
        await sink.start([TEL])
    assert isinstance(info.value, SinkRetryableError)
    assert not isinstance(info.value, SinkRejectedError)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)
    await sink.close()


# -- read-only queries ---------------------------------------------------------------------


async def test_query_reads_and_refuses_writes(pg_sink: PostgresSink) -> None:
    await pg_sink.write(Batch(TEL, sat_rows(20, now_ns()), "q-1"))
    res = await pg_sink.query(
        "SELECT satellite_id, count(*) AS n FROM telemetry WHERE battery_charge_percent >= "
        "%(low)s GROUP BY 1 ORDER BY 1 LIMIT 3",
        {"low": 0.0},
    )
    assert res.columns == ["satellite_id", "n"]
    assert res.types == ["text", "int8"]
    assert len(res.rows) >= 1
    like = await pg_sink.query("SELECT count(*) FROM telemetry WHERE satellite_id LIKE 'SAT-%'")
    assert like.rows == [(20,)]
    for sql in (
        "INSERT INTO orbitstream_batches (batch_id, table_name, rows) VALUES ('x', 't', 1)",
        "DELETE FROM telemetry",
        "CREATE TABLE sneaky (a int)",
    ):
        with pytest.raises(QueryError) as info:
            await pg_sink.query(sql)
        assert info.value.code == 25006  # read_only_sql_transaction
    with pytest.raises(QueryError):
        await pg_sink.query("SELECT 1; COMMIT; DELETE FROM telemetry")
    assert (await pg_sink.query("SELECT count(*) FROM telemetry")).rows == [(20,)]
    sync = await asyncio.to_thread(pg_sink.user_query_sync, "SELECT count(*) AS c FROM telemetry")
    assert (sync.columns, sync.rows) == (["c"], [(20,)])
    with pytest.raises(QueryError):
        await asyncio.to_thread(pg_sink.user_query_sync, "DROP TABLE telemetry")


async def test_cli_query_with_a_pipeline_schema_not_created_yet(
    pg_sink: PostgresSink, pg_settings: PostgresSettings
) -> None:
    """``orbitstream query`` sets the read-only role up for every registered pipeline's
    tables; one whose schema does not exist yet (never run, never migrated) must not
    keep the others from being read."""
    await pg_sink.write(Batch(TEL, sat_rows(5, now_ns()), "ns-1"))
    absent = TEL.in_namespace("never_created_ns")
    cli = PostgresSink(pg_settings, query_tables=[TEL, ALERTS, absent])
    rows = await asyncio.to_thread(cli.user_query_sync, "SELECT count(*) AS c FROM telemetry")
    assert rows.rows == [(5,)]
    with pytest.raises(QueryError) as info:
        await asyncio.to_thread(cli.user_query_sync, "SELECT 1 FROM never_created_ns.telemetry")
    assert "never_created_ns" in str(info.value)
