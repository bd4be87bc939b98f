"""The ClickHouse server sink: DDL on start, one Arrow insert per batch, read-only queries."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import pyarrow as pa

from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.protocols import Dialect, SinkBase
from orbitstream.core.tables import Table
from orbitstream.errors import ConfigError, SinkError, SinkRejectedError
from orbitstream.sinks.arrow import bad_rows, to_arrow
from orbitstream.sinks.clickhouse.ddl import create_database, schema_statements
from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
from orbitstream.sinks.clickhouse.transport import (
    ClickHouseRejectedError,
    ClickHouseRetryableError,
    ClickHouseTransport,
    describe_error,
    sink_error,
)
from orbitstream.sinks.clickhouse_guard import guard_query
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect
from orbitstream.sinks.results import QueryError, Rows

__all__ = ["ClickHouseSink", "insert_settings"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
    ]
)
# Read queries: forbid writes and settings changes that lift it; 64-bit integers as JSON
# numbers, as the embedded store returns them.
_QUERY_SETTINGS: dict[str, object] = {
    "readonly": 2,
    "output_format_json_quote_64bit_integers": 0,
    # replacing tables (sessions_base, nodes) read merged, one row per key, as with FINAL
    "final": 1,
}


def insert_settings(batch_id: str) -> dict[str, object]:
    """Per-insert settings: a retried batch (same id) lands once, in the table and in the
    rollups fed by materialized views; a NULL in a non-Nullable column is an error rather
    than a silent default."""
    return {
        "insert_deduplication_token": batch_id,
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
        "async_insert": 0,
        "input_format_null_as_default": 0,
    }


class ClickHouseSink(SinkBase):
    """Writes batches to a ClickHouse server over HTTP and answers read-only queries.

    Creates the database (if missing) and the same tables, rollups and dead-letter table as
    the embedded store on :meth:`start`. Each batch is one ``INSERT … FORMAT Arrow`` whose
    ``insert_deduplication_token`` is the batch id.

    :param settings: server, credentials, database, cluster/replication, timeouts.
    :param rollup_retention_days: retention of rollup tables (``None``: keep forever).
    :raises SinkRetryableError: from :meth:`write` / :meth:`start` on transient failures.
    :raises SinkRejectedError: from :meth:`write` when the server refuses the rows.
    """

    name = "clickhouse"
    configured_by = "CLICKHOUSE_URL, CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
    # an insert still going at the shutdown deadline is cancelled and its rows spilled;
    # had it landed, its dedup token drops a replay (decisions §44)
    cancel_writes_at_deadline = True
    # an insert is a part (or two, with the rollup's view): ~10 ms of fixed cost
    min_write_interval_secs = 0.1
    query_dialect: Dialect = "clickhouse"

    def __init__(
        self,
        settings: ClickHouseSettings,
        *,
        rollup_retention_days: int | None = 365,
        databases: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self._databases = tuple(dict.fromkeys((settings.database, *databases)))
        self.rollup_retention_days = rollup_retention_days
        self.dialect = ClickHouseDialect(
            database=settings.database,
            replicated=settings.replicated,
            cluster=settings.cluster,
            distributed=settings.distributed,
        )
        self._transport = ClickHouseTransport(settings)

    def __repr__(self) -> str:
        return f"ClickHouseSink(url={self.settings.url!r}, database={self.settings.database!r})"

    # -- lifecycle -------------------------------------------------------------------
    def schema_statements(self, tables: Sequence[Table]) -> list[str]:
        """The DDL :meth:`start` runs (databases first)."""
        first = create_database(self.dialect)
        rest = schema_statements(self.dialect, tables, self.rollup_retention_days)
        return [first, *rest] if first else rest

    def migrate_sync(self, tables: Sequence[Table]) -> list[str]:
        """Create the database, tables, rollups and dead letters; returns the DDL run.

        A user without the grant to create databases may still use an existing one.
        """
        statements = self.schema_statements(tables)
        databases = {create_database(self.dialect): self.settings.database}
        for ns in {t.namespace for t in tables if t.namespace}:
            databases[create_database(self.dialect.in_namespace(ns))] = ns
        for sql in statements:
            if sql in databases:
                self._create_database(sql, databases[sql])
            else:
                self._call(partial(self._transport.command, sql))
        logger.info(
            "ClickHouse schema ready.",
            extra={
                "component": self.name,
                "database": self.settings.database,
                "tables": [t.name for t in tables],
                "statements": len(statements),
            },
        )
        return statements

    def _create_database(self, sql: str, database: str) -> None:
        try:
            self._call(partial(self._transport.command, sql, use_database=False))
        except (SinkRejectedError, ClickHouseRetryableError) as exc:
            # ACCESS_DENIED (497) is fine when the database already exists
            if isinstance(exc, ClickHouseRetryableError) and exc.code != 497:
                raise
            exists = self._call(
                partial(
                    self._transport.query_bytes,
                    "SELECT 1 FROM system.databases WHERE name = {db:String}",
                    {"db": database},
                    {},
                    "TSV",
                    use_database=False,
                )
            )
            if not exists.strip():
                raise
            logger.info(
                "ClickHouse database exists; not created.",
                extra={"component": self.name, "database": database},
            )

    async def start(self, tables: Sequence[Table]) -> None:
        await self._transport.run(lambda: self.migrate_sync(tables))

    async def close(self) -> None:
        """Wait for calls in flight, then close the HTTP pool."""
        await asyncio.to_thread(self._transport.close)

    def close_sync(self) -> None:
        """:meth:`close` for synchronous callers (the CLI)."""
        self._transport.close()

    async def ping(self) -> None:
        await self._transport.run(self.ping_sync)

    def ping_sync(self) -> None:
        """Raise :class:`SinkRetryableError` unless the server answers ``/ping``."""
        ok = self._call(self._transport.ping)
        if not ok:
            raise ClickHouseRetryableError(
                "ClickHouse did not answer /ping", sink=self.name, status_code=None
            )

    # -- writes ----------------------------------------------------------------------
    async def write(self, batch: Batch) -> None:
        if not batch.size:
            return
        await self._transport.run(lambda: self.write_sync(batch))

    def write_sync(self, batch: Batch) -> None:
        """Insert one batch (blocking); see :meth:`write`."""
        started = time.perf_counter()
        table = batch.table.name
        try:
            arrow_table = to_arrow(batch)
        except Exception as exc:  # e.g. a str in a Float64 column: the rows are bad
            raise ClickHouseRejectedError(
                f"rows cannot be encoded for ClickHouse: {type(exc).__name__}: {exc}",
                bad_rows=bad_rows(batch),
                sink=self.name,
                table=table,
                batch_id=batch.batch_id,
            ) from exc
        written = self._call(
            lambda: self._transport.insert_arrow(
                table,
                arrow_table,
                insert_settings(batch.batch_id),
                database=batch.table.namespace,
            ),
            table=table,
            batch_id=batch.batch_id,
        )
        logger.debug(
            "ClickHouse insert done.",
            extra={
                "component": self.name,
                "table": table,
                "batch_id": batch.batch_id,
                "records": batch.size,
                "written_rows": written,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        await self._transport.run(lambda: self.write_dead_letters_sync(letters))

    def write_dead_letters_sync(self, letters: Sequence[DeadLetter]) -> None:
        """Store refused rows in ``dead_letters`` (deduplicated if the same letters are
        written twice)."""
        arrow_table = pa.Table.from_pydict(
            {
                "time": [letter.time_ns for letter in letters],
                "pipeline": [letter.pipeline for letter in letters],
                "table": [letter.table for letter in letters],
                "batch_id": [letter.batch_id for letter in letters],
                "row": [json.dumps(letter.row, default=str) for letter in letters],
                "error": [letter.error for letter in letters],
            },
            schema=_DEAD_LETTER_SCHEMA,
        )
        digest = hashlib.sha256(
            "\x00".join(f"{x.pipeline}\x01{x.table}\x01{x.batch_id}" for x in letters).encode()
        ).hexdigest()[:32]
        self._call(
            lambda: self._transport.insert_arrow(
                "dead_letters", arrow_table, insert_settings(f"dead_letters:{digest}")
            ),
            table="dead_letters",
        )

    # -- reads -----------------------------------------------------------------------
    async def query(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        """Run a read-only query (server-side ``{name:Type}`` parameters).

        :raises QueryError: with the ClickHouse code (164 READONLY for a write).
        """
        return await self._transport.run(lambda: self.query_sync(sql, params))

    def query_sync(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        """Blocking :meth:`query`, callable from any thread."""
        text = sql.strip().rstrip(";").rstrip()
        try:
            settings = {
                **_QUERY_SETTINGS,
                "max_execution_time": max(1, round(self.settings.query_timeout_secs)),
            }
            raw = self._transport.query_bytes(text, params, settings, "JSONCompact")
        except Exception as exc:
            message, code, _status, _kind = describe_error(exc)
            raise QueryError(message, code) from exc
        return Rows.from_json_compact(raw)

    # -- users' queries (read-only for real: clickhouse_guard) -------------------------
    async def user_query(self, sql: str, database: str | None = None) -> Rows:
        """A user's query (``POST /api/query``), checked and run read-only; see
        :meth:`user_query_sync`."""
        return await self._transport.run(lambda: self.user_query_sync(sql, database))

    def user_query_sync(self, sql: str, database: str | None = None) -> Rows:
        """Check ``sql`` with :func:`~orbitstream.sinks.clickhouse_guard.guard_query`, then
        run it with ``readonly=1`` and a time limit; ``database`` is the current one.

        :raises QueryError: refused, or failed on the server.
        """
        db = database or self.settings.database
        if db not in self.databases:
            raise QueryError(f"unknown database {db!r}", 81)
        settings = {
            **_QUERY_SETTINGS,
            "readonly": 1,
            "max_execution_time": max(1, round(self.settings.query_timeout_secs)),
            "max_result_rows": 1_000_000,
            "max_result_bytes": 512 * 1024 * 1024,
            "result_overflow_mode": "throw",
        }

        def fetch(text: str, fmt: str | None) -> bytes:
            try:
                return self._transport.query_bytes(
                    text, None, settings, fmt, use_database=False, database=db
                )
            except Exception as exc:
                message, code, _status, _kind = describe_error(exc)
                raise QueryError(message, code) from exc

        # the checks' own queries go without a FORMAT clause (guard_query says why)
        normalized = guard_query(sql, self.databases, lambda text: fetch(text, None).decode())
        return Rows.from_json_compact(fetch(normalized, "JSONCompact"))

    @property
    def databases(self) -> tuple[str, ...]:
        """Databases a user's query may read (besides ``system``)."""
        return self._databases

    # -- helpers ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], T], *, table: str = "", batch_id: str = "") -> T:
        """Run ``fn`` and turn any failure into a classified sink error."""
        try:
            return fn()
        except (SinkError, ConfigError):
            raise
        except Exception as exc:
            error = sink_error(exc, sink=self.name, table=table, batch_id=batch_id)
            raise error from exc
