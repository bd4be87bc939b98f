"""PostgreSQL DDL rendered from the table declarations (pure: strings out).

Two layouts share table and column names, so dashboards work on both:

- ``timescale``: a hypertable (1 h chunks), compression segmented by entity and ordered
  by time after 1 day, a retention policy, and per rollup a continuous aggregate named
  after the rollup with a refresh policy.
- ``plain``: the table ``PARTITION BY RANGE (time)`` with daily partitions
  ``<table>_pYYYYMMDD`` (created ahead and dropped past retention by
  :func:`~orbitstream.sinks.postgres.migrations.maintain`) plus a DEFAULT partition,
  so an out-of-range timestamp never fails a batch; per rollup a table
  ``<rollup>_agg`` holding the buckets before a watermark (``orbitstream_rollups``),
  materialized from the raw rows by the sink's refresh every few seconds (and again for a
  bucket a late batch wrote to: ``orbitstream_rollup_pending``, filled in the batch's
  transaction), and a view named after the rollup with ClickHouse's output columns that
  aggregates the raw rows after the watermark when read — TimescaleDB's real-time
  continuous aggregates, by hand.

Both have the batch ledger ``orbitstream_batches`` and ``dead_letters``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from typing import Literal

from orbitstream.core.tables import ColType, Column, Rollup, Table

__all__ = [
    "ANOMALY_COLUMN",
    "DEAD_LETTERS",
    "LEDGER",
    "ROLLUP_PENDING",
    "ROLLUP_STATE",
    "Layout",
    "column_type",
    "copy_sql",
    "core_statements",
    "interval",
    "parse_partition_day",
    "partition_bounds",
    "partition_name",
    "plain_partition_statement",
    "plain_rollup_realtime_statements",
    "plain_rollup_statements",
    "plain_table_statements",
    "qname",
    "quote_ident",
    "quote_literal",
    "regclass",
    "rel",
    "relkey",
    "replacing_index_statement",
    "replacing_merge_sql",
    "rollup_delta_table",
    "rollup_key",
    "rollup_materialize_sql",
    "rollup_state_statements",
    "rollup_table",
    "schema_statement",
    "stage_name",
    "stage_statement",
    "timescale_extension_statements",
    "timescale_retention_statements",
    "timescale_rollup_retention_statements",
    "timescale_rollup_statements",
    "timescale_table_statements",
]

Layout = Literal["plain", "timescale"]

LEDGER = "orbitstream_batches"
ROLLUP_STATE = "orbitstream_rollups"
ROLLUP_PENDING = "orbitstream_rollup_pending"
DEAD_LETTERS = "dead_letters"
ANOMALY_COLUMN = "is_anomaly"
CHUNK_INTERVAL = "1 hour"
COMPRESS_AFTER = "1 day"

_BASE: dict[ColType, str] = {
    ColType.TIMESTAMP: "timestamptz",
    ColType.STRING: "text",
    ColType.FLOAT64: "double precision",
    ColType.INT64: "bigint",
    ColType.UINT64: "bigint",
    ColType.BOOL: "boolean",
    ColType.STRING_LIST: "text[]",
    ColType.MAP_STR_FLOAT: "jsonb",
    ColType.MAP_STR_STR: "jsonb",
}


def quote_ident(name: str) -> str:
    """``"name"`` with embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``'value'`` with embedded quotes doubled (``standard_conforming_strings`` on)."""
    return "'" + value.replace("'", "''") + "'"


def rel(namespace: str | None, name: str) -> str:
    """A relation's quoted name, schema-qualified when it has a namespace."""
    return f"{quote_ident(namespace)}.{quote_ident(name)}" if namespace else quote_ident(name)


def qname(table: Table) -> str:
    """The table's quoted name in its namespace (schema)."""
    return rel(table.namespace, table.name)


def relkey(namespace: str | None, name: str) -> str:
    """``schema.name`` (just ``name`` in the default schema): how migration versions and
    reports name a relation, unchanged for tables created before namespaces."""
    return f"{namespace}.{name}" if namespace else name


def regclass(namespace: str | None, name: str) -> str:
    """A relation as a string literal for functions taking ``regclass`` (TimescaleDB's)."""
    return quote_literal(rel(namespace, name) if namespace else name)


def schema_statement(namespace: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(namespace)}"


def interval(secs: int) -> str:
    """``300`` -> ``'5 minutes'`` (an INTERVAL literal, quoted)."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if secs % size == 0:
            n = secs // size
            return quote_literal(f"{n} {unit}" + ("" if n == 1 else "s"))
    return quote_literal(f"{secs} seconds")


def column_type(col: Column) -> str:
    return _BASE[col.type]


def _q(names: Iterable[str]) -> str:
    return ", ".join(quote_ident(n) for n in names)


def _columns(table: Table) -> str:
    lines = []
    for c in table.columns:
        null = "" if c.nullable else " NOT NULL"
        lines.append(f"    {quote_ident(c.name)} {column_type(c)}{null}")
    return ",\n".join(lines)


def _comments(table: Table) -> list[str]:
    out = []
    if table.comment:
        out.append(f"COMMENT ON TABLE {qname(table)} IS {quote_literal(table.comment)}")
    for c in table.columns:
        if c.comment:
            out.append(
                f"COMMENT ON COLUMN {qname(table)}.{quote_ident(c.name)} "
                f"IS {quote_literal(c.comment)}"
            )
    return out


def _has_anomaly_flag(table: Table) -> bool:
    return ANOMALY_COLUMN in table.column_names and (
        table.column(ANOMALY_COLUMN).type is ColType.BOOL
    )


def _entity_index(table: Table) -> str | None:
    if table.entity_column is None:
        return None
    name = f"{table.name}_{table.entity_column}_time_idx"
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {qname(table)} "
        f"({quote_ident(table.entity_column)}, {quote_ident(table.time_column)} DESC)"
    )


def _anomaly_index(table: Table) -> str | None:
    if not _has_anomaly_flag(table):
        return None
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table.name + '_anomaly_idx')} "
        f"ON {qname(table)} ({quote_ident(table.time_column)} DESC) "
        f"WHERE {quote_ident(ANOMALY_COLUMN)}"
    )


def copy_sql(table: Table, *, into: str | None = None) -> str:
    """``COPY <table> (<columns>) FROM STDIN (FORMAT BINARY)`` (``into``: another quoted
    relation with the same columns)."""
    return f"COPY {into or qname(table)} ({_q(table.column_names)}) FROM STDIN (FORMAT BINARY)"


# -- replacing tables ---------------------------------------------------------------------
# PostgreSQL has no ReplacingMergeTree, and a partitioned table cannot hold a unique index
# without its partition column: a replacing table's batch is copied into a temporary stage
# and merged under a per-table transaction lock (see replacing_merge_sql).


def stage_name(table: Table) -> str:
    """The temporary table a replacing table's batches are copied into (per connection,
    emptied at commit); unique per schema and table, within PostgreSQL's 63 bytes."""
    full = relkey(table.namespace, table.name)
    name = "orbitstream_stage_" + re.sub(r"[^A-Za-z0-9_]", "_", full)
    if len(name) > 63:
        name = name[:46] + "_" + hashlib.sha256(full.encode()).hexdigest()[:16]
    return "pg_temp." + quote_ident(name)


def stage_statement(table: Table) -> str:
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(table).removeprefix('pg_temp.')} "
        f"(LIKE {qname(table)}) ON COMMIT DELETE ROWS"
    )


def replacing_index_statement(table: Table) -> str:
    """A btree on (key, version): the merge's lookups of a key's stored row."""
    rep = table.replacing
    assert rep is not None
    cols = [*table.order_by, rep.version_column]
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table.name + '_replacing_idx')} "
        f"ON {qname(table)} ({_q(tuple(dict.fromkeys(cols)))})"
    )


def replacing_merge_sql(table: Table) -> str:
    """Merge the stage into the table so each key keeps one row: the smallest version
    (``keep="first"``) or the largest (``"last"``); on a tie the stored row stays.

    Under ``pg_advisory_xact_lock`` on the table (two workers merging the same key would
    otherwise both insert it): rows the batch beats are deleted, then the batch's best
    row per key is inserted unless a stored row is as good."""
    rep = table.replacing
    assert rep is not None
    name = qname(table)
    stage = stage_name(table)
    v = quote_ident(rep.version_column)
    keys = [quote_ident(k) for k in table.order_by]
    first = rep.keep == "first"
    agg, beats, as_good, order = ("min", ">", "<=", "ASC") if first else ("max", "<", ">=", "DESC")
    same = " AND ".join(f"t.{k} IS NOT DISTINCT FROM s.{k}" for k in keys)
    key_list = ", ".join(keys)
    lock = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    return (
        f"SELECT pg_advisory_xact_lock({lock}); "
        f"DELETE FROM {name} AS t USING (SELECT {key_list}, {agg}({v}) AS {v} FROM {stage} "
        f"GROUP BY {key_list}) AS s WHERE {same} AND t.{v} {beats} s.{v}; "
        f"INSERT INTO {name} SELECT s.* FROM (SELECT DISTINCT ON ({key_list}) * FROM {stage} "
        f"ORDER BY {key_list}, {v} {order}) AS s WHERE NOT EXISTS (SELECT 1 FROM {name} AS t "
        f"WHERE {same} AND t.{v} {as_good} s.{v})"
    )


# -- always ------------------------------------------------------------------------------


def core_statements() -> list[str]:
    """The batch ledger (deduplication) and the dead-letter table."""
    return [
        f"CREATE TABLE IF NOT EXISTS {quote_ident(LEDGER)} (\n"
        "    batch_id text PRIMARY KEY,\n"
        "    table_name text NOT NULL,\n"
        "    rows integer NOT NULL,\n"
        "    written_at timestamptz NOT NULL DEFAULT now()\n)",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(LEDGER + '_written_at_brin')} "
        f"ON {quote_ident(LEDGER)} USING brin (written_at)",
        f"COMMENT ON TABLE {quote_ident(LEDGER)} IS "
        + quote_literal(
            "Batch ids committed, written in the same transaction as the rows: "
            "a replayed batch finds its id here and is skipped."
        ),
        f"CREATE TABLE IF NOT EXISTS {quote_ident(DEAD_LETTERS)} (\n"
        "    time timestamptz NOT NULL,\n"
        "    pipeline text NOT NULL,\n"
        "    table_name text NOT NULL,\n"
        "    batch_id text NOT NULL,\n"
        "    row jsonb,\n"
        "    error text NOT NULL\n)",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(DEAD_LETTERS + '_time_brin')} "
        f"ON {quote_ident(DEAD_LETTERS)} USING brin (time)",
        f"COMMENT ON TABLE {quote_ident(DEAD_LETTERS)} IS "
        + quote_literal("Rows a table refused, with the error."),
    ]


# -- plain PostgreSQL ----------------------------------------------------------------------


def partition_name(table: Table | str, day: dt.date) -> str:
    base = table if isinstance(table, str) else table.name
    return f"{base}_p{day:%Y%m%d}"


def parse_partition_day(table: Table | str, name: str) -> dt.date | None:
    """The day of a partition named by :func:`partition_name`, else ``None``."""
    base = table if isinstance(table, str) else table.name
    prefix = base + "_p"
    digits = name[len(prefix) :]
    if not name.startswith(prefix) or len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None


def partition_bounds(day: dt.date) -> tuple[str, str]:
    """``[day 00:00 UTC, next day 00:00 UTC)`` as timestamptz literals."""
    nxt = day + dt.timedelta(days=1)
    return f"{day.isoformat()} 00:00:00+00", f"{nxt.isoformat()} 00:00:00+00"


def plain_partition_statement(table: Table, day: dt.date) -> str:
    lo, hi = partition_bounds(day)
    return (
        f"CREATE TABLE IF NOT EXISTS {rel(table.namespace, partition_name(table, day))} "
        f"PARTITION OF {qname(table)} "
        f"FOR VALUES FROM ({quote_literal(lo)}) TO ({quote_literal(hi)})"
    )


def plain_table_statements(table: Table) -> list[str]:
    """Partitioned parent, DEFAULT partition, BRIN on time, btree on (entity, time DESC),
    the partial anomaly index, comments. Daily partitions come from maintenance."""
    name = qname(table)
    out = [
        f"CREATE TABLE IF NOT EXISTS {name} (\n{_columns(table)}\n) "
        f"PARTITION BY RANGE ({quote_ident(table.time_column)})",
        f"CREATE TABLE IF NOT EXISTS {rel(table.namespace, table.name + '_default')} "
        f"PARTITION OF {name} DEFAULT",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table.name + '_time_brin')} "
        f"ON {name} USING brin ({quote_ident(table.time_column)})",
    ]
    out += [s for s in (_entity_index(table), _anomaly_index(table)) if s]
    return out + _comments(table)


def rollup_table(rollup: Rollup) -> str:
    return f"{rollup.name}_agg"


def _state(name: str) -> str:
    return quote_ident("s_" + name)


def rollup_delta_table(rollup: Rollup) -> str:
    """The partial-aggregates table of an earlier layout (dropped by the ``realtime`` step)."""
    return f"{rollup.name}_delta"


def _bucket_expr(rollup: Rollup, column: str) -> str:
    return (
        f"date_bin(interval '{int(rollup.bucket_secs)} seconds', {quote_ident(column)}, "
        "TIMESTAMPTZ '1970-01-01 00:00:00+00')"
    )


def rollup_key(table: Table, rollup: Rollup) -> str:
    """The rollup's key in ``orbitstream_rollups`` / ``_pending`` (``[schema.]name``)."""
    return relkey(table.namespace, rollup.name)


def plain_rollup_statements(table: Table, rollup: Rollup) -> list[str]:
    """``<rollup>_agg``: one row per bucket and entity for the materialized buckets."""
    target = rel(table.namespace, rollup_table(rollup))
    bucket = quote_ident(rollup.bucket_name)
    keys = [quote_ident(k) for k in rollup.group_by]
    cols = [f"    {bucket} timestamptz NOT NULL"]
    cols += [
        f"    {quote_ident(k)} {column_type(table.column(k))} NOT NULL" for k in rollup.group_by
    ]
    for _, short in rollup.measures:
        cols += [
            f"    {_state('sum_' + short)} double precision",
            f"    {_state('min_' + short)} double precision",
            f"    {_state('max_' + short)} double precision",
        ]
    cols.append(f"    {_state(rollup.count_name)} bigint NOT NULL")
    for out, _ in rollup.flag_counts:
        cols.append(f"    {_state(out)} bigint NOT NULL")
    cols.append(f"    PRIMARY KEY ({', '.join([bucket, *keys])})")
    return [
        f"CREATE TABLE IF NOT EXISTS {target} (\n" + ",\n".join(cols) + "\n)",
        f"COMMENT ON TABLE {target} IS "
        + quote_literal(
            f"Sums, minima and maxima per {rollup.bucket_secs} s bucket of {table.name} for the "
            f"buckets before the watermark in {ROLLUP_STATE}; read the view {rollup.name}."
        ),
    ]


def rollup_state_statements() -> list[str]:
    """The plain layout's rollup bookkeeping: per rollup the watermark below which buckets
    are materialized, and the buckets batches wrote to since the last refresh."""
    return [
        f"CREATE TABLE IF NOT EXISTS {quote_ident(ROLLUP_STATE)} (\n"
        "    rollup text PRIMARY KEY,\n"
        "    materialized_until timestamptz NOT NULL,\n"
        "    refreshed_at timestamptz NOT NULL DEFAULT now()\n)",
        f"COMMENT ON TABLE {quote_ident(ROLLUP_STATE)} IS "
        + quote_literal(
            "Per rollup: buckets before materialized_until are in <rollup>_agg; later ones "
            "are aggregated from the raw rows when read (the view does both)."
        ),
        f"CREATE TABLE IF NOT EXISTS {quote_ident(ROLLUP_PENDING)} (\n"
        "    rollup text NOT NULL,\n"
        "    bucket timestamptz NOT NULL\n)",
        f"COMMENT ON TABLE {quote_ident(ROLLUP_PENDING)} IS "
        + quote_literal(
            "Buckets that committed batches wrote to, written in the batch's transaction; "
            "the refresh re-materializes those before the watermark and deletes the rows."
        ),
    ]


def plain_rollup_realtime_statements(table: Table, rollup: Rollup) -> list[str]:
    """The watermark row (starting at the current bucket: the state table's rows before it
    stay as they are) and the view, exact at every moment: materialized buckets from
    ``<rollup>_agg`` before the watermark, except those batches wrote to since the last
    refresh (``orbitstream_rollup_pending``), which are aggregated from the raw rows like
    everything after the watermark (TimescaleDB's real-time aggregates, plus the late rows).
    One statement sees one snapshot, and a batch commits its rows and its pending buckets
    together, as a refresh commits its materialized buckets and the deleted pending rows:
    every bucket is counted once, from one side."""
    agg = rel(table.namespace, rollup_table(rollup))
    bucket = quote_ident(rollup.bucket_name)
    keys = [quote_ident(k) for k in rollup.group_by]
    key = quote_literal(rollup_key(table, rollup))
    time_col = quote_ident(table.time_column)
    stored = [bucket, *keys]
    live = [f"{_bucket_expr(rollup, table.time_column)} AS {bucket}", *keys]
    count = _state(rollup.count_name)
    for col, short in rollup.measures:
        q = quote_ident(col)
        stored += [
            f"{_state('sum_' + short)} / NULLIF({count}, 0) AS {quote_ident('avg_' + short)}",
            f"{_state('min_' + short)} AS {quote_ident('min_' + short)}",
            f"{_state('max_' + short)} AS {quote_ident('max_' + short)}",
        ]
        live += [
            f"sum({q}) / NULLIF(count(*), 0) AS {quote_ident('avg_' + short)}",
            f"min({q})::double precision AS {quote_ident('min_' + short)}",
            f"max({q})::double precision AS {quote_ident('max_' + short)}",
        ]
    stored.append(f"{count} AS {quote_ident(rollup.count_name)}")
    live.append(f"count(*) AS {quote_ident(rollup.count_name)}")
    for out, col in rollup.flag_counts:
        stored.append(f"{_state(out)} AS {quote_ident(out)}")
        live.append(f"count(*) FILTER (WHERE {quote_ident(col)}) AS {quote_ident(out)}")
    groups = ", ".join(str(i + 1) for i in range(1 + len(keys)))
    width = f"interval '{int(rollup.bucket_secs)} seconds'"
    return [
        f"DROP TABLE IF EXISTS {rel(table.namespace, rollup_delta_table(rollup))}",
        f"INSERT INTO {quote_ident(ROLLUP_STATE)} (rollup, materialized_until) VALUES "
        f"({key}, date_bin({width}, now(), TIMESTAMPTZ '1970-01-01 00:00:00+00')) "
        "ON CONFLICT (rollup) DO NOTHING",
        f"CREATE OR REPLACE VIEW {rel(table.namespace, rollup.name)} AS\n"
        f"WITH wm AS (SELECT materialized_until AS t FROM {quote_ident(ROLLUP_STATE)} "
        f"WHERE rollup = {key}),\n"
        f"late AS (SELECT DISTINCT bucket FROM {quote_ident(ROLLUP_PENDING)} "
        f"WHERE rollup = {key} AND bucket < (SELECT t FROM wm))\n"
        f"SELECT {', '.join(stored)}\nFROM {agg}\n"
        f"WHERE {bucket} < (SELECT t FROM wm) AND {bucket} NOT IN (SELECT bucket FROM late)\n"
        f"UNION ALL\n"
        f"SELECT {', '.join(live)}\nFROM {qname(table)}\n"
        f"WHERE {time_col} >= (SELECT t FROM wm)\nGROUP BY {groups}\n"
        f"UNION ALL\n"
        f"SELECT {', '.join(live)}\nFROM {qname(table)} JOIN late "
        f"ON {time_col} >= late.bucket AND {time_col} < late.bucket + {width}\n"
        f"GROUP BY {groups}",
    ]


def rollup_materialize_sql(table: Table, rollup: Rollup) -> tuple[str, str]:
    """Replace the buckets in ``[%(lo)s, %(hi)s)`` of ``<rollup>_agg`` by the aggregates
    of the raw rows there: (delete, insert)."""
    agg = rel(table.namespace, rollup_table(rollup))
    bucket = quote_ident(rollup.bucket_name)
    keys = [quote_ident(k) for k in rollup.group_by]
    time_col = quote_ident(table.time_column)
    select = [_bucket_expr(rollup, table.time_column), *keys]
    for col, _ in rollup.measures:
        q = quote_ident(col)
        select += [f"sum({q})", f"min({q})", f"max({q})"]
    select.append("count(*)")
    select += [f"count(*) FILTER (WHERE {quote_ident(col)})" for _, col in rollup.flag_counts]
    groups = ", ".join(str(i + 1) for i in range(1 + len(keys)))
    names = [rollup.bucket_name, *rollup.group_by]
    for _, short in rollup.measures:
        names += ["s_sum_" + short, "s_min_" + short, "s_max_" + short]
    names.append("s_" + rollup.count_name)
    names += ["s_" + out for out, _ in rollup.flag_counts]
    return (
        f"DELETE FROM {agg} WHERE {bucket} >= %(lo)s AND {bucket} < %(hi)s",
        f"INSERT INTO {agg} ({_q(names)})\n"
        f"SELECT {', '.join(select)}\nFROM {qname(table)}\n"
        f"WHERE {time_col} >= %(lo)s AND {time_col} < %(hi)s\nGROUP BY {groups}",
    )


# -- TimescaleDB ---------------------------------------------------------------------------


def timescale_extension_statements() -> list[str]:
    return ["CREATE EXTENSION IF NOT EXISTS timescaledb"]


def timescale_table_statements(table: Table) -> list[str]:
    """Hypertable with 1 h chunks, indexes, compression after 1 day (segment by entity)."""
    name = qname(table)
    literal = regclass(table.namespace, table.name)
    out = [
        f"CREATE TABLE IF NOT EXISTS {name} (\n{_columns(table)}\n)",
        f"SELECT create_hypertable({literal}, "
        f"{quote_literal(table.time_column)}, "
        f"chunk_time_interval => INTERVAL {quote_literal(CHUNK_INTERVAL)}, "
        "if_not_exists => TRUE)",
    ]
    out += [s for s in (_entity_index(table), _anomaly_index(table)) if s]
    compress = [
        "timescaledb.compress",
        f"timescaledb.compress_orderby = {quote_literal(table.time_column + ' DESC')}",
    ]
    if table.entity_column:
        compress.insert(1, f"timescaledb.compress_segmentby = {quote_literal(table.entity_column)}")
    out.append(f"ALTER TABLE {name} SET ({', '.join(compress)})")
    out.append(
        f"SELECT add_compression_policy({literal}, "
        f"INTERVAL {quote_literal(COMPRESS_AFTER)}, if_not_exists => TRUE)"
    )
    return out + _comments(table)


def timescale_retention_statements(
    relation: str, days: int, namespace: str | None = None
) -> list[str]:
    """Replace the retention policy of a hypertable or continuous aggregate."""
    target = regclass(namespace, relation)
    return [
        f"SELECT remove_retention_policy({target}, if_exists => TRUE)",
        f"SELECT add_retention_policy({target}, INTERVAL {interval(int(days) * 86_400)})",
    ]


def timescale_rollup_statements(table: Table, rollup: Rollup) -> list[str]:
    """A continuous aggregate named after the rollup (real-time: recent rows included)."""
    bucket = quote_ident(rollup.bucket_name)
    keys = [quote_ident(k) for k in rollup.group_by]
    select = [
        f"time_bucket(INTERVAL {interval(rollup.bucket_secs)}, "
        f"{quote_ident(table.time_column)}) AS {bucket}",
        *keys,
    ]
    for src, short in rollup.measures:
        s = quote_ident(src)
        select += [
            f"avg({s}) AS {quote_ident('avg_' + short)}",
            f"min({s}) AS {quote_ident('min_' + short)}",
            f"max({s}) AS {quote_ident('max_' + short)}",
        ]
    select.append(f"count(*) AS {quote_ident(rollup.count_name)}")
    for out, flag in rollup.flag_counts:
        # sum(CASE) rather than FILTER: accepted by every TimescaleDB 2.x; bigint either way.
        select.append(f"sum(CASE WHEN {quote_ident(flag)} THEN 1 ELSE 0 END) AS {quote_ident(out)}")
    view = rel(table.namespace, rollup.name)
    width = rollup.bucket_secs
    return [
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view}\n"
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS\n"
        f"SELECT {', '.join(select)}\nFROM {qname(table)}\n"
        f"GROUP BY {', '.join([bucket, *keys])}\nWITH NO DATA",
        f"SELECT add_continuous_aggregate_policy({regclass(table.namespace, rollup.name)}, "
        f"start_offset => INTERVAL {quote_literal(COMPRESS_AFTER)}, "
        f"end_offset => INTERVAL {interval(width)}, "
        f"schedule_interval => INTERVAL {interval(width)}, "
        "if_not_exists => TRUE)",
    ]


def timescale_rollup_retention_statements(
    rollup: Rollup, days: int, namespace: str | None = None
) -> list[str]:
    return timescale_retention_statements(rollup.name, days, namespace)
