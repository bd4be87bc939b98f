"""ClickHouse DDL rendered from table declarations (shared by chDB and ClickHouse server).

``MergeTree`` ordered by (entity, time), partitioned by day, ``TTL`` retention,
``LowCardinality`` for enum-like strings, a dedup window so a retried batch (same
``insert_deduplication_token``) lands once, and per rollup an ``AggregatingMergeTree``
fed by a materialized view plus a plain view with the averages.

A table declared :class:`~orbitstream.core.tables.Replacing` becomes a
``ReplacingMergeTree`` on its sort key, without ``PARTITION BY`` (rows are collapsed only
within a partition, so a time partition would keep two rows of one key written on two
days). ``keep="last"`` uses the version column as the engine's version; ``keep="first"``
adds a ``MATERIALIZED`` column (:data:`FIRST_WINS_VERSION`) holding the negated version,
so the earliest row wins. ``SELECT *`` does not return it and inserts do not send it.
Read such a table with ``FINAL`` (or ``argMin``/``argMax`` per key): before a merge it
may still hold several rows per key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from orbitstream.core.tables import ColType, Column, Rollup, Table

__all__ = [
    "DEAD_LETTERS_DDL",
    "FIRST_WINS_VERSION",
    "ClickHouseDialect",
    "quote_ident",
    "quote_str",
]

DEDUP_WINDOW = 10_000
FIRST_WINS_VERSION = "_version"

_BASE: dict[ColType, str] = {
    ColType.TIMESTAMP: "DateTime64(9, 'UTC')",
    ColType.STRING: "String",
    ColType.FLOAT64: "Float64",
    ColType.INT64: "Int64",
    ColType.UINT64: "UInt64",
    ColType.BOOL: "Bool",
    ColType.STRING_LIST: "Array(LowCardinality(String))",
    ColType.MAP_STR_FLOAT: "Map(LowCardinality(String), Float64)",
    ColType.MAP_STR_STR: "Map(LowCardinality(String), String)",
}


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def column_type(col: Column) -> str:
    typ = _BASE[col.type]
    if col.type is ColType.STRING and col.low_cardinality:
        # ClickHouse nests it this way round: Nullable(LowCardinality(...)) is an error.
        return "LowCardinality(Nullable(String))" if col.nullable else "LowCardinality(String)"
    if col.nullable:
        typ = f"Nullable({typ})"
    return typ


@dataclass(frozen=True, slots=True)
class ClickHouseDialect:
    """Renders DDL. ``engine`` may be ``ReplicatedMergeTree(...)`` for clusters.

    :param replicated: use ``ReplicatedMergeTree('/clickhouse/tables/{shard}/<db>/<t>',
        '{replica}')`` and its aggregating counterpart.
    """

    database: str | None = None
    replicated: bool = False
    cluster: str | None = None
    distributed: bool = False

    def distributed_table(self, name: str, local: str, sharding_key: str) -> str:
        """A ``Distributed`` table over ``local`` on every shard of the cluster."""
        if not self.cluster:
            raise ValueError("a Distributed table needs a cluster")
        db = quote_str(self.database or "default")
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name(name)}{self._on_cluster()} AS {self.name(local)}\n"
            f"ENGINE = Distributed({quote_str(self.cluster)}, {db}, {quote_str(local)}, {sharding_key})"
        )

    def in_namespace(self, namespace: str | None) -> ClickHouseDialect:
        """The dialect for tables in ``namespace`` (a database; ``None``: this one's)."""
        if not namespace or namespace == self.database:
            return self
        return dataclasses.replace(self, database=namespace)

    def name(self, table: str) -> str:
        return (
            f"{quote_ident(self.database)}.{quote_ident(table)}"
            if self.database
            else quote_ident(table)
        )

    def _on_cluster(self) -> str:
        return f" ON CLUSTER {quote_ident(self.cluster)}" if self.cluster else ""

    def _engine(self, kind: str, table: str, *args: str) -> str:
        if not self.replicated:
            return f"{kind}({', '.join(args)})"
        path = f"/clickhouse/tables/{{shard}}/{self.database or 'default'}/{table}"
        params = ", ".join((quote_str(path), "'{replica}'", *args))
        return f"Replicated{kind}({params})"

    def _table_engine(self, table: Table) -> tuple[str, list[str]]:
        """The engine clause and any extra (materialized) column lines."""
        rep = table.replacing
        if rep is None:
            return self._engine("MergeTree", table.name), []
        if rep.keep == "last":
            return self._engine(
                "ReplacingMergeTree", table.name, quote_ident(rep.version_column)
            ), []
        col = quote_ident(rep.version_column)
        expr = (
            f"-toUnixTimestamp64Nano({col})"
            if table.column(rep.version_column).type is ColType.TIMESTAMP
            else f"-{col}"
        )
        version = quote_ident(FIRST_WINS_VERSION)
        return (
            self._engine("ReplacingMergeTree", table.name, version),
            [f"    {version} Int64 MATERIALIZED {expr}"],
        )

    def create_table(self, table: Table) -> str:
        cols = []
        for c in table.columns:
            line = f"    {quote_ident(c.name)} {column_type(c)}"
            if c.codec:
                line += f" CODEC({c.codec})"
            if c.comment:
                line += f" COMMENT {quote_str(c.comment)}"
            cols.append(line)
        engine, extra = self._table_engine(table)
        cols.extend(extra)
        ttl = ""
        if table.ttl_days:
            ttl = f"\nTTL toDateTime({quote_ident(table.time_column)}) + INTERVAL {int(table.ttl_days)} DAY"
        order = ", ".join(quote_ident(c) for c in table.order_by)
        comment = f"\nCOMMENT {quote_str(table.comment)}" if table.comment else ""
        partition = (
            f"PARTITION BY toDate({quote_ident(table.time_column)})\n"
            if table.replacing is None
            else ""
        )
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name(table.name)}{self._on_cluster()}\n(\n"
            + ",\n".join(cols)
            + f"\n)\nENGINE = {engine}\n"
            f"{partition}"
            f"ORDER BY ({order}){ttl}\n"
            f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}{comment}"
        )

    def skip_indexes(self, table: Table) -> list[str]:
        """``ADD INDEX IF NOT EXISTS`` per indexed column (also upgrades existing tables)."""
        return [
            f"ALTER TABLE {self.name(table.name)}{self._on_cluster()} ADD INDEX IF NOT EXISTS "
            f"{quote_ident(c.name + '_' + c.skip_index)} {quote_ident(c.name)} "
            f"TYPE {c.skip_index} GRANULARITY 1"
            for c in table.columns
            if c.skip_index
        ]

    def modify_ttl(self, table: Table) -> str | None:
        if not table.ttl_days:
            return None
        return (
            f"ALTER TABLE {self.name(table.name)}{self._on_cluster()} MODIFY TTL "
            f"toDateTime({quote_ident(table.time_column)}) + INTERVAL {int(table.ttl_days)} DAY "
            "SETTINGS materialize_ttl_after_modify = 0"
        )

    def rollup_statements(self, table: Table, rollup: Rollup, ttl_days: int | None) -> list[str]:
        """Target table, materialized view and the user-facing view for one rollup."""
        target = f"{rollup.name}_agg"
        mv = f"{rollup.name}_mv"
        keys = [quote_ident(k) for k in rollup.group_by]
        bucket = quote_ident(rollup.bucket_name)
        cols = [f"    {bucket} DateTime('UTC')"]
        for k in rollup.group_by:
            cols.append(f"    {quote_ident(k)} {column_type(table.column(k))}")
        sel = [
            f"toStartOfInterval({quote_ident(table.time_column)}, INTERVAL {rollup.bucket_secs} SECOND)"
            f" AS {bucket}",
            *keys,
        ]
        view = [bucket, *keys]

        def state(name: str) -> str:
            return quote_ident("s_" + name)

        for src, short in rollup.measures:
            s = quote_ident(src)
            cols += [
                f"    {state('sum_' + short)} SimpleAggregateFunction(sum, Float64)",
                f"    {state('min_' + short)} SimpleAggregateFunction(min, Float64)",
                f"    {state('max_' + short)} SimpleAggregateFunction(max, Float64)",
            ]
            sel += [
                f"sum({s}) AS {state('sum_' + short)}",
                f"min({s}) AS {state('min_' + short)}",
                f"max({s}) AS {state('max_' + short)}",
            ]
            view += [
                f"sum({state('sum_' + short)}) / sum({state(rollup.count_name)})"
                f" AS {quote_ident('avg_' + short)}",
                f"min({state('min_' + short)}) AS {quote_ident('min_' + short)}",
                f"max({state('max_' + short)}) AS {quote_ident('max_' + short)}",
            ]
        count = state(rollup.count_name)
        cols.append(f"    {count} SimpleAggregateFunction(sum, UInt64)")
        sel.append(f"count() AS {count}")
        view.append(f"sum({count}) AS {quote_ident(rollup.count_name)}")
        for out, flag in rollup.flag_counts:
            o = state(out)
            cols.append(f"    {o} SimpleAggregateFunction(sum, UInt64)")
            sel.append(f"countIf({quote_ident(flag)}) AS {o}")
            view.append(f"sum({o}) AS {quote_ident(out)}")
        ttl = f"\nTTL {bucket} + INTERVAL {int(ttl_days)} DAY" if ttl_days else ""
        order = ", ".join([*keys, bucket])
        group = ", ".join([bucket, *keys])
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name(target)}{self._on_cluster()}\n(\n"
            + ",\n".join(cols)
            + f"\n)\nENGINE = {self._engine('AggregatingMergeTree', target)}\n"
            f"PARTITION BY toDate({bucket})\nORDER BY ({order}){ttl}\n"
            f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.name(mv)}{self._on_cluster()} "
            f"TO {self.name(target)} AS\nSELECT {', '.join(sel)}\n"
            f"FROM {self.name(table.name)}\nGROUP BY {group}",
            f"CREATE VIEW IF NOT EXISTS {self.name(rollup.name)}{self._on_cluster()} AS\n"
            f"SELECT {', '.join(view)}\nFROM {self.name(target)}\nGROUP BY {group}",
        ]

    def dead_letters(self) -> str:
        return DEAD_LETTERS_DDL.format(
            name=self.name("dead_letters"),
            cluster=self._on_cluster(),
            engine=self._engine("MergeTree", "dead_letters"),
        )

    def insert_settings(self, batch_id: str) -> str:
        return (
            f"SETTINGS insert_deduplication_token = {quote_str(batch_id)}, async_insert = 0, "
            "insert_deduplicate = 1, deduplicate_blocks_in_dependent_materialized_views = 1"
        )


DEAD_LETTERS_DDL = """CREATE TABLE IF NOT EXISTS {name}{cluster}
(
    `time` DateTime64(9, 'UTC'),
    `pipeline` LowCardinality(String),
    `table` LowCardinality(String),
    `batch_id` String,
    `row` String,
    `error` String
)
ENGINE = {engine}
PARTITION BY toDate(`time`)
ORDER BY (`pipeline`, `table`, `time`)"""
