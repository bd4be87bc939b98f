"""Which stores a service writes to, built from settings.

The *primary* store answers dashboard and ``orbitstream query`` reads; every store in the
list is a sink the pipeline fans out to (each with its own batcher, retry state and buffer).

- ``DATABASE_URL`` empty → chDB (embedded); ``postgres://…`` → PostgreSQL;
  ``clickhouse://…`` → ClickHouse server.
- ``CLICKHOUSE_URL`` / ``CLICKHOUSE_HOST`` set → ClickHouse is added as a sink.
- ``ORBITSTREAM_SINKS=postgres,chdb`` lists them explicitly (the first is primary).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from orbitstream.errors import ConfigError
from orbitstream.settings import Settings

__all__ = ["build_stores", "sink_names"]


def _clickhouse_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    url = settings.database_url.strip()
    if settings.store_kind == "clickhouse" and not env.get("CLICKHOUSE_URL"):
        env["CLICKHOUSE_URL"] = url
    return env


def sink_names(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    if settings.sinks:
        return settings.sinks.split(",")
    names = [settings.store_kind]
    if "clickhouse" not in names and (
        environ.get("CLICKHOUSE_URL") or environ.get("CLICKHOUSE_HOST")
    ):
        names.append("clickhouse")
    return names


def build_stores(settings: Settings, environ: Mapping[str, str] | None = None) -> list[Any]:
    """The configured stores, primary first. Raises ConfigError naming the variable."""
    environ = os.environ if environ is None else environ
    stores: list[Any] = []
    for name in sink_names(settings, environ):
        if name == "chdb":
            from orbitstream.sinks.chdb import ChdbSink

            stores.append(
                ChdbSink(
                    settings.data_dir / "chdb",
                    rollup_retention_days=settings.rollup_retention_days,
                    query_timeout_secs=settings.query_timeout_secs,
                )
            )
        elif name == "postgres":
            if settings.store_kind != "postgres":
                raise ConfigError(
                    "the postgres sink needs DATABASE_URL=postgres://…", setting="DATABASE_URL"
                )
            from orbitstream.pipelines import satellites
            from orbitstream.sinks.postgres.settings import PostgresSettings
            from orbitstream.sinks.postgres.sink import PostgresSink

            stores.append(
                PostgresSink(
                    PostgresSettings(
                        dsn=settings.database_url,
                        max_connections=settings.max_connections,
                        retention_days=settings.retention_days,
                        rollup_retention_days=settings.rollup_retention_days,
                        query_timeout_secs=settings.query_timeout_secs,
                        query_dsn=settings.query_database_url or None,
                    ),
                    satellites.tables(settings.retention_days),
                )
            )
        elif name == "clickhouse":
            from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
            from orbitstream.sinks.clickhouse.sink import ClickHouseSink

            ch = ClickHouseSettings.from_env(_clickhouse_env(settings, environ))
            if ch is None:
                raise ConfigError(
                    "the clickhouse sink needs CLICKHOUSE_URL (or CLICKHOUSE_HOST)",
                    setting="CLICKHOUSE_URL",
                )
            ch = dataclasses.replace(ch, query_timeout_secs=settings.query_timeout_secs)
            stores.append(ClickHouseSink(ch, rollup_retention_days=settings.rollup_retention_days))
    return stores
