"""PostgreSQL DDL rendering, migration planning, layout choice, settings, error classes."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from orbitstream.core.tables import ColType, Column, Table
from orbitstream.detect.alerts import ALERTS_TABLE
from orbitstream.errors import ConfigError, SinkRejectedError, SinkRetryableError
from orbitstream.pipelines.satellites import TELEMETRY_TABLE, tables
from orbitstream.sinks.postgres import ddl
from orbitstream.sinks.postgres.migrations import (
    Migration,
    choose_layout,
    plan_migrations,
    retention_days,
    wanted_days,
)
from orbitstream.sinks.postgres.settings import PostgresSettings, redact_dsn

TEL, ALERTS = tables(30)
SETTINGS = PostgresSettings(dsn="postgresql://u:pw@localhost/db")


def joined(migrations: list[Migration]) -> str:
    return "\n".join(s for m in migrations for s in m.statements)


def squash(sql: str) -> str:
    return re.sub(r"\s+", " ", sql)


# -- types ------------------------------------------------------------------------------


def test_column_types_match_the_data_and_never_decimal() -> None:
    t = Table(
        "every",
        tuple(Column(f"c_{ct.value}", ct) for ct in ColType),
        time_column="c_timestamp",
        order_by=("c_timestamp",),
    )
    sql = ddl.plain_table_statements(t)[0]
    for col, typ in {
        "c_timestamp": "timestamptz",
        "c_string": "text",
        "c_float64": "double precision",
        "c_int64": "bigint",
        "c_uint64": "bigint",
        "c_bool": "boolean",
        "c_string_list": "text[]",
        "c_map_str_float": "jsonb",
        "c_map_str_str": "jsonb",
    }.items():
        assert f'"{col}" {typ} NOT NULL' in sql
    everything = joined(plan_migrations([t, TEL, ALERTS], SETTINGS, layout="plain", applied=[]))
    everything += joined(plan_migrations([t, TEL], SETTINGS, layout="timescale", applied=[]))
    assert not re.search(r"decimal|numeric", everything, re.IGNORECASE)


def test_nullable_columns_have_no_not_null() -> None:
    t = Table(
        "n", (Column("time", ColType.TIMESTAMP), Column("v", ColType.FLOAT64, nullable=True)),
        "time", ("time",),
    )  # fmt: skip
    assert '"v" double precision\n' in ddl.plain_table_statements(t)[0]


def test_copy_statement_lists_columns_in_declaration_order() -> None:
    assert ddl.copy_sql(TEL) == (
        'COPY "telemetry" ("time", "satellite_id", "battery_charge_percent", '
        '"storage_usage_mb", "signal_strength_dbm", "is_anomaly", "anomaly_reasons", '
        '"received_at") FROM STDIN (FORMAT BINARY)'
    )


def test_identifiers_and_literals_are_quoted() -> None:
    assert ddl.quote_ident('a"b') == '"a""b"'
    assert ddl.quote_literal("it's") == "'it''s'"
    assert ddl.interval(300) == "'5 minutes'"
    assert ddl.interval(3600) == "'1 hour'"
    assert ddl.interval(30 * 86400) == "'30 days'"
    assert ddl.interval(7) == "'7 seconds'"


# -- plain PostgreSQL ----------------------------------------------------------------------


def test_plain_table_is_partitioned_by_day_with_default_and_indexes() -> None:
    stmts = [squash(s) for s in ddl.plain_table_statements(TEL)]
    assert stmts[0].startswith('CREATE TABLE IF NOT EXISTS "telemetry" (')
    assert stmts[0].endswith('PARTITION BY RANGE ("time")')
    assert (
        'CREATE TABLE IF NOT EXISTS "telemetry_default" PARTITION OF "telemetry" DEFAULT' in stmts
    )
    assert (
        'CREATE INDEX IF NOT EXISTS "telemetry_time_brin" ON "telemetry" USING brin ("time")'
        in stmts
    )
    assert (
        'CREATE INDEX IF NOT EXISTS "telemetry_satellite_id_time_idx" ON "telemetry" '
        '("satellite_id", "time" DESC)' in stmts
    )
    assert (
        'CREATE INDEX IF NOT EXISTS "telemetry_anomaly_idx" ON "telemetry" ("time" DESC) '
        'WHERE "is_anomaly"' in stmts
    )
    assert any(s.startswith('COMMENT ON TABLE "telemetry"') for s in stmts)


def test_partial_anomaly_index_only_where_the_flag_exists() -> None:
    sql = " ".join(ddl.plain_table_statements(ALERTS_TABLE))
    assert "anomaly_idx" not in sql
    assert '"alerts_entity_id_time_idx" ON "alerts" ("entity_id", "time" DESC)' in sql


def test_partition_names_and_bounds() -> None:
    day = dt.date(2025, 12, 31)
    assert ddl.partition_name(TEL, day) == "telemetry_p20251231"
    assert ddl.partition_bounds(day) == ("2025-12-31 00:00:00+00", "2026-01-01 00:00:00+00")
    assert ddl.plain_partition_statement(TEL, day) == (
        'CREATE TABLE IF NOT EXISTS "telemetry_p20251231" PARTITION OF "telemetry" '
        "FOR VALUES FROM ('2025-12-31 00:00:00+00') TO ('2026-01-01 00:00:00+00')"
    )
    assert ddl.parse_partition_day(TEL, "telemetry_p20251231") == day
    assert ddl.parse_partition_day(TEL, "telemetry_default") is None
    assert ddl.parse_partition_day(TEL, "telemetry_p20251399") is None
    assert ddl.parse_partition_day("alerts", "telemetry_p20251231") is None


def test_wanted_days_from_yesterday_to_ahead_within_retention() -> None:
    now = dt.datetime(2025, 6, 10, 13, 0, tzinfo=dt.UTC)
    assert wanted_days(now, 3, 30) == [dt.date(2025, 6, d) for d in range(9, 14)]
    # yesterday ended 13 h ago: still inside 1 day of retention
    assert wanted_days(now, 0, 1) == [dt.date(2025, 6, 9), dt.date(2025, 6, 10)]
    assert wanted_days(now, 1, None)[0] == dt.date(2025, 6, 9)


def test_plain_rollup_mirrors_clickhouse_layout() -> None:
    rollup = TEL.rollups[0]
    table_sql, _ = (squash(s) for s in ddl.plain_rollup_statements(TEL, rollup))
    drop, state, view_sql = (squash(s) for s in ddl.plain_rollup_realtime_statements(TEL, rollup))
    assert table_sql.startswith('CREATE TABLE IF NOT EXISTS "satellite_stats_agg" (')
    assert drop == 'DROP TABLE IF EXISTS "satellite_stats_delta"'
    assert state.startswith(
        'INSERT INTO "orbitstream_rollups" (rollup, materialized_until) VALUES '
        "('satellite_stats', date_bin(interval '300 seconds', now(), "
    )
    assert state.endswith("ON CONFLICT (rollup) DO NOTHING")
    for short in ("battery", "storage", "signal"):
        for fn in ("sum", "min", "max"):
            assert f'"s_{fn}_{short}" double precision' in table_sql
        assert f'"s_sum_{short}" / NULLIF("s_data_points", 0) AS "avg_{short}"' in view_sql
        assert f'"s_min_{short}" AS "min_{short}"' in view_sql
    assert '"s_data_points" bigint NOT NULL' in table_sql
    assert '"s_anomaly_points" bigint NOT NULL' in table_sql
    assert 'PRIMARY KEY ("bucket", "satellite_id")' in table_sql
    assert view_sql.startswith(
        'CREATE OR REPLACE VIEW "satellite_stats" AS WITH wm AS (SELECT materialized_until AS t '
        "FROM \"orbitstream_rollups\" WHERE rollup = 'satellite_stats'), late AS (SELECT "
        "DISTINCT bucket FROM \"orbitstream_rollup_pending\" WHERE rollup = 'satellite_stats' "
        'AND bucket < (SELECT t FROM wm)) SELECT "bucket", '
    )
    # materialized buckets before the watermark but not the late ones, the raw rows after
    # the watermark, and the raw rows of the late buckets
    assert (
        'FROM "satellite_stats_agg" WHERE "bucket" < (SELECT t FROM wm) AND "bucket" NOT IN '
        "(SELECT bucket FROM late) UNION ALL"
    ) in view_sql
    assert 'FROM "telemetry" WHERE "time" >= (SELECT t FROM wm) GROUP BY 1, 2' in view_sql
    assert view_sql.endswith(
        'FROM "telemetry" JOIN late ON "time" >= late.bucket AND "time" < late.bucket + '
        "interval '300 seconds' GROUP BY 1, 2"
    )
    assert (
        "date_bin(interval '300 seconds', \"time\", TIMESTAMPTZ '1970-01-01 00:00:00+00') "
        'AS "bucket"'
    ) in view_sql
    assert 'count(*) FILTER (WHERE "is_anomaly") AS "anomaly_points"' in view_sql
    first, second, third = view_sql.split(" UNION ALL ")
    names = re.findall(r'AS "(\w+)"', first.split(" SELECT ", 2)[-1])
    for part in (second, third):  # same columns, same order
        assert re.findall(r'AS "(\w+)"', part) == ["bucket", *names]
    assert ["bucket", "satellite_id", *names] == [
        "bucket",
        "satellite_id",
        "avg_battery",
        "min_battery",
        "max_battery",
        "avg_storage",
        "min_storage",
        "max_storage",
        "avg_signal",
        "min_signal",
        "max_signal",
        "data_points",
        "anomaly_points",
    ]


def test_rollup_materialize_replaces_a_range_of_buckets_from_raw_rows() -> None:
    delete, insert = (squash(s) for s in ddl.rollup_materialize_sql(TEL, TEL.rollups[0]))
    assert delete == (
        'DELETE FROM "satellite_stats_agg" WHERE "bucket" >= %(lo)s AND "bucket" < %(hi)s'
    )
    assert insert.startswith('INSERT INTO "satellite_stats_agg" ("bucket", "satellite_id", ')
    assert 'sum("battery_charge_percent"), min("battery_charge_percent"), ' in insert
    assert 'count(*), count(*) FILTER (WHERE "is_anomaly")' in insert
    assert insert.endswith(
        'FROM "telemetry" WHERE "time" >= %(lo)s AND "time" < %(hi)s GROUP BY 1, 2'
    )


def test_core_tables_ledger_and_dead_letters() -> None:
    sql = squash(" ".join(ddl.core_statements()))
    assert (
        'CREATE TABLE IF NOT EXISTS "orbitstream_batches" ( batch_id text PRIMARY KEY, '
        "table_name text NOT NULL, rows integer NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT now() )" in sql
    )
    assert (
        'CREATE TABLE IF NOT EXISTS "dead_letters" ( time timestamptz NOT NULL, '
        "pipeline text NOT NULL, table_name text NOT NULL, batch_id text NOT NULL, "
        "row jsonb, error text NOT NULL )" in sql
    )


# -- TimescaleDB ---------------------------------------------------------------------------


def test_timescale_hypertable_compression_retention() -> None:
    plan = plan_migrations([TEL, ALERTS], SETTINGS, layout="timescale", applied=[])
    sql = squash(joined(plan))
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in sql
    assert "PARTITION BY" not in sql
    assert (
        "SELECT create_hypertable('telemetry', 'time', "
        "chunk_time_interval => INTERVAL '1 hour', if_not_exists => TRUE)" in sql
    )
    assert (
        'ALTER TABLE "telemetry" SET (timescaledb.compress, '
        "timescaledb.compress_segmentby = 'satellite_id', "
        "timescaledb.compress_orderby = 'time DESC')" in sql
    )
    assert (
        "SELECT add_compression_policy('telemetry', INTERVAL '1 day', if_not_exists => TRUE)" in sql
    )
    assert "SELECT add_retention_policy('telemetry', INTERVAL '30 days')" in sql
    assert "SELECT add_retention_policy('alerts', INTERVAL '30 days')" in sql
    assert '"telemetry_satellite_id_time_idx" ON "telemetry" ("satellite_id", "time" DESC)' in sql
    assert '"telemetry_anomaly_idx" ON "telemetry" ("time" DESC) WHERE "is_anomaly"' in sql


def test_timescale_continuous_aggregate_and_refresh_policy() -> None:
    cagg, policy = (squash(s) for s in ddl.timescale_rollup_statements(TEL, TEL.rollups[0]))
    assert cagg.startswith(
        'CREATE MATERIALIZED VIEW IF NOT EXISTS "satellite_stats" WITH (timescaledb.continuous'
    )
    assert 'time_bucket(INTERVAL \'5 minutes\', "time") AS "bucket"' in cagg
    assert 'avg("battery_charge_percent") AS "avg_battery"' in cagg
    assert 'min("storage_usage_mb") AS "min_storage"' in cagg
    assert 'max("signal_strength_dbm") AS "max_signal"' in cagg
    assert 'count(*) AS "data_points"' in cagg
    assert 'sum(CASE WHEN "is_anomaly" THEN 1 ELSE 0 END) AS "anomaly_points"' in cagg
    assert 'GROUP BY "bucket", "satellite_id" WITH NO DATA' in cagg
    assert policy == (
        "SELECT add_continuous_aggregate_policy('satellite_stats', "
        "start_offset => INTERVAL '1 day', end_offset => INTERVAL '5 minutes', "
        "schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE)"
    )
    plan = plan_migrations([TEL], SETTINGS, layout="timescale", applied=[])
    assert "SELECT add_retention_policy('satellite_stats', INTERVAL '365 days')" in joined(plan)


# -- choosing the layout and planning ------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "available", "recorded", "expected"),
    [
        ("auto", True, None, "timescale"),
        ("auto", False, None, "plain"),
        ("on", True, None, "timescale"),
        ("off", True, None, "plain"),
        ("auto", True, "plain", "plain"),  # never switch an existing database
        ("auto", False, "timescale", "timescale"),
        ("on", True, "timescale", "timescale"),
    ],
)
def test_choose_layout(setting: str, available: bool, recorded: str | None, expected: str) -> None:
    assert choose_layout(setting, available, recorded) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "available", "recorded"),
    [("on", False, None), ("on", True, "plain"), ("off", False, "timescale")],
)
def test_impossible_layout_settings_are_config_errors(
    setting: str, available: bool, recorded: str | None
) -> None:
    with pytest.raises(ConfigError):
        choose_layout(setting, available, recorded)  # type: ignore[arg-type]


def test_extension_reported_available_selects_timescale_plan() -> None:
    layout = choose_layout("auto", True, None)
    versions = [m.version for m in plan_migrations([TEL], SETTINGS, layout=layout, applied=[])]
    assert versions == [
        "0001_core",
        "0002_layout_timescale",
        "table/telemetry/create",
        "retention/telemetry/30d",
        "rollup/satellite_stats/create",
        "retention/satellite_stats/365d",
    ]
    layout = choose_layout("auto", False, None)
    versions = [m.version for m in plan_migrations([TEL], SETTINGS, layout=layout, applied=[])]
    assert versions == [
        "0001_core",
        "0002_layout_plain",
        "0003_rollup_state",
        "table/telemetry/create",
        "rollup/satellite_stats/create",
        "rollup/satellite_stats/realtime",
    ]


@pytest.mark.parametrize("layout", ["plain", "timescale"])
def test_plan_is_empty_once_everything_is_applied(layout: ddl.Layout) -> None:
    first = plan_migrations([TEL, ALERTS], SETTINGS, layout=layout, applied=[])
    applied = [m.version for m in first]
    cols = {t.name: set(t.column_names) for t in (TEL, ALERTS)}
    assert (
        plan_migrations(
            [TEL, ALERTS], SETTINGS, layout=layout, applied=applied, existing_columns=cols
        )
        == []
    )


def test_new_declared_column_becomes_a_nullable_add_column_migration() -> None:
    applied = [m.version for m in plan_migrations([TEL], SETTINGS, layout="plain", applied=[])]
    have = {"telemetry": set(TEL.column_names) - {"received_at"}}
    plan = plan_migrations([TEL], SETTINGS, layout="plain", applied=applied, existing_columns=have)
    assert [m.version for m in plan] == ["table/telemetry/column/received_at"]
    assert plan[0].statements == (
        'ALTER TABLE "telemetry" ADD COLUMN IF NOT EXISTS "received_at" timestamptz',
    )


def test_changed_retention_replaces_the_timescale_policy() -> None:
    applied = [m.version for m in plan_migrations([TEL], SETTINGS, layout="timescale", applied=[])]
    longer = [TEL.with_ttl(60)]
    plan = plan_migrations(longer, SETTINGS, layout="timescale", applied=applied)
    assert [m.version for m in plan] == ["retention/telemetry/60d"]
    assert plan[0].statements == (
        "SELECT remove_retention_policy('telemetry', if_exists => TRUE)",
        "SELECT add_retention_policy('telemetry', INTERVAL '60 days')",
    )
    # back to 30 days: the latest applied is 60d, so 30d is applied again
    back = plan_migrations([TEL], SETTINGS, layout="timescale", applied=[*applied, plan[0].version])
    assert [m.version for m in back] == ["retention/telemetry/30d"]


def test_table_ttl_wins_over_sink_retention() -> None:
    assert retention_days(TEL.with_ttl(7), SETTINGS) == 7
    assert retention_days(TEL.with_ttl(None), SETTINGS) == 30
    no_limit = PostgresSettings(dsn="postgres://h/db", retention_days=None)
    assert retention_days(TELEMETRY_TABLE.with_ttl(None), no_limit) is None


# -- settings and error classification -----------------------------------------------------


def test_dsn_password_is_never_shown() -> None:
    s = PostgresSettings(dsn="postgres://alice:s3cret@db.example:5432/orbit?sslmode=require")
    assert s.redacted_dsn == "postgres://alice:***@db.example:5432/orbit?sslmode=require"
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s)
    assert redact_dsn("postgresql://h/db?password=x&sslmode=disable") == (
        "postgresql://h/db?password=***&sslmode=disable"
    )
    assert redact_dsn("postgresql://bob@h/db") == "postgresql://bob@h/db"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dsn": "mysql://h/db"},
        {"dsn": "postgres://h/db", "max_connections": 0},
        {"dsn": "postgres://h/db", "retention_days": 0},
        {"dsn": "postgres://h/db", "timescale": "maybe"},
        {"dsn": "postgres://h/db", "partitions_ahead_days": -1},
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PostgresSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", "retryable"),  # connection failure
        ("53300", "retryable"),  # too many connections
        ("57P01", "retryable"),  # admin shutdown
        ("40001", "retryable"),  # serialization failure
        ("40P01", "retryable"),  # deadlock
        ("58030", "retryable"),  # I/O error
        ("22P02", "rejected"),  # invalid text representation
        ("23502", "rejected"),  # NOT NULL violation
        ("42P01", "retryable"),  # undefined table: a deployment problem, rows are held
        ("42601", "rejected"),  # syntax error
        ("54000", "rejected"),  # program limit: an index row over 8 KB
        ("42501", "retryable"),  # insufficient privilege: an operator can fix it
        (None, "retryable"),
    ],
)
def test_sqlstate_classification(sqlstate: str | None, kind: str) -> None:
    from orbitstream.sinks.postgres.sink import classify_sqlstate

    assert classify_sqlstate(sqlstate) == kind


def test_errors_carry_context_and_sqlstate() -> None:
    import psycopg

    from orbitstream.sinks.postgres.sink import (
        PostgresRejectedError,
        PostgresRetryableError,
        PostgresSink,
        classify_error,
    )

    sink = PostgresSink(SETTINGS)
    err = sink._error(psycopg.errors.NotNullViolation("null value"), "telemetry", "b1")
    assert isinstance(err, PostgresRejectedError)
    assert isinstance(err, SinkRejectedError)
    assert (err.sink, err.table, err.batch_id) == ("postgres", "telemetry", "b1")
    assert (err.sqlstate, err.status_code) == ("23502", 23502)
    assert classify_error(psycopg.OperationalError("connection refused")) == "retryable"
    assert classify_error(OSError("boom")) == "retryable"
    retry = PostgresRetryableError("x", sqlstate="57P01", sink="postgres")
    assert isinstance(retry, SinkRetryableError)
    assert retry.status_code is None  # not all digits: see sqlstate
    assert PostgresRejectedError("x", sqlstate="23502").status_code == 23502
