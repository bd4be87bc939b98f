"""Replacing tables ("first wins" / "latest state"): declaration checks and ClickHouse DDL."""

from __future__ import annotations

import pytest

from orbitstream.core.tables import ColType, Column, Replacing, Table
from orbitstream.pipelines import network, sessions
from orbitstream.sinks.clickhouse.ddl import schema_statements
from orbitstream.sinks.clickhouse_sql import FIRST_WINS_VERSION, ClickHouseDialect


def _table(replacing: Replacing | None) -> Table:
    cols = (
        Column("key", ColType.STRING),
        Column("t", ColType.TIMESTAMP),
        Column("n", ColType.INT64),
        Column("u", ColType.UINT64),
        Column("maybe", ColType.TIMESTAMP, nullable=True),
        Column("x", ColType.FLOAT64),
    )
    return Table("r", cols, time_column="t", order_by=("key",), replacing=replacing)


def test_keep_first_renders_a_negated_materialized_version_and_no_partition() -> None:
    sql = ClickHouseDialect().create_table(sessions.SESSIONS_BASE_TABLE)
    assert f"`{FIRST_WINS_VERSION}` Int64 MATERIALIZED -toUnixTimestamp64Nano(`started_at`)" in sql
    assert f"ENGINE = ReplacingMergeTree(`{FIRST_WINS_VERSION}`)" in sql
    assert "PARTITION BY" not in sql
    assert "ORDER BY (`session_id`)" in sql


def test_keep_first_on_an_int64_version_negates_the_column() -> None:
    sql = ClickHouseDialect().create_table(_table(Replacing("n", keep="first")))
    assert f"`{FIRST_WINS_VERSION}` Int64 MATERIALIZED -`n`" in sql


def test_keep_last_uses_the_version_column_itself() -> None:
    sql = ClickHouseDialect().create_table(network.NODES_TABLE)
    assert "ENGINE = ReplacingMergeTree(`last_seen`)" in sql
    assert "MATERIALIZED" not in sql and "PARTITION BY" not in sql
    assert "ORDER BY (`node_name`)" in sql


def test_plain_tables_keep_mergetree_and_day_partitions() -> None:
    sql = ClickHouseDialect().create_table(network.INTERFACE_COUNTERS_TABLE)
    assert "ENGINE = MergeTree()" in sql and "PARTITION BY toDate(`time`)" in sql


def test_replicated_replacing_engine_keeps_path_replica_and_version() -> None:
    d = ClickHouseDialect(database="sessions", replicated=True)
    sql = d.create_table(sessions.SESSIONS_BASE_TABLE)
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/sessions/sessions_base',"
        f" '{{replica}}', `{FIRST_WINS_VERSION}`)"
    ) in sql
    nodes = d.create_table(network.NODES_TABLE)
    assert "ReplicatedReplacingMergeTree(" in nodes and "'{replica}', `last_seen`)" in nodes


def test_distributed_local_tables_stay_replacing() -> None:
    d = ClickHouseDialect(database="net", replicated=True, cluster="c1", distributed=True)
    stmts = schema_statements(d, network.tables(7), 365)
    sql = "\n".join(stmts)
    local = next(s for s in stmts if s.startswith("CREATE TABLE IF NOT EXISTS `net`.`nodes_local`"))
    assert "ReplicatedReplacingMergeTree(" in local and "`last_seen`)" in local
    assert "Distributed('c1', 'net', 'nodes_local', cityHash64(`node_name`))" in sql


def test_with_ttl_keeps_the_replacing_declaration() -> None:
    t = sessions.SESSIONS_BASE_TABLE.with_ttl(30)
    assert t.replacing == Replacing("started_at", keep="first") and t.ttl_days == 30
    assert "TTL toDateTime(`started_at`) + INTERVAL 30 DAY" in ClickHouseDialect().create_table(t)


def test_nullable_low_cardinality_nests_the_way_clickhouse_accepts() -> None:
    sql = ClickHouseDialect().create_table(network.ADDRESSES_TABLE)
    assert "`origin` LowCardinality(Nullable(String))" in sql
    assert "`family` LowCardinality(String)" in sql
    assert "Nullable(LowCardinality" not in sql


@pytest.mark.parametrize(
    ("replacing", "message"),
    [
        (Replacing("nope"), "unknown version column"),
        (Replacing("maybe"), "non-nullable"),
        (Replacing("x"), "non-nullable"),
        (Replacing("u", keep="first"), "non-nullable TIMESTAMP/INT64"),
        (Replacing("key"), "non-nullable"),
        (Replacing("t", keep="middle"), "keep must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_replacing_declarations_are_refused(replacing: Replacing, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _table(replacing)


def test_version_column_in_the_sort_key_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be in order_by"):
        Table(
            "r",
            (Column("key", ColType.STRING), Column("t", ColType.TIMESTAMP)),
            time_column="t",
            order_by=("key", "t"),
            replacing=Replacing("t"),
        )


def test_uint64_is_a_valid_keep_last_version() -> None:
    sql = ClickHouseDialect().create_table(_table(Replacing("u")))
    assert "ENGINE = ReplacingMergeTree(`u`)" in sql
