"""The stores a process writes to, built from settings (registered sink types).

The *primary* store answers dashboard and ``orbitstream query`` reads; every store in the
list is a sink each pipeline fans out to (each pipeline with its own batcher, retry state
and buffer per store). A store is started once with the union of the tables of every
pipeline that uses it, and closed once after the last pipeline has drained.

- ``DATABASE_URL`` empty → chDB (embedded); ``postgres://…`` → PostgreSQL;
  ``clickhouse://…`` → ClickHouse server.
- ``CLICKHOUSE_URL`` / ``CLICKHOUSE_HOST`` set → ClickHouse is added as a sink.
- ``ORBITSTREAM_SINKS=postgres,chdb`` lists them explicitly (the first is primary).
"""

from __future__ import annotations

import dataclasses

from orbitstream.core.protocols import Sink, Store
from orbitstream.core.registry import SinkRequest, SinkType, sink_type
from orbitstream.errors import ConfigError
from orbitstream.settings import Settings

__all__ = ["CHDB", "CLICKHOUSE", "POSTGRES", "SinkRequest", "build_stores", "sink_names"]


def sink_names(settings: Settings) -> list[str]:
    """The configured stores, primary first."""
    if settings.sinks:
        return settings.sinks.split(",")
    names = [settings.store_kind]
    if "clickhouse" not in names and settings.clickhouse.configured:
        names.append("clickhouse")
    return names


def build_stores(settings: Settings, request: SinkRequest | None = None) -> list[Store]:
    """The configured stores, primary first. Raises ConfigError naming the variable."""
    request = request or SinkRequest()
    stores: list[Store] = []
    for name in sink_names(settings):
        kind = sink_type(name)
        if not kind.store:
            raise ConfigError(
                f"{name} is not a store (it cannot answer queries): name stores in "
                "ORBITSTREAM_SINKS (chdb, postgres, clickhouse)",
                setting="ORBITSTREAM_SINKS",
            )
        sink = kind.create(settings, request)
        assert isinstance(sink, Store)
        stores.append(sink)
    return stores


def _chdb(settings: Settings, request: SinkRequest) -> Sink:
    from orbitstream.sinks.chdb import ChdbSink

    return ChdbSink(
        settings.data_dir / "chdb",
        rollup_retention_days=settings.rollup_retention_days,
        query_timeout_secs=settings.query.timeout_secs,
        databases=tuple(dict.fromkeys(("default", *request.databases))),
    )


def _postgres(settings: Settings, request: SinkRequest) -> Sink:
    if settings.store_kind != "postgres":
        raise ConfigError(
            "the postgres sink needs DATABASE_URL=postgres://…", setting="DATABASE_URL"
        )
    from orbitstream.sinks.postgres.settings import PostgresSettings
    from orbitstream.sinks.postgres.sink import PostgresSink

    pg = settings.postgres
    return PostgresSink(
        PostgresSettings(
            dsn=settings.database_url,
            max_connections=pg.max_connections,
            min_connections=min(pg.min_connections, pg.max_connections),
            retention_days=settings.retention_days,
            rollup_retention_days=settings.rollup_retention_days,
            partitions_ahead_days=pg.partitions_ahead_days,
            timescale=pg.timescale,
            ledger_retention_days=pg.ledger_retention_days,
            connect_timeout_secs=pg.connect_timeout_secs,
            write_timeout_secs=pg.write_timeout_secs,
            maintenance_lock_timeout_secs=pg.maintenance_lock_timeout_secs,
            rollup_refresh_secs=pg.rollup_refresh_secs,
            query_timeout_secs=settings.query.timeout_secs,
            query_role=settings.query.role,
            query_dsn=settings.query.database_url or None,
        ),
        request.tables,
    )


def _clickhouse(settings: Settings, request: SinkRequest) -> Sink:
    from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
    from orbitstream.sinks.clickhouse.sink import ClickHouseSink

    environ = settings.clickhouse.as_environ()
    if settings.store_kind == "clickhouse" and not environ.get("CLICKHOUSE_URL"):
        environ["CLICKHOUSE_URL"] = settings.database_url.strip()
    ch = ClickHouseSettings.from_env(environ)
    if ch is None:
        raise ConfigError(
            "the clickhouse sink needs CLICKHOUSE_URL (or CLICKHOUSE_HOST)",
            setting="CLICKHOUSE_URL",
        )
    ch = dataclasses.replace(ch, query_timeout_secs=settings.query.timeout_secs)
    return ClickHouseSink(
        ch,
        rollup_retention_days=settings.rollup_retention_days,
        databases=tuple(dict.fromkeys((ch.database, *request.databases))),
    )


CHDB = SinkType(
    "chdb", "ClickHouse's engine embedded: no server, data in ORBITSTREAM_DATA_DIR", _chdb, True
)
POSTGRES = SinkType(
    "postgres", "PostgreSQL / TimescaleDB over binary COPY (DATABASE_URL)", _postgres, True
)
CLICKHOUSE = SinkType(
    "clickhouse", "A ClickHouse server over HTTP (CLICKHOUSE_URL, DATABASE_URL)", _clickhouse, True
)
