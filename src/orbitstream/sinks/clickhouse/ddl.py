"""The schema both ClickHouse stores create: the embedded one (chDB) and a server.

One function renders every statement from the table declarations with a
:class:`~orbitstream.sinks.clickhouse_sql.ClickHouseDialect`, so the two stores cannot
drift apart: per table ``CREATE TABLE`` + ``MODIFY TTL``, per rollup its aggregating
table, materialized view and view, then the ``dead_letters`` table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from orbitstream.core.tables import Table
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect, quote_ident

__all__ = ["create_database", "namespace_databases", "schema_statements"]


def create_database(dialect: ClickHouseDialect) -> str | None:
    """``CREATE DATABASE IF NOT EXISTS`` for the dialect's database (``None`` without one)."""
    if not dialect.database:
        return None
    cluster = f" ON CLUSTER {quote_ident(dialect.cluster)}" if dialect.cluster else ""
    return f"CREATE DATABASE IF NOT EXISTS {quote_ident(dialect.database)}{cluster}"


def namespace_databases(dialect: ClickHouseDialect, tables: Sequence[Table]) -> list[str]:
    """``CREATE DATABASE IF NOT EXISTS`` for each table namespace other than the dialect's."""
    out: list[str] = []
    for ns in dict.fromkeys(t.namespace for t in tables if t.namespace):
        if ns != dialect.database:
            sql = create_database(dialect.in_namespace(ns))
            if sql:
                out.append(sql)
    return out


def schema_statements(
    dialect: ClickHouseDialect, tables: Sequence[Table], rollup_retention_days: int | None
) -> list[str]:
    """Every table, TTL, rollup and the dead-letter table, in the order to run them.

    Idempotent (``IF NOT EXISTS``; ``MODIFY TTL`` does not rewrite existing parts).
    """
    out = namespace_databases(dialect, tables)
    if dialect.distributed:
        return out + _distributed_statements(dialect, tables, rollup_retention_days)
    for table in tables:
        d = dialect.in_namespace(table.namespace)
        out.append(d.create_table(table))
        out.extend(d.skip_indexes(table))
        ttl = d.modify_ttl(table)
        if ttl:
            out.append(ttl)
        for rollup in table.rollups:
            out.extend(d.rollup_statements(table, rollup, rollup_retention_days))
    out.append(dialect.dead_letters())
    return out


def _local(table: Table) -> Table:
    return dataclasses.replace(table, name=f"{table.name}_local", rollups=())


def _distributed_statements(
    dialect: ClickHouseDialect, tables: Sequence[Table], rollup_retention_days: int | None
) -> list[str]:
    """Cluster layout: ``<t>_local`` (Replicated)MergeTree on every shard, ``<t>`` a
    ``Distributed`` table over them (sharded by entity), rollups kept per shard by a
    materialized view on the local table, and read through a Distributed aggregate table.
    Inserts go to ``<t>``; queries read ``<t>`` and the rollup view, as on one server.
    """
    out: list[str] = []
    root = dialect
    for table in tables:
        dialect = root.in_namespace(table.namespace)
        local = _local(table)
        out.append(dialect.create_table(local))
        out.extend(dialect.skip_indexes(local))
        ttl = dialect.modify_ttl(local)
        if ttl:
            out.append(ttl)
        key = f"cityHash64({quote_ident(table.entity_column)})" if table.entity_column else "rand()"
        out.append(dialect.distributed_table(table.name, local.name, key))
        for rollup in table.rollups:
            local_rollup = dataclasses.replace(rollup, name=f"{rollup.name}_local")
            agg_table, mv, _ = dialect.rollup_statements(local, local_rollup, rollup_retention_days)
            out += [agg_table, mv]
            out.append(
                dialect.distributed_table(
                    f"{rollup.name}_agg", f"{rollup.name}_local_agg", "rand()"
                )
            )
            out.append(dialect.rollup_statements(table, rollup, rollup_retention_days)[2])
    out.append(root.dead_letters())
    return out
