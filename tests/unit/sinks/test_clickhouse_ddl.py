"""ClickHouse DDL: one rendering for chDB and servers; replicated and distributed variants."""

from __future__ import annotations

from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.clickhouse.ddl import create_database, schema_statements
from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect


def test_single_server_schema() -> None:
    sql = "\n".join(schema_statements(ClickHouseDialect(database="orbit"), tables(30), 365))
    assert "CREATE TABLE IF NOT EXISTS `orbit`.`telemetry`" in sql
    assert "ENGINE = MergeTree()" in sql and "PARTITION BY toDate(`time`)" in sql
    assert "ORDER BY (`satellite_id`, `time`)" in sql
    assert "TTL toDateTime(`time`) + INTERVAL 30 DAY" in sql
    assert "`satellite_id` LowCardinality(String)" in sql
    assert "non_replicated_deduplication_window" in sql
    assert "CREATE MATERIALIZED VIEW IF NOT EXISTS `orbit`.`satellite_stats_mv`" in sql
    assert "CREATE VIEW IF NOT EXISTS `orbit`.`satellite_stats`" in sql
    assert "Replicated" not in sql and "Distributed" not in sql
    assert "ADD INDEX IF NOT EXISTS `received_at_minmax` `received_at` TYPE minmax" in sql


def test_replicated_schema() -> None:
    d = ClickHouseDialect(database="orbit", replicated=True, cluster="c1")
    sql = "\n".join(schema_statements(d, tables(30), 365))
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/orbit/telemetry', '{replica}')" in sql
    assert "ReplicatedAggregatingMergeTree(" in sql
    assert "ON CLUSTER `c1`" in sql
    assert create_database(d) == "CREATE DATABASE IF NOT EXISTS `orbit` ON CLUSTER `c1`"


def test_distributed_schema_shards_by_entity_and_keeps_names() -> None:
    d = ClickHouseDialect(database="orbit", replicated=True, cluster="c1", distributed=True)
    stmts = schema_statements(d, tables(30), 365)
    sql = "\n".join(stmts)
    assert "`orbit`.`telemetry_local`" in sql
    assert (
        "CREATE TABLE IF NOT EXISTS `orbit`.`telemetry` ON CLUSTER `c1` AS `orbit`.`telemetry_local`\n"
        "ENGINE = Distributed('c1', 'orbit', 'telemetry_local', cityHash64(`satellite_id`))"
    ) in sql
    mv = next(s for s in stmts if "MATERIALIZED VIEW" in s and "satellite_stats" in s)
    assert "FROM `orbit`.`telemetry_local`" in mv and "TO `orbit`.`satellite_stats_local_agg`" in mv
    view = next(s for s in stmts if s.startswith("CREATE VIEW"))
    assert "`orbit`.`satellite_stats` " in view and "FROM `orbit`.`satellite_stats_agg`" in view
    assert "Distributed('c1', 'orbit', 'satellite_stats_local_agg', rand())" in sql


def test_distributed_needs_a_cluster() -> None:
    import pytest

    from orbitstream.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        ClickHouseSettings.from_env(
            {"CLICKHOUSE_HOST": "ch", "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED": "true"}
        )
    assert info.value.setting == "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED"
    s = ClickHouseSettings.from_env(
        {
            "CLICKHOUSE_URL": "http://ch:8123",
            "ORBITSTREAM_CLICKHOUSE_CLUSTER": "c",
            "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED": "1",
        }
    )
    assert s is not None and s.distributed and s.cluster == "c"


def test_deployment_errors_are_flagged() -> None:
    from orbitstream.sinks.clickhouse.transport import ClickHouseRetryableError
    from orbitstream.sinks.postgres.sink import PostgresRetryableError

    assert ClickHouseRetryableError("x", code=60).deployment
    assert ClickHouseRetryableError("x", code=516).deployment
    assert not ClickHouseRetryableError("x", code=252).deployment
    assert PostgresRetryableError("x", sqlstate="42P01").deployment
    assert PostgresRetryableError("x", sqlstate="28P01").deployment
    assert not PostgresRetryableError("x", sqlstate="57P01").deployment
