"""Versioned schema migrations and partition maintenance.

:func:`migrate` runs in one transaction holding ``pg_advisory_xact_lock``, so several
workers starting together apply each migration once. Every migration applied is a row
of ``schema_migrations(version, name, applied_at)``; a second run applies nothing.
Migrations are generated from the table declarations with stable versions:

=================================  =====================================================
version                            what
=================================  =====================================================
``0001_core``                      batch ledger and dead-letter table
``0002_layout_plain|timescale``    the storage layout chosen (kept for the database's
                                   life: ``auto`` never switches an existing database)
``table/<t>/create``               the table, its partitioning or hypertable, indexes
``table/<t>/column/<c>``           a column declared after the table was created
                                   (added as nullable: old rows have no value)
``rollup/<r>/create``              the rollup (state table, or continuous aggregate)
``0003_rollup_state``              plain layout: ``orbitstream_rollups`` (watermarks)
                                   and ``orbitstream_rollup_pending``
``rollup/<r>/realtime``            plain layout: the rollup's watermark and its view
                                   (materialized buckets + raw rows after the watermark)
``retention/<rel>/<n>d``           TimescaleDB retention policy (re-applied on change)
=================================  =====================================================

The layout is TimescaleDB when ``pg_available_extensions`` lists ``timescaledb`` (and
the library is preloaded) and the setting is ``auto`` or ``on``; otherwise native
partitioning, kept by :func:`maintain`: create daily partitions ahead, drop those
entirely past retention, trim the DEFAULT partition and rollup, prune the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orbitstream.core.tables import Table
from orbitstream.errors import ConfigError
from orbitstream.sinks.postgres import ddl
from orbitstream.sinks.postgres.ddl import Layout, quote_ident
from orbitstream.sinks.postgres.settings import PostgresSettings, TimescaleMode

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = [
    "MAINTENANCE_LOCK_KEY",
    "MIGRATION_LOCK_KEY",
    "REFRESH_LOCK_KEY",
    "SCHEMA_MIGRATIONS_DDL",
    "MaintenanceReport",
    "Migration",
    "MigrationResult",
    "choose_layout",
    "detect_timescale",
    "maintain",
    "migrate",
    "migrate_schema",
    "plan_migrations",
    "recorded_layout",
    "retention_days",
    "wanted_days",
]

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6F72_6269_7473_0001  # "orbits" + 1, a fixed int64
MAINTENANCE_LOCK_KEY = 0x6F72_6269_7473_0002
REFRESH_LOCK_KEY = 0x6F72_6269_7473_0003  # + a hash of the rollup: one refresh at a time
LAYOUT_VERSIONS: dict[Layout, str] = {
    "plain": "0002_layout_plain",
    "timescale": "0002_layout_timescale",
}

SCHEMA_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""

_RECORD = (
    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s) "
    "ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, applied_at = clock_timestamp()"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned step: statements run in order inside the migration transaction."""

    version: str
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MigrationResult:
    layout: Layout
    applied: list[str]


# -- planning (pure) -----------------------------------------------------------------------


def choose_layout(setting: TimescaleMode, available: bool, recorded: Layout | None) -> Layout:
    """The layout to use.

    :param setting: ``auto``, ``on`` or ``off``.
    :param available: the server can load TimescaleDB.
    :param recorded: the layout an earlier run chose for this database, if any.
    :raises ConfigError: the setting contradicts what the server or database has.
    """
    if recorded is not None:
        if setting == "on" and recorded == "plain":
            raise ConfigError(
                "timescale=on but this database already uses the plain PostgreSQL layout",
                setting="timescale",
            )
        if setting == "off" and recorded == "timescale":
            raise ConfigError(
                "timescale=off but this database already uses the TimescaleDB layout",
                setting="timescale",
            )
        return recorded
    if setting == "on":
        if not available:
            raise ConfigError(
                "timescale=on but the server does not offer the timescaledb extension",
                setting="timescale",
            )
        return "timescale"
    if setting == "off":
        return "plain"
    return "timescale" if available else "plain"


def retention_days(table: Table, settings: PostgresSettings) -> int | None:
    """A table's own ``ttl_days`` wins; else the sink's ``retention_days``."""
    return table.ttl_days if table.ttl_days else settings.retention_days


def _latest_retention(applied: Sequence[str], relation: str) -> str | None:
    prefix = f"retention/{relation}/"
    found = [v for v in applied if v.startswith(prefix)]
    return found[-1] if found else None


def plan_migrations(
    tables: Sequence[Table],
    settings: PostgresSettings,
    *,
    layout: Layout,
    applied: Sequence[str],
    existing_columns: Mapping[str, set[str]] | None = None,
) -> list[Migration]:
    """Migrations still to apply, in order.

    :param applied: versions already recorded, oldest first.
    :param existing_columns: per table already created, the columns it has now.
    """
    done = set(applied)
    existing_columns = existing_columns or {}
    out: list[Migration] = []

    def add(version: str, name: str, statements: Sequence[str]) -> None:
        if version not in done:
            out.append(Migration(version, name, tuple(statements)))

    def retention(relation: str, days: int | None, statements: list[str]) -> None:
        if days is None:
            return
        version = f"retention/{relation}/{int(days)}d"
        if _latest_retention(applied, relation) != version:
            out.append(
                Migration(version, f"retention of {relation}: {days} days", tuple(statements))
            )

    add("0001_core", "batch ledger and dead letters", ddl.core_statements())
    if layout == "timescale":
        add(
            LAYOUT_VERSIONS["timescale"],
            "TimescaleDB layout: hypertables, compression, continuous aggregates",
            ddl.timescale_extension_statements(),
        )
    else:
        add(
            LAYOUT_VERSIONS["plain"],
            "plain PostgreSQL layout: daily partitions, incrementally updated rollups",
            (),
        )
        add(
            "0003_rollup_state",
            "rollup watermarks and the buckets batches wrote to since the last refresh",
            ddl.rollup_state_statements(),
        )
    for ns in dict.fromkeys(t.namespace for t in tables if t.namespace):
        add(f"schema/{ns}", f"schema {ns}", [ddl.schema_statement(ns)])
    for table in tables:
        key = ddl.relkey(table.namespace, table.name)
        create = f"table/{key}/create"
        if create in done:
            have = existing_columns.get(key)
            for col in table.columns:
                if have is not None and col.name not in have:
                    add(
                        f"table/{key}/column/{col.name}",
                        f"add column {key}.{col.name}",
                        [
                            f"ALTER TABLE {ddl.qname(table)} ADD COLUMN IF NOT EXISTS "
                            f"{quote_ident(col.name)} {ddl.column_type(col)}"
                        ],
                    )
        elif layout == "timescale":
            add(create, f"create hypertable {key}", ddl.timescale_table_statements(table))
        else:
            add(create, f"create table {key} partitioned by day", ddl.plain_table_statements(table))
        if table.replacing is not None:
            add(
                f"table/{key}/replacing_index",
                f"index of {key} on its key and version (one row per key)",
                [ddl.replacing_index_statement(table)],
            )
        if layout == "timescale":
            days = retention_days(table, settings)
            retention(
                key,
                days,
                ddl.timescale_retention_statements(table.name, days, table.namespace)
                if days
                else [],
            )
        for rollup in table.rollups:
            rkey = ddl.relkey(table.namespace, rollup.name)
            if layout == "timescale":
                add(
                    f"rollup/{rkey}/create",
                    f"continuous aggregate {rkey} over {key}",
                    ddl.timescale_rollup_statements(table, rollup),
                )
                rdays = settings.rollup_retention_days
                retention(
                    rkey,
                    rdays,
                    ddl.timescale_rollup_retention_statements(rollup, rdays, table.namespace)
                    if rdays
                    else [],
                )
            else:
                add(
                    f"rollup/{rkey}/create",
                    f"rollup table {ddl.rollup_table(rollup)}",
                    ddl.plain_rollup_statements(table, rollup),
                )
                add(
                    f"rollup/{rkey}/realtime",
                    f"rollup watermark of {rkey} and its view: materialized buckets plus the "
                    "raw rows after the watermark",
                    ddl.plain_rollup_realtime_statements(table, rollup),
                )
    return out


# -- running -------------------------------------------------------------------------------


@asynccontextmanager
async def _connection(target: Any) -> AsyncIterator[AsyncConnection[Any]]:
    from psycopg_pool import AsyncConnectionPool

    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            yield conn
    else:
        yield target


async def detect_timescale(conn: AsyncConnection[Any]) -> bool:
    """Whether ``CREATE EXTENSION timescaledb`` can work here.

    Listed in ``pg_available_extensions`` and either installed already or named in
    ``shared_preload_libraries`` (when that setting is hidden from this role, trust the
    listing).
    """
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), "
        "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), "
        "(SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries')"
    )
    row = await cur.fetchone()
    if row is None:
        return False
    available, installed, preload = row
    if installed:
        return True
    if not available:
        return False
    return preload is None or "timescaledb" in str(preload)


async def recorded_layout(conn: AsyncConnection[Any]) -> Layout | None:
    """The layout recorded by an earlier :func:`migrate`, if any."""
    cur = await conn.execute(
        "SELECT version FROM schema_migrations WHERE version = ANY(%s)",
        (list(LAYOUT_VERSIONS.values()),),
    )
    rows = await cur.fetchall()
    found = {r[0] for r in rows}
    for layout, version in LAYOUT_VERSIONS.items():
        if version in found:
            return layout
    return None


async def _table_exists(
    conn: AsyncConnection[Any], name: str, namespace: str | None = None
) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ddl.rel(namespace, name),))
    row = await cur.fetchone()
    return bool(row and row[0])


async def _columns(conn: AsyncConnection[Any], tables: Sequence[Table]) -> dict[str, set[str]]:
    """Columns per table that exists, keyed by :func:`~ddl.relkey`."""
    cur = await conn.execute(
        "SELECT table_schema = current_schema(), table_schema, table_name, column_name "
        "FROM information_schema.columns "
        "WHERE (table_schema = ANY(%s) OR table_schema = current_schema()) "
        "AND table_name = ANY(%s)",
        ([t.namespace for t in tables if t.namespace], [t.name for t in tables]),
    )
    wanted = {ddl.relkey(t.namespace, t.name) for t in tables}
    out: dict[str, set[str]] = {}
    for is_default, schema, table_name, column_name in await cur.fetchall():
        key = ddl.relkey(None if is_default else str(schema), str(table_name))
        if key in wanted:
            out.setdefault(key, set()).add(str(column_name))
    return out


async def migrate_schema(
    target: AsyncConnection[Any] | AsyncConnectionPool[Any],
    tables: Sequence[Table],
    settings: PostgresSettings,
    *,
    timescale_available: bool | None = None,
) -> MigrationResult:
    """Apply what is missing, in one transaction under an advisory lock.

    :param timescale_available: skip detection (tests, or a known server).
    :raises ConfigError: the ``timescale`` setting contradicts the server or database.
    """
    started = time.perf_counter()
    async with _connection(target) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        if not await _table_exists(conn, "schema_migrations"):
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
        cur = await conn.execute(
            "SELECT version FROM schema_migrations ORDER BY applied_at, version"
        )
        applied = [str(r[0]) for r in await cur.fetchall()]
        recorded = await recorded_layout(conn)
        if recorded is None and timescale_available is None and settings.timescale != "off":
            timescale_available = await detect_timescale(conn)
        layout = choose_layout(settings.timescale, bool(timescale_available), recorded)
        plan = plan_migrations(
            tables,
            settings,
            layout=layout,
            applied=applied,
            existing_columns=await _columns(conn, tables),
        )
        for migration in plan:
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(_RECORD, (migration.version, migration.name))
            logger.info(
                "Migration applied.",
                extra={
                    "component": "postgres",
                    "version": migration.version,
                    "migration": migration.name,
                },
            )
    logger.info(
        "Schema up to date.",
        extra={
            "component": "postgres",
            "layout": layout,
            "applied": len(plan),
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return MigrationResult(layout, [m.version for m in plan])


async def migrate(
    target: AsyncConnection[Any] | AsyncConnectionPool[Any],
    tables: Sequence[Table],
    settings: PostgresSettings,
    *,
    timescale_available: bool | None = None,
) -> list[str]:
    """Apply the missing migrations; returns their versions (empty when up to date)."""
    result = await migrate_schema(target, tables, settings, timescale_available=timescale_available)
    return result.applied


# -- maintenance ---------------------------------------------------------------------------


@dataclass(slots=True)
class MaintenanceReport:
    """What one :func:`maintain` run changed (names of partitions, row counts)."""

    layout: Layout | None = None
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_rows_moved: int = 0
    default_rows_deleted: int = 0
    rollup_rows_deleted: int = 0
    ledger_rows_pruned: int = 0
    errors: list[str] = field(default_factory=list)


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


def wanted_days(now: dt.datetime, ahead: int, keep_days: int | None) -> list[dt.date]:
    """Yesterday through ``ahead`` days from today (UTC), minus days past retention."""
    today = now.date()
    days = [today + dt.timedelta(days=i) for i in range(-1, ahead + 1)]
    if keep_days is None:
        return days
    cutoff = now - dt.timedelta(days=keep_days)
    return [d for d in days if _day_end(d) > cutoff]


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


async def _partitions(conn: AsyncConnection[Any], table: Table) -> dict[dt.date, str]:
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        (ddl.qname(table),),
    )
    out: dict[dt.date, str] = {}
    for (name,) in await cur.fetchall():
        day = ddl.parse_partition_day(table, str(name))
        if day is not None:
            out[day] = str(name)
    return out


async def _locked(conn: AsyncConnection[Any], settings: PostgresSettings) -> None:
    ms = max(1, int(settings.maintenance_lock_timeout_secs * 1000))
    await conn.execute(f"SET LOCAL lock_timeout = {ms}")
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK_KEY,))


async def _create_partition(
    conn: AsyncConnection[Any], table: Table, day: dt.date, settings: PostgresSettings
) -> int | None:
    """Create one daily partition; rows already in DEFAULT for that day move into it.

    Returns how many rows moved, ``None`` when another worker created it first.
    """
    name = ddl.rel(table.namespace, ddl.partition_name(table, day))
    parent = ddl.qname(table)
    default = ddl.rel(table.namespace, table.name + "_default")
    time_col = quote_ident(table.time_column)
    lo, hi = ddl.partition_bounds(day)
    async with conn.transaction():
        await _locked(conn, settings)
        if await _table_exists(conn, ddl.partition_name(table, day), table.namespace):
            return None
        # The lock CREATE ... PARTITION OF takes anyway, taken first so no row can reach
        # DEFAULT between the check below and the creation.
        await conn.execute(f"LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE")
        cur = await conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {default} WHERE {time_col} >= %s AND {time_col} < %s)",
            (_day_start(day), _day_end(day)),
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.execute(ddl.plain_partition_statement(table, day))
            return 0
        await conn.execute(
            f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        cur = await conn.execute(
            f"WITH moved AS (DELETE FROM {default} WHERE {time_col} >= %s AND {time_col} < %s "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            (_day_start(day), _day_end(day)),
        )
        moved = cur.rowcount
        await conn.execute(
            f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM "
            f"({ddl.quote_literal(lo)}) TO ({ddl.quote_literal(hi)})"
        )
        return moved


async def _maintain_plain(
    conn: AsyncConnection[Any],
    tables: Sequence[Table],
    settings: PostgresSettings,
    now: dt.datetime,
    report: MaintenanceReport,
) -> None:
    for table in tables:
        keep = retention_days(table, settings)
        try:
            async with conn.transaction():
                existing = await _partitions(conn, table)
        except Exception as exc:
            report.errors.append(f"{table.name}: {exc}")
            continue
        for day in wanted_days(now, settings.partitions_ahead_days, keep):
            if day in existing:
                continue
            try:
                moved = await _create_partition(conn, table, day, settings)
            except Exception as exc:
                report.errors.append(f"{ddl.partition_name(table, day)}: {exc}")
                continue
            if moved is not None:
                report.default_rows_moved += moved
                report.created.append(ddl.relkey(table.namespace, ddl.partition_name(table, day)))
        if keep is None:
            continue
        cutoff = now - dt.timedelta(days=keep)
        for day, name in sorted(existing.items()):
            if _day_end(day) > cutoff:
                continue
            try:
                async with conn.transaction():
                    await _locked(conn, settings)
                    await conn.execute(f"DROP TABLE IF EXISTS {ddl.rel(table.namespace, name)}")
                report.dropped.append(ddl.relkey(table.namespace, name))
            except Exception as exc:
                report.errors.append(f"{name}: {exc}")
        report.default_rows_deleted += await _delete_older(
            conn,
            ddl.rel(table.namespace, f"{table.name}_default"),
            table.time_column,
            cutoff,
            report,
        )
    if settings.rollup_retention_days is None:
        return
    rollup_cutoff = now - dt.timedelta(days=settings.rollup_retention_days)
    for table in tables:
        for rollup in table.rollups:
            report.rollup_rows_deleted += await _delete_older(
                conn,
                ddl.rel(table.namespace, ddl.rollup_table(rollup)),
                rollup.bucket_name,
                rollup_cutoff,
                report,
            )


async def maintain(
    target: AsyncConnection[Any] | AsyncConnectionPool[Any],
    tables: Sequence[Table],
    settings: PostgresSettings,
    now: dt.datetime | None = None,
) -> MaintenanceReport:
    """Keep partitions and retention current; call at start and hourly.

    Plain layout: create the daily partitions from yesterday to ``partitions_ahead_days``
    ahead (moving rows that already landed in DEFAULT), drop partitions entirely older
    than retention, trim DEFAULT and the rollup tables. Both layouts: prune ledger rows
    older than ``ledger_retention_days``. Each step is its own short transaction with a
    ``lock_timeout``; a failed step is reported in ``errors`` and logged, never raised.

    :param now: the current time (aware), injectable for tests.
    """
    moment = _utc(now)
    report = MaintenanceReport()
    started = time.perf_counter()
    async with _connection(target) as conn:
        # Every step is its own transaction block: on a connection that is not in
        # autocommit mode a statement outside one would open a transaction that holds
        # the partition locks until the very end.
        async with conn.transaction():
            if await _table_exists(conn, "schema_migrations"):
                report.layout = await recorded_layout(conn)
        if report.layout == "plain":
            await _maintain_plain(conn, tables, settings, moment, report)
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    f"DELETE FROM {quote_ident(ddl.LEDGER)} WHERE written_at < %s",
                    (moment - dt.timedelta(days=settings.ledger_retention_days),),
                )
                report.ledger_rows_pruned = max(0, cur.rowcount)
        except Exception as exc:
            report.errors.append(f"{ddl.LEDGER}: {exc}")
    extra = {
        "component": "postgres",
        "layout": report.layout,
        "partitions_created": report.created,
        "partitions_dropped": report.dropped,
        "ledger_rows_pruned": report.ledger_rows_pruned,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if report.errors:
        logger.warning("Maintenance incomplete.", extra={**extra, "error": report.errors})
    else:
        logger.info("Maintenance done.", extra=extra)
    return report


async def _delete_older(
    conn: Any, relation: str, column: str, cutoff: dt.datetime, report: MaintenanceReport
) -> int:
    """Delete rows older than ``cutoff`` from ``relation`` (quoted, maybe schema-qualified)
    in one transaction; a failure goes to the report."""
    try:
        async with conn.transaction():
            cur = await conn.execute(
                f"DELETE FROM {relation} WHERE {quote_ident(column)} < %s", (cutoff,)
            )
            return max(0, int(cur.rowcount))
    except Exception as exc:
        report.errors.append(f"{relation}: {exc}")
        return 0


@dataclass(frozen=True, slots=True)
class ReaderAccess:
    """How users' read-only queries connect: ``dsn`` (``None`` when no read-only role is
    available, with ``problem`` saying why)."""

    dsn: str | None
    problem: str | None = None


def reader_password(settings: PostgresSettings) -> str:
    """The read-only role's password, derived from the writer's credentials: every process
    of a deployment computes the same one, and it is as secret as the writer's password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        key = str(conninfo_to_dict(settings.dsn).get("password") or settings.dsn)
    except Exception:
        key = settings.dsn
    return hmac.new(
        key.encode(), f"orbitstream-reader:{settings.query_role}".encode(), hashlib.sha256
    ).hexdigest()


def readable_relations(tables: Sequence[Table], layout: Layout) -> list[str]:
    """The project's relations a user may read (quoted, schema-qualified): tables, rollups
    (and their state tables on the plain layout) and the dead letters."""
    names: list[str] = []
    for table in tables:
        names.append(ddl.qname(table))
        for rollup in table.rollups:
            names.append(ddl.rel(table.namespace, rollup.name))
            if layout == "plain":
                names.append(ddl.rel(table.namespace, ddl.rollup_table(rollup)))
    if layout == "plain" and any(t.rollups for t in tables):
        names.append(ddl.quote_ident(ddl.ROLLUP_STATE))
    names.append(ddl.quote_ident(ddl.DEAD_LETTERS))
    return list(dict.fromkeys(names))


async def ensure_reader(
    target: AsyncConnection[Any] | AsyncConnectionPool[Any],
    tables: Sequence[Table],
    settings: PostgresSettings,
    layout: Layout,
) -> ReaderAccess:
    """Create or update the role users' queries run as: it can log in and ``SELECT`` the
    project's relations, nothing else (no superuser, no role membership, read-only
    transactions by default, a statement timeout). ``ORBITSTREAM_QUERY_DATABASE_URL``
    names another read-only login instead. Never raises: without the privilege to manage
    roles, users' queries are refused with the reason."""
    if settings.query_dsn:
        return ReaderAccess(settings.query_dsn)
    from psycopg.conninfo import make_conninfo

    role = ddl.quote_ident(settings.query_role)
    password = reader_password(settings)
    relations = readable_relations(tables, layout)
    timeout_ms = max(1, int(settings.query_timeout_secs * 1000))
    try:
        async with _connection(target) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur = await conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.query_role,)
            )
            if await cur.fetchone() is None:
                await conn.execute(f"CREATE ROLE {role} LOGIN")
            await conn.execute(
                f"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                f"NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 16 "
                f"PASSWORD {ddl.quote_literal(password)}"
            )
            await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
            await conn.execute(f"ALTER ROLE {role} SET statement_timeout = {timeout_ms}")
            # only the schemas that exist: a pipeline that never ran (or was never
            # migrated) has none yet, and its tables are simply not there to read
            cur = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                (sorted({t.namespace for t in tables if t.namespace}),),
            )
            for (ns,) in await cur.fetchall():
                await conn.execute(f"GRANT USAGE ON SCHEMA {ddl.quote_ident(ns)} TO {role}")
            for name in relations:
                cur = await conn.execute("SELECT to_regclass(%s)", (name,))
                row = await cur.fetchone()
                if row is not None and row[0] is not None:
                    await conn.execute(f"GRANT SELECT ON {name} TO {role}")
    except Exception as exc:
        problem = (
            f"the read-only query role {settings.query_role!r} could not be set up "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
            "grant CREATEROLE to the service's user or set ORBITSTREAM_QUERY_DATABASE_URL "
            "to a read-only login"
        )
        logger.warning(
            "Read-only query role not available.",
            extra={"component": "postgres", "role": settings.query_role, "error": problem},
        )
        return ReaderAccess(None, problem)
    return ReaderAccess(make_conninfo(settings.dsn, user=settings.query_role, password=password))
