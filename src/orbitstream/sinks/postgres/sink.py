"""The PostgreSQL / TimescaleDB sink: one transaction per batch, effectively once.

``write(batch)`` runs, in one transaction on a pooled connection:

1. ``INSERT INTO orbitstream_batches ... ON CONFLICT DO NOTHING RETURNING`` -- no row
   back means this batch id was committed before (a retry after a lost commit
   acknowledgement, a replay): nothing else happens;
2. ``COPY <table> (<columns>) FROM STDIN (FORMAT BINARY)`` with the bytes of
   :mod:`~orbitstream.sinks.postgres.encoding`;
3. on the plain layout, the rollup upserts (``<rollup>_agg``);
4. ``COMMIT``.

Errors are classified here by SQLSTATE class: ``08`` connection, ``53`` resources,
``57`` operator intervention, ``40`` serialization/deadlock, ``58`` system and
connection-level failures are :class:`PostgresRetryableError`; ``22`` data, ``23``
integrity and ``42`` syntax/undefined objects are :class:`PostgresRejectedError` (the
pipeline bisects the batch and dead-letters the offending rows). ``42501``
(insufficient privilege) is retryable: an operator can fix it, and the rows are fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import pyarrow as pa

from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.protocols import Dialect, SinkBase
from orbitstream.core.tables import Rollup, Table
from orbitstream.errors import ConfigError, SinkError, SinkRejectedError, SinkRetryableError
from orbitstream.sinks.postgres import ddl
from orbitstream.sinks.postgres.ddl import Layout
from orbitstream.sinks.postgres.encoding import (
    CopyEncoder,
    EncodeError,
    encoder_for,
)
from orbitstream.sinks.postgres.migrations import (
    REFRESH_LOCK_KEY,
    MaintenanceReport,
    ensure_reader,
    maintain,
    migrate_schema,
    recorded_layout,
)
from orbitstream.sinks.postgres.settings import PostgresSettings
from orbitstream.sinks.results import QueryError, Rows

if TYPE_CHECKING:
    from psycopg.abc import PQGen

try:
    import psycopg
    from psycopg import pq, waiting
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

    from orbitstream.sinks.postgres.arrow_copy import ArrowCopyEncoder
    from orbitstream.sinks.postgres.copy_query import CopyOutcome, copy_query
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise ConfigError(
        "DATABASE_URL selects PostgreSQL, which needs the postgres extra: "
        "pip install 'orbitstream[postgres]'",
        setting="DATABASE_URL",
    ) from _exc

__all__ = [
    "REJECTED_CLASSES",
    "RETRYABLE_CLASSES",
    "PostgresRejectedError",
    "PostgresRetryableError",
    "PostgresSink",
    "classify_error",
    "classify_sqlstate",
]

logger = logging.getLogger(__name__)

RETRYABLE_CLASSES = frozenset({"08", "53", "57", "40", "58"})
# 54: program limits (an index row over 8 KB, a jsonb value over 256 MB): the rows'
# own fault, refused every time
REJECTED_CLASSES = frozenset({"22", "23", "42", "54"})
# Deployment problems, not bad rows: every row of every batch would fail the same way, so
# dead-lettering them would empty the buffers into the dead-letter table. Hold the rows,
# report the sink down, retry until an operator fixes it.
_RETRYABLE_STATES = frozenset(
    {
        "42501",  # insufficient_privilege
        "42P01",  # undefined_table (dropped or never migrated)
        "3D000",  # invalid_catalog_name (database missing)
        "28000",  # invalid_authorization_specification
        "28P01",  # invalid_password
    }
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CHUNK_ROWS = 2048  # rows per COPY piece (about 200 KiB of telemetry)
# A batch's claim: its ledger row (a replayed id violates the primary key, which stops
# the write before anything is copied) and, in the plain layout, the rollup buckets it
# writes to. Sent as string literals (our own values, see _text) in the simple query that
# also carries the COPY (copy_query): (batch_id, table, rows) [, rollup keys[], starts[]].
_CLAIM = (
    f"INSERT INTO {ddl.quote_ident(ddl.LEDGER)} (batch_id, table_name, rows) "
    "VALUES ({}, {}, {})"
)
_CLAIM_PENDING = (
    _CLAIM + f"; INSERT INTO {ddl.quote_ident(ddl.ROLLUP_PENDING)} (rollup, bucket) "
    "SELECT u.r, to_timestamp(u.b) FROM unnest({}::text[], {}::bigint[]) AS u(r, b)"
)
_UNIQUE_VIOLATION = b"23505"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
ROLLUP_GRACE_SECS = 60  # a bucket is materialized once it ended this long ago
_DEAD_LETTER_INSERT = (
    f"INSERT INTO {ddl.quote_ident(ddl.DEAD_LETTERS)} "
    "(time, pipeline, table_name, batch_id, row, error) VALUES (%s, %s, %s, %s, %s, %s)"
)

Kind = Literal["retryable", "rejected"]


class _SqlstateError(SinkError):
    """Shared constructor: ``sqlstate`` kept, and in ``status_code`` when all digits."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        sink: str = "postgres",
        table: str = "",
        batch_id: str = "",
        **extra: Any,
    ) -> None:
        super().__init__(
            message,
            sink=sink,
            table=table,
            batch_id=batch_id,
            status_code=_status(sqlstate),
            deployment=sqlstate in _RETRYABLE_STATES,
            **extra,
        )
        self.sqlstate = sqlstate


class PostgresRetryableError(_SqlstateError, SinkRetryableError):
    """A transient PostgreSQL failure.

    :param sqlstate: the five-character SQLSTATE (``57P01``), ``None`` for failures
        below SQL (connection refused, pool timeout). ``status_code`` holds it as an
        int when it is all digits. ``deployment`` is set for a missing table or
        database, bad credentials or a missing grant.
    """


class PostgresRejectedError(_SqlstateError, SinkRejectedError):
    """PostgreSQL refused the data itself (see :class:`PostgresRetryableError`)."""


def _status(sqlstate: str | None) -> int | None:
    return int(sqlstate) if sqlstate and sqlstate.isdigit() else None


def classify_sqlstate(sqlstate: str | None) -> Kind:
    """``rejected`` for data, integrity and schema errors; ``retryable`` otherwise."""
    if sqlstate is None or sqlstate in _RETRYABLE_STATES:
        return "retryable"
    if sqlstate[:2] in REJECTED_CLASSES:
        return "rejected"
    return "retryable"  # RETRYABLE_CLASSES and anything unknown: never drop rows


def classify_error(exc: BaseException) -> Kind:
    """Classify any failure of a write (psycopg errors, pool timeouts, OS errors)."""
    if isinstance(exc, EncodeError):
        return "rejected"
    if isinstance(exc, psycopg.Error):
        return classify_sqlstate(exc.sqlstate)
    return "retryable"


async def _drive(
    conn: psycopg.AsyncConnection[Any], query: PQGen[CopyOutcome], limit_secs: float
) -> CopyOutcome:
    """Run a write's generator on the connection's socket, as ``AsyncConnection.wait``
    does, with two differences at an interruption (the shutdown deadline's cancellation,
    or ``limit_secs`` running out): the connection is closed at once, which makes the
    server roll back whatever it had not committed (a retry learns from the ledger what
    it had). ``wait`` would first send a cancel request and then drive the rest of the
    batch through the socket, up to 5 s each: 10 s past a shutdown deadline measured
    with the server unreachable. And a write has a deadline at all: against a server
    that stopped answering it would otherwise wait until TCP gave up.

    :raises psycopg.OperationalError: ``limit_secs`` ran out (the connection is closed).
    """
    try:
        async with asyncio.timeout(limit_secs):
            return await waiting.wait_async(query, conn.pgconn.socket, interval=_WAIT_INTERVAL)
    except TimeoutError:
        conn.pgconn.finish()
        raise psycopg.OperationalError(
            f"the write took longer than {limit_secs:g} s "
            "(ORBITSTREAM_POSTGRES_WRITE_TIMEOUT): connection closed"
        ) from None
    except BaseException:
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            conn.pgconn.finish()  # interrupted mid-query: its state on the server is unknown
        raise


#: how often psycopg's own waits wake up (``AsyncConnection.wait``'s default)
_WAIT_INTERVAL = 0.1


def _check(outcome: CopyOutcome, encoding: str) -> bool:
    """Whether the write found its batch already committed (the ledger's primary key
    refused the claim: nothing was copied); raises the server's error for any other
    failure (the query was rolled back)."""
    if not outcome.copied:
        failed = outcome.before[-1] if outcome.before else None
        if failed is None or failed.status != pq.ExecStatus.FATAL_ERROR:
            raise psycopg.ProgrammingError("the write query did not reach its COPY")
        if failed.error_field(pq.DiagnosticField.SQLSTATE) == _UNIQUE_VIOLATION and (
            failed.error_field(pq.DiagnosticField.TABLE_NAME) == ddl.LEDGER.encode()
        ):
            return True
        raise psycopg.errors.error_from_result(failed, encoding=encoding)
    for result in outcome.after:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=encoding)
    return False


def _connection_lost(exc: BaseException) -> bool:
    """A dead connection rather than a refused statement or a starved pool."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, PoolTimeout | PoolClosed | TooManyRequests
    )


async def _connect_error(dsn: str, timeout_secs: float) -> str | None:
    """The server's or the network's answer to one connection attempt (``None`` when it
    connects): a pool timeout hides it ("database … does not exist", "password
    authentication failed", "Connection refused")."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=max(1, round(timeout_secs))
        )
    except (psycopg.Error, OSError) as exc:
        text = _message(exc)
        return text.split(" failed: ", 1)[-1] if "connection failed" in text else text
    await conn.close()
    return None


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, psycopg.Error) else text


@dataclass(frozen=True, slots=True)
class _TablePlan:
    table: Table
    encoder: CopyEncoder  # tuple rows
    arrow_encoder: ArrowCopyEncoder  # columnar batches (pgpq)
    rollups: tuple[tuple[Rollup, str], ...]  # plain layout: (rollup, its key)
    # what follows the claim in the write's query: the COPY, and for a replacing table
    # the stage's CREATE before it and the merge after it
    copy_tail: str

    def pieces(self, batch: Batch) -> Iterator[bytes]:
        """The batch's binary COPY stream in pieces, encoded from the form it has."""
        if batch.columnar:
            return self.arrow_encoder.iter_encode(batch.data, _CHUNK_ROWS)
        return self.encoder.iter_encode(batch.rows, _CHUNK_ROWS)

    def write_query(self, batch: Batch) -> bytes:
        """The batch's claim, then :attr:`copy_tail`: one simple query."""
        values = [_text(batch.batch_id), _text(self.table.name), str(int(batch.size))]
        if self.rollups:
            keys, starts = self.buckets(batch)
            values.append("ARRAY[" + ",".join(map(_text, keys)) + "]::text[]")
            values.append("ARRAY[" + ",".join(str(int(b)) for b in starts) + "]::bigint[]")
            claim = _CLAIM_PENDING.format(*values)
        else:
            claim = _CLAIM.format(*values)
        return (claim + "; " + self.copy_tail).encode()

    def bad_rows(self, batch: Batch) -> tuple[int, ...]:
        if batch.columnar:
            return self.arrow_encoder.bad_rows(batch.data)
        return self.encoder.bad_rows(batch.rows)

    def buckets(self, batch: Batch) -> tuple[list[str], list[int]]:
        """The rollup buckets the batch writes to, as parallel lists (rollup key, bucket
        start in epoch seconds) for ``orbitstream_rollup_pending``. Empty when a time value
        is not an integer or not in int64: the COPY then refuses the batch and names the
        row."""
        keys: list[str] = []
        starts: list[int] = []
        if not self.rollups:
            return keys, starts
        index = self.table.index(self.table.time_column)
        try:
            if batch.columnar:
                ns = batch.data.column(index).cast(pa.int64()).to_numpy(zero_copy_only=False)
                times: Any = ns
            else:
                times = [row[index] for row in batch.rows]
                # A time no int64 holds is not an epoch-ns value: the COPY refuses the
                # batch and names the row (a bucket of it would fail the ledger
                # statement instead, unnamed).
                if times and (min(times) < _INT64_MIN or max(times) > _INT64_MAX):
                    return [], []
            for rollup, key in self.rollups:
                width = rollup.bucket_secs * 1_000_000_000
                if batch.columnar:
                    found = (np.unique(times // width) * rollup.bucket_secs).tolist()
                else:
                    found = sorted({int(t) // width * rollup.bucket_secs for t in times})
                keys += [key] * len(found)
                starts += found
        except (TypeError, ValueError, OverflowError, pa.ArrowException):
            return [], []
        return keys, starts


class PostgresSink(SinkBase):
    """Writes batches with binary ``COPY``, deduplicated by a ledger; answers queries.

    :param settings: connection, pool size, retention and layout settings.
    :raises PostgresRetryableError: from ``start``/``write``/``ping``, transient.
    :raises PostgresRejectedError: from ``write``, when PostgreSQL refuses the rows.
    :raises ConfigError: from ``start``, when the ``timescale`` setting is impossible.
    """

    name = "postgres"
    configured_by = "DATABASE_URL"
    query_dialect: Dialect = "postgres"
    # a write still waiting at the shutdown deadline (for a connection to a server that
    # is down, mostly) is cancelled and its rows spilled: its transaction rolls back, or
    # committed with its ledger row, so a replay of the batch is dropped (decisions §44)
    cancel_writes_at_deadline = True

    def __init__(self, settings: PostgresSettings, query_tables: Sequence[Table] = ()) -> None:
        self.settings = settings
        # Batches of one table committed on this many connections at once (the ledger
        # keeps each batch once; row order across batches does not matter here).
        self.max_concurrent_writes = max(1, min(4, settings.max_connections // 2))
        self.layout: Layout | None = None
        self.applied: list[str] = []
        self._pool: AsyncConnectionPool[Any] | None = None
        self._plans: dict[str, _TablePlan] = {}
        self._tables: tuple[Table, ...] = ()
        # plain layout: (rollup, its key, (delete, insert) of a bucket range)
        self._refreshes: list[tuple[Rollup, str, tuple[str, str]]] = []
        self._refresher: asyncio.Task[None] | None = None
        self._read_pool: AsyncConnectionPool[Any] | None = None
        self._reader_dsn: str | None = None
        self._reader_problem: str | None = None
        # tables the read-only role may read when the CLI sets it up without a start
        self._query_tables: tuple[Table, ...] = tuple(query_tables)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise PostgresRetryableError("the PostgreSQL sink is not started", sink=self.name)
        return self._pool

    def _unreachable(self, cause: str) -> PostgresRetryableError:
        return PostgresRetryableError(
            f"cannot connect to PostgreSQL at {self.settings.redacted_dsn}: {cause}",
            sink=self.name,
        )

    async def start(self, tables: Sequence[Table]) -> None:
        """Open the pool, apply migrations, run maintenance once."""
        s = self.settings
        if self._pool is None:
            # One direct attempt first: a refused connection or login answers at once,
            # where the pool retries for connect_timeout_secs and then says only that it
            # timed out (a start with ORBITSTREAM_START_TIMEOUT=1s took 12 s).
            refused = await _connect_error(s.dsn, s.connect_timeout_secs)
            if refused is not None:
                raise self._unreachable(refused)
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                s.dsn,
                min_size=s.min_connections,
                max_size=s.max_connections,
                kwargs={
                    "autocommit": True,
                    "application_name": s.application_name,
                    "connect_timeout": max(1, round(s.connect_timeout_secs)),
                },
                timeout=s.connect_timeout_secs,
                name="orbitstream-postgres",
                open=False,
            )
            try:
                await pool.open(wait=True, timeout=s.connect_timeout_secs)
            except (psycopg.Error, OSError) as exc:
                await pool.close()
                cause = _message(exc)
                if isinstance(exc, PoolTimeout):  # says only that the pool gave up: ask why
                    cause = await _connect_error(s.dsn, s.connect_timeout_secs) or cause
                raise self._unreachable(cause) from exc
            self._pool = pool
        try:
            result = await migrate_schema(self.pool, tables, s)
        except psycopg.Error as exc:
            raise self._error(exc, "", "") from exc
        self.layout = result.layout
        self.applied = result.applied
        self._tables = tuple(tables)
        access = await ensure_reader(self.pool, tables, s, result.layout)
        self._reader_dsn, self._reader_problem = access.dsn, access.problem
        self._plans = {t.qualified_name: self._plan(t) for t in tables}
        self._refreshes = [
            (r, ddl.rollup_key(t, r), ddl.rollup_materialize_sql(t, r))
            for t in tables
            for r in t.rollups
            if self.layout == "plain"
        ]
        await self.maintain()
        if self._refreshes and self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="postgres:rollup-refresh"
            )
        logger.info(
            "PostgreSQL sink started.",
            extra={
                "component": self.name,
                "component_kind": "sink",
                "dsn": s.redacted_dsn,
                "layout": self.layout,
                "migrations_applied": len(result.applied),
                "max_connections": s.max_connections,
            },
        )

    def _plan(self, table: Table) -> _TablePlan:
        rollups: tuple[tuple[Rollup, str], ...] = ()
        if self.layout == "plain":
            rollups = tuple((r, ddl.rollup_key(table, r)) for r in table.rollups)
        replacing = table.replacing is not None  # copied into a stage, then merged
        copy = ddl.copy_sql(table, into=ddl.stage_name(table) if replacing else None)
        return _TablePlan(
            table,
            encoder_for(table),
            ArrowCopyEncoder(table),
            rollups,
            "; ".join(
                [ddl.stage_statement(table), copy, ddl.replacing_merge_sql(table)]
                if replacing
                else [copy]
            ),
        )

    async def maintain(self, now: dt.datetime | None = None) -> MaintenanceReport | None:
        """Partition and retention upkeep (the service calls it hourly). Never raises: a
        failed step is logged and retried next time; ``None`` when nothing could run."""
        try:
            return await maintain(self.pool, self._tables, self.settings, now)
        except (psycopg.Error, OSError) as exc:
            logger.warning(
                "Maintenance failed.",
                extra={"component": self.name, "error": _message(exc)},
            )
            return None

    async def refresh_rollups(self) -> int:
        """Materialize the plain layout's rollups now: move each watermark up to the bucket
        that began ``ROLLUP_GRACE_SECS`` ago (at most 12 buckets per call), aggregating the
        raw rows of the buckets it passes, and re-aggregate the buckets before it that
        batches wrote to since the last refresh (late rows). One refresh per rollup at a
        time across workers (others skip). Never raises: a failure is logged and the work
        waits for the next call (the view reads the raw rows after the watermark anyway).

        :returns: the bucket ranges re-aggregated.
        """
        done = 0
        for rollup, key, (delete_sql, insert_sql) in self._refreshes:
            try:
                done += await self._refresh_one(rollup, key, delete_sql, insert_sql)
            except (psycopg.Error, OSError, SinkRetryableError) as exc:
                logger.warning(
                    "Rollup refresh failed; retrying later.",
                    extra={"component": self.name, "rollup": key, "error": _message(exc)},
                )
        return done

    async def _refresh_one(self, rollup: Rollup, key: str, delete_sql: str, insert_sql: str) -> int:
        width = dt.timedelta(seconds=rollup.bucket_secs)
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)",
                (REFRESH_LOCK_KEY + zlib.crc32(key.encode()),),
            )
            got = await cur.fetchone()
            if got is None or not got[0]:
                return 0  # another worker is refreshing it
            cur = await conn.execute(
                f"SELECT materialized_until, date_bin(%s::interval, now() - %s::interval, "
                f"TIMESTAMPTZ 'epoch') FROM {ddl.quote_ident(ddl.ROLLUP_STATE)} "
                "WHERE rollup = %s FOR UPDATE",
                (width, dt.timedelta(seconds=ROLLUP_GRACE_SECS), key),
            )
            row = await cur.fetchone()
            if row is None:  # the row was removed by hand: start again from now
                await conn.execute(
                    f"INSERT INTO {ddl.quote_ident(ddl.ROLLUP_STATE)} (rollup, "
                    "materialized_until) VALUES (%s, date_bin(%s::interval, now(), "
                    "TIMESTAMPTZ 'epoch')) ON CONFLICT (rollup) DO NOTHING",
                    (key, width),
                )
                return 0
            old, target = row
            new = min(max(old, target), old + 12 * width)
            cur = await conn.execute(
                f"DELETE FROM {ddl.quote_ident(ddl.ROLLUP_PENDING)} WHERE rollup = %s "
                "RETURNING bucket",
                (key,),
            )
            # buckets at or after the new watermark are read from the raw rows, and will be
            # materialized when the watermark passes them
            ranges = [(b, b + width) for (b,) in await cur.fetchall() if b < new]
            if new > old:
                ranges.append((old, new))
            merged = _merge_ranges(ranges)
            for lo, hi in merged:
                await conn.execute(delete_sql, {"lo": lo, "hi": hi})
                await conn.execute(insert_sql, {"lo": lo, "hi": hi})
            await conn.execute(
                f"UPDATE {ddl.quote_ident(ddl.ROLLUP_STATE)} SET materialized_until = %s, "
                "refreshed_at = now() WHERE rollup = %s",
                (new, key),
            )
        return len(merged)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rollup_refresh_secs)
            await self.refresh_rollups()

    async def close(self) -> None:
        if self._refresher is not None:
            refresher, self._refresher = self._refresher, None
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if self._pool is not None:
                await self.refresh_rollups()
        if self._read_pool is not None:
            readers, self._read_pool = self._read_pool, None
            await readers.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def close_sync(self) -> None:
        """Nothing is held between synchronous queries (each has its own connection)."""

    async def ping(self) -> None:
        try:
            async with self.pool.connection() as conn:
                await conn.execute(f"SELECT 1 FROM {ddl.quote_ident(ddl.LEDGER)} LIMIT 0")
        except (psycopg.Error, OSError) as exc:
            raise self._error(exc, "", "") from exc

    # -- writes --------------------------------------------------------------------------
    def _error(
        self, exc: BaseException, table: str, batch_id: str
    ) -> PostgresRetryableError | PostgresRejectedError:
        sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        cls = PostgresRejectedError if classify_error(exc) == "rejected" else PostgresRetryableError
        return cls(_message(exc), sqlstate=sqlstate, sink=self.name, table=table, batch_id=batch_id)

    async def write(self, batch: Batch) -> None:
        """Commit ``batch`` once: rows, rollups and ledger entry in one transaction."""
        if not batch.size:
            return
        table = batch.table
        plan = self._plans.get(table.qualified_name)
        if plan is None or (plan.table is not table and plan.table != table):
            plan = self._plan(table)
            self._plans[table.qualified_name] = plan
        started = time.perf_counter()
        try:
            async with self.pool.connection() as conn, conn.lock:
                # One round trip (BEGIN, COPY, COMMIT would be three): claim, rows and
                # rollup buckets in one simple query, one implicit transaction.
                query = copy_query(conn.pgconn, plan.write_query(batch), plan.pieces(batch))
                outcome = await _drive(conn, query, self.settings.write_timeout_secs)
                duplicate = _check(outcome, conn.info.encoding)
        except EncodeError as exc:
            raise PostgresRejectedError(
                str(exc),
                bad_rows=plan.bad_rows(batch),
                sink=self.name,
                table=table.name,
                batch_id=batch.batch_id,
            ) from exc
        except (psycopg.Error, OSError) as exc:
            if _connection_lost(exc):
                await self._drop_broken_connections()
            raise self._error(exc, table.name, batch.batch_id) from exc
        logger.debug(
            "Batch already committed; skipped." if duplicate else "Batch committed.",
            extra={
                "component": self.name,
                "table": table.name,
                "batch_id": batch.batch_id,
                "records": batch.size,
                "bytes": outcome.nbytes,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    async def _drop_broken_connections(self) -> None:
        """After a lost connection (server restart, terminated backend), test the idle
        pooled connections so the retry does not pick another dead one."""
        pool = self._pool
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.check(), timeout=self.settings.connect_timeout_secs)
        except Exception as exc:  # the write's own error is what matters
            logger.debug(
                "Pool check failed.", extra={"component": self.name, "error": _message(exc)}
            )

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Store refused rows in ``dead_letters`` (row as jsonb)."""
        if not letters:
            return
        params = [
            (
                _EPOCH + dt.timedelta(microseconds=letter.time_ns // 1000),
                letter.pipeline,
                letter.table,
                letter.batch_id,
                Jsonb(letter.row, dumps=_dumps),
                letter.error,
            )
            for letter in letters
        ]
        try:
            async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_DEAD_LETTER_INSERT, params)
        except (psycopg.Error, OSError) as exc:
            raise self._error(exc, ddl.DEAD_LETTERS, letters[0].batch_id) from exc

    # -- reads ---------------------------------------------------------------------------
    async def query(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        """The service's own read queries (dashboard; ``%(name)s`` placeholders): a
        ``READ ONLY`` transaction with a ``statement_timeout`` on the readers' small pool,
        never the writers'.

        :raises QueryError: the query failed; ``code`` is the SQLSTATE as an int when
            it is all digits.
        """
        pool = await self._readers()
        try:
            async with pool.connection() as conn, conn.transaction(force_rollback=True):
                return await self._read(conn, sql, params)
        except psycopg.Error as exc:
            raise QueryError(_message(exc), _status(exc.sqlstate)) from exc
        except (PoolTimeout, OSError) as exc:
            raise QueryError(f"PostgreSQL not reachable: {_message(exc)}") from exc

    async def _read(self, conn: Any, sql: str, params: dict[str, object] | None) -> Rows:
        timeout_ms = max(1, int(self.settings.query_timeout_secs * 1000))
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}")
        # prepare=True: the extended protocol, so "...; COMMIT; DROP ..." cannot slip out
        cur = await conn.execute(sql, params, prepare=True if params is None else None)
        if cur.description is None:
            return Rows([], [], [])
        columns = [d.name for d in cur.description]
        types = [d.type_display for d in cur.description]
        rows = [tuple(r) for r in await cur.fetchall()]
        return Rows(columns, types, rows)

    async def _readers(self) -> AsyncConnectionPool[Any]:
        if self._read_pool is None:
            s = self.settings
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self._reader_dsn or s.dsn,
                min_size=0,
                max_size=2,
                kwargs={
                    "autocommit": True,
                    "application_name": f"{s.application_name}-read",
                    "connect_timeout": max(1, round(s.connect_timeout_secs)),
                },
                timeout=s.connect_timeout_secs,
                name="orbitstream-postgres-read",
                open=False,
            )
            await pool.open(wait=False)
            self._read_pool = pool
        return self._read_pool

    def _user_dsn(self) -> str:
        if self._reader_dsn is None:
            raise QueryError(
                self._reader_problem or "the PostgreSQL sink is not started (no read-only role)",
                42501,
            )
        return self._reader_dsn

    async def user_query(self, sql: str, database: str | None = None) -> Rows:
        """A user's query (``POST /api/query``): its own connection as the read-only role,
        in a read-only transaction with a statement timeout, rolled back and closed after,
        so nothing it sets survives it; ``database`` is a schema put first on the search
        path.

        :raises QueryError: refused or failed (``25006``: a write; ``42501``: no privilege).
        """
        dsn = self._user_dsn()
        s = self.settings
        try:
            async with (
                await psycopg.AsyncConnection.connect(
                    dsn,
                    autocommit=True,
                    application_name=f"{s.application_name}-query",
                    connect_timeout=max(1, round(s.connect_timeout_secs)),
                ) as conn,
                conn.transaction(force_rollback=True),
            ):
                await self._search_path(conn, database)
                return await self._read(conn, sql, None)
        except psycopg.Error as exc:
            raise QueryError(_message(exc), _status(exc.sqlstate)) from exc
        except OSError as exc:
            raise QueryError(f"PostgreSQL not reachable: {_message(exc)}") from exc

    @staticmethod
    async def _search_path(conn: Any, schema: str | None) -> None:
        if schema and schema != "public":
            await conn.execute(f"SET LOCAL search_path = {ddl.quote_ident(schema)}, public")

    def user_query_sync(self, sql: str, database: str | None = None) -> Rows:
        """:meth:`user_query` for synchronous callers (the CLI without a running service).
        Sets up the read-only role first when needed."""
        if self._reader_dsn is None and self._reader_problem is None:
            asyncio.run(self._setup_reader_only())
        dsn = self._user_dsn()
        timeout_ms = max(1, int(self.settings.query_timeout_secs * 1000))
        try:
            with (
                psycopg.connect(
                    dsn,
                    autocommit=True,
                    application_name=f"{self.settings.application_name}-query",
                    connect_timeout=max(1, round(self.settings.connect_timeout_secs)),
                ) as conn,
                conn.transaction(force_rollback=True),
            ):
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                if database and database != "public":
                    conn.execute(f"SET LOCAL search_path = {ddl.quote_ident(database)}, public")
                cur = conn.execute(sql, prepare=True)
                if cur.description is None:
                    return Rows([], [], [])
                columns = [d.name for d in cur.description]
                types = [d.type_display for d in cur.description]
                rows = [tuple(r) for r in cur.fetchall()]
        except psycopg.Error as exc:
            raise QueryError(_message(exc), _status(exc.sqlstate)) from exc
        except OSError as exc:
            raise QueryError(f"PostgreSQL not reachable: {_message(exc)}") from exc
        return Rows(columns, types, rows)

    async def _setup_reader_only(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.settings.connect_timeout_secs)),
            ) as conn:
                layout = await recorded_layout(conn) or "plain"
                access = await ensure_reader(conn, self._query_tables, self.settings, layout)
        except (psycopg.Error, OSError) as exc:
            raise QueryError(f"PostgreSQL not reachable: {_message(exc)}") from exc
        self._reader_dsn, self._reader_problem = access.dsn, access.problem


def _text(value: str) -> str:
    """``value`` as a PostgreSQL string constant, whatever ``standard_conforming_strings``
    says (an escape string: backslashes and quotes doubled). Only for our own values
    (batch ids, table and rollup names), which hold no NUL."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _dumps(value: object) -> str:
    # Rows may hold what JSON cannot: NaN/inf become null, unknown types their str().
    return msgspec.json.encode(value, enc_hook=str).decode()


def _merge_ranges(ranges: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Sorted, overlapping or touching ``[lo, hi)`` ranges joined."""
    out: list[tuple[Any, Any]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
