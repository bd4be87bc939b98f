"""The schema both ClickHouse stores create: the embedded one (chDB) and a server.

One function renders every statement from the table declarations with a
:class:`~orbitstream.sinks.clickhouse_sql.ClickHouseDialect`, so the two stores cannot
drift apart: per table ``CREATE TABLE`` + ``MODIFY TTL``, per rollup its aggregating
table, materialized view and view, then the ``dead_letters`` table.
"""

from __future__ import annotations

from collections.abc import Sequence

from orbitstream.core.tables import Table
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect, quote_ident

__all__ = ["create_database", "schema_statements"]


def create_database(dialect: ClickHouseDialect) -> str | None:
    """``CREATE DATABASE IF NOT EXISTS`` for the dialect's database (``None`` without one)."""
    if not dialect.database:
        return None
    cluster = f" ON CLUSTER {quote_ident(dialect.cluster)}" if dialect.cluster else ""
    return f"CREATE DATABASE IF NOT EXISTS {quote_ident(dialect.database)}{cluster}"


def schema_statements(
    dialect: ClickHouseDialect, tables: Sequence[Table], rollup_retention_days: int | None
) -> list[str]:
    """Every table, TTL, rollup and the dead-letter table, in the order to run them.

    Idempotent (``IF NOT EXISTS``; ``MODIFY TTL`` does not rewrite existing parts).
    """
    out: list[str] = []
    for table in tables:
        out.append(dialect.create_table(table))
        ttl = dialect.modify_ttl(table)
        if ttl:
            out.append(ttl)
        for rollup in table.rollups:
            out.extend(dialect.rollup_statements(table, rollup, rollup_retention_days))
    out.append(dialect.dead_letters())
    return out
