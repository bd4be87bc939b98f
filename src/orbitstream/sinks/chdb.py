"""The embedded store: ClickHouse's engine in-process (chDB), data in a local directory.

Writes go through ``send_insert(... FORMAT ArrowStream)`` on dedicated writer threads,
each with its own connection (two inserts run at once: decisions §51) — never inline
through ``query()``, which silently ends inline data at the first blank line (see
docs/decisions.md). Reads (dashboard, ``orbitstream query``) run on another thread with a
read-only connection of their own, so they never block the writers. A data directory
belongs to one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.protocols import Dialect, SinkBase
from orbitstream.core.tables import Table
from orbitstream.errors import ConfigError, SinkRejectedError, SinkRetryableError
from orbitstream.sinks.arrow import bad_rows, to_ipc_stream
from orbitstream.sinks.clickhouse_errors import error_code, sink_error
from orbitstream.sinks.clickhouse_guard import guard_query
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect, quote_ident
from orbitstream.sinks.results import QueryError, Rows

__all__ = ["ChdbSink", "QueryError", "ReadLimits", "Rows"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Limits of a read connection: every query has a time limit, results a size limit.

    :param timeout_secs: ``max_execution_time`` (ClickHouse cancels the query after it).
    """

    timeout_secs: float = 30.0
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 512 * 1024 * 1024

    def settings(self) -> str:
        return (
            f"max_execution_time = {max(1, round(self.timeout_secs))}, "
            f"max_result_rows = {int(self.max_result_rows)}, "
            f"max_result_bytes = {int(self.max_result_bytes)}, "
            "result_overflow_mode = 'throw', "
            # every read sees replacing tables (sessions_base, nodes) merged: one row
            # per key, as if the query said FINAL (other engines are unaffected)
            "final = 1"
        )


class _Worker:
    """A thread owning one chDB connection; jobs run there in order.

    A read-only worker sets its limits, then ``readonly = 1``: from then on the
    connection cannot write, change a setting or lift the limits again.
    """

    def __init__(self, path: Path, name: str, read_limits: ReadLimits | None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.closed = False
        self.path = path
        self.conn: Any = None
        self._read_limits = read_limits

    def open(self) -> None:
        try:
            import chdb
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the embedded store (empty DATABASE_URL) needs the chdb extra: "
                "pip install 'orbitstream[chdb]'",
                setting="DATABASE_URL",
            ) from exc

        try:
            self.conn = chdb.connect(str(self.path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            if "lock" in str(exc).lower() or "EmbeddedServer" in str(exc):
                raise ConfigError(
                    f"data directory {self.path} is in use by another process "
                    "(a running service?): use `orbitstream query` through it, or stop it",
                    setting="ORBITSTREAM_DATA_DIR",
                ) from exc
            raise
        if self._read_limits is not None:
            self.conn.query(f"SET {self._read_limits.settings()}")
            self.conn.query("SET readonly = 1")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def call(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._pool.submit(fn)

    def close(self) -> None:
        def _close() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)
        self.closed = True


class ChdbSink(SinkBase):
    """Sink and query interface of the embedded store.

    :param path: data directory (created if missing).
    :param dialect: DDL options (database, replicated variants are for servers).
    """

    name = "chdb"
    configured_by = "DATABASE_URL (chdb:PATH) or ORBITSTREAM_DATA_DIR"
    # an insert is a part (or two, with the rollup's view): ~10 ms of fixed cost
    min_write_interval_secs = 0.1
    query_dialect: Dialect = "clickhouse"
    # inserts at once, each on a writer thread and connection of its own: chDB runs them
    # in parallel (a second one uses the CPU one leaves idle between its calls), the
    # second only for a backlog one insert cannot take (decisions §51)
    max_concurrent_writes = 2
    concurrent_writes_need_backlog = True

    def __init__(
        self,
        path: Path,
        *,
        rollup_retention_days: int | None = 365,
        query_timeout_secs: float = 30.0,
        databases: Sequence[str] = ("default",),
    ) -> None:
        self.path = Path(path)
        self.dialect = ClickHouseDialect()
        self.rollup_retention_days = rollup_retention_days
        self.databases = tuple(databases)
        self._read_limits = ReadLimits(timeout_secs=query_timeout_secs)
        self._opened = False
        self._lock = threading.Lock()
        self._new_workers()

    def _new_workers(self) -> None:
        # writes (the first one also runs the DDL and dead letters); the dashboard's own
        # queries; users' queries (so a slow one never holds up the dashboard)
        self._writers = [
            _Worker(self.path, f"chdb-writer{k or ''}", None)
            for k in range(self.max_concurrent_writes)
        ]
        self._writer = self._writers[0]
        # writes handed to each writer and not finished (its thread counts them out)
        self._busy = [0] * len(self._writers)
        self._busy_lock = threading.Lock()
        self._reader = _Worker(self.path, "chdb-reader", self._read_limits)
        self._user = _Worker(self.path, "chdb-query", self._read_limits)

    # -- lifecycle ---------------------------------------------------------------
    def open_sync(self) -> None:
        with self._lock:
            if self._opened:
                return
            self.path.mkdir(parents=True, exist_ok=True)
            if self._writer.closed:  # reopened after close()
                self._new_workers()
            for writer in self._writers:
                writer.call(writer.open)
            self._reader.call(self._reader.open)
            self._user.call(self._user.open)
            self._opened = True

    def migrate_sync(self, tables: Sequence[Table]) -> list[str]:
        """Create or update every table, rollup and the dead-letter table; returns DDL run."""
        self.open_sync()
        statements = self.schema_statements(tables)

        def _apply() -> None:
            for sql in statements:
                self._writer.conn.query(sql)

        self._writer.call(_apply)
        return statements

    def schema_statements(self, tables: Sequence[Table]) -> list[str]:
        """The same DDL a ClickHouse server gets (sinks/clickhouse/ddl.py)."""
        from orbitstream.sinks.clickhouse.ddl import schema_statements

        return schema_statements(self.dialect, tables, self.rollup_retention_days)

    async def start(self, tables: Sequence[Table]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.migrate_sync, tables)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            if not self._opened:
                return
            self._user.close()
            self._reader.close()
            for writer in reversed(self._writers):
                writer.close()
            self._opened = False

    # -- writes ------------------------------------------------------------------
    def _insert(
        self,
        table: str,
        settings: str,
        data: bytes,
        namespace: str | None = None,
        writer: _Worker | None = None,
    ) -> int:
        conn = (writer or self._writer).conn
        if conn is None:
            raise SinkRetryableError("store is closed", sink=self.name, table=table)
        inserter = conn.send_insert(
            f"INSERT INTO {self.dialect.in_namespace(namespace).name(table)} {settings}",
            "ArrowStream",
        )
        try:
            inserter.append(data)
            result = inserter.finish()
        except BaseException:
            with contextlib.suppress(Exception):  # already finished: nothing to cancel
                inserter.cancel()
            raise
        return int(result.rows_written)

    def write_sync(self, batch: Batch, writer: _Worker | None = None) -> None:
        """Insert ``batch`` on ``writer``'s connection (the first writer's by default),
        from that writer's thread."""
        try:
            data = to_ipc_stream(batch)
        except Exception as exc:  # the rows themselves cannot be encoded: never retried
            raise SinkRejectedError(
                f"rows cannot be encoded for the embedded store: {type(exc).__name__}: {exc}",
                bad_rows=bad_rows(batch),
                sink=self.name,
                table=batch.table.name,
                batch_id=batch.batch_id,
            ) from exc
        try:
            self._insert(
                batch.table.name,
                self.dialect.insert_settings(batch.batch_id),
                data,
                batch.table.namespace,
                writer,
            )
        except (SinkRetryableError, SinkRejectedError):
            raise
        except Exception as exc:
            raise sink_error(
                exc, sink=self.name, table=batch.table.name, batch_id=batch.batch_id
            ) from exc

    async def write(self, batch: Batch) -> None:
        if not batch.size:
            return
        # the least busy writer: more writes than writers (several tables, pipelines)
        # queue on a writer's thread, one at a time per connection
        busy, lock = self._busy, self._busy_lock
        with lock:
            k = min(range(len(busy)), key=busy.__getitem__)
            busy[k] += 1
        writer = self._writers[k]

        def finished(_: object) -> None:  # the insert ended, or was cancelled unstarted
            with lock:
                busy[k] -= 1

        job = writer.submit(lambda: self.write_sync(batch, writer))
        job.add_done_callback(finished)
        await asyncio.wrap_future(job)

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        lines = "\n".join(
            json.dumps(
                {
                    "time": f"{letter.time_ns // 1_000_000_000}.{letter.time_ns % 1_000_000_000:09d}",
                    "pipeline": letter.pipeline,
                    "table": letter.table,
                    "batch_id": letter.batch_id,
                    "row": json.dumps(letter.row, default=str),
                    "error": letter.error,
                }
            )
            for letter in letters
        ).encode()

        def _write() -> None:
            conn = self._writer.conn
            ins = conn.send_insert(
                f"INSERT INTO {self.dialect.name('dead_letters')}", "JSONEachRow"
            )
            try:
                ins.append(lines)
                ins.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    ins.cancel()
                raise

        await self._writer.run(_write)

    async def ping(self) -> None:
        await self._writer.run(lambda: self._writer.conn.query("SELECT 1"))

    # -- reads -------------------------------------------------------------------
    def query_sync(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        """Run a read-only query from any thread (blocks)."""
        self.open_sync()
        return self._reader.call(lambda: self._query_on_reader(sql, params))

    async def query(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        if not self._opened:
            await asyncio.get_running_loop().run_in_executor(None, self.open_sync)

        return await self._reader.run(lambda: self._query_on_reader(sql, params))

    def _query_on_reader(self, sql: str, params: dict[str, object] | None) -> Rows:
        conn = self._reader.conn
        if conn is None:
            raise QueryError("store is closed")
        try:
            res = conn.query(sql, "JSONCompact", params=params or None)
        except Exception as exc:
            raise QueryError(_short(str(exc)), error_code(exc)) from exc
        return Rows.from_json_compact(res.bytes())

    # -- users' queries (read-only for real: clickhouse_guard) -------------------------
    def user_query_sync(self, sql: str, database: str | None = None) -> Rows:
        """A user's query (``orbitstream query``) from any thread: checked by
        :func:`~orbitstream.sinks.clickhouse_guard.guard_query`, then run read-only with
        a time limit, ``database`` as the current one.

        :raises QueryError: refused, or failed in the store.
        """
        self.open_sync()
        return self._user.call(lambda: self._user_query(sql, database))

    async def user_query(self, sql: str, database: str | None = None) -> Rows:
        """:meth:`user_query_sync` for the event loop (``POST /api/query``)."""
        if not self._opened:
            await asyncio.get_running_loop().run_in_executor(None, self.open_sync)
        return await self._user.run(lambda: self._user_query(sql, database))

    def _user_query(self, sql: str, database: str | None) -> Rows:
        conn = self._user.conn
        if conn is None:
            raise QueryError("store is closed")

        def run(text: str) -> str:
            try:
                return str(conn.query(text, "TabSeparated").bytes().decode())
            except Exception as exc:
                raise QueryError(_short(str(exc)), error_code(exc)) from exc

        db = database or "default"
        if db not in self.databases:
            raise QueryError(f"unknown database {db!r}", 81)
        run(f"USE {quote_ident(db)}")
        normalized = guard_query(sql, self.databases, run)
        try:
            res = conn.query(normalized, "JSONCompact")
        except Exception as exc:
            raise QueryError(_short(str(exc)), error_code(exc)) from exc
        return Rows.from_json_compact(res.bytes())


def _short(message: str) -> str:
    cut = message.find("Stack trace")
    return (message[:cut] if cut > 0 else message).strip()
