"""pgpq's COPY bytes (ArrowCopyEncoder) and ours (CopyEncoder) of the same rows, into a real
PostgreSQL: both accepted, the same values stored; what pgpq's wrapper refuses up front is
what PostgreSQL refuses from our bytes."""

from __future__ import annotations

import math
import time

import psycopg
import pytest

from orbitstream.core.batch import Row
from orbitstream.core.columns import record_batch
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.pipelines.satellites import TELEMETRY_TABLE
from orbitstream.sinks.postgres.arrow_copy import ArrowCopyEncoder
from orbitstream.sinks.postgres.ddl import column_type, copy_sql, quote_ident
from orbitstream.sinks.postgres.encoding import CopyEncoder

pytestmark = pytest.mark.integration

NOW = time.time_ns()
STARLINK_LIKE = Table(
    "starlink_like",
    (
        Column("device_type", ColType.STRING),
        Column("device_id", ColType.STRING),
        Column("ts_ns", ColType.TIMESTAMP),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
        Column("ipv4", ColType.STRING_LIST),
        Column("received_at", ColType.TIMESTAMP),
    ),
    time_column="ts_ns",
    order_by=("device_id", "ts_ns"),
)


def _create(conn: psycopg.Connection, table: Table, name: str) -> None:
    cols = ", ".join(f"{quote_ident(c.name)} {column_type(c)} NOT NULL" for c in table.columns)
    conn.execute(f"CREATE TABLE {quote_ident(name)} ({cols})")


def _copy(conn: psycopg.Connection, table: Table, name: str, data: bytes) -> None:
    sql = copy_sql(table).replace(quote_ident(table.name), quote_ident(name), 1)
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.write(data)


def _stored(conn: psycopg.Connection, table: Table, name: str) -> list[tuple[object, ...]]:
    order = ", ".join(quote_ident(c) for c in table.order_by)
    return conn.execute(f"SELECT * FROM {quote_ident(name)} ORDER BY {order}").fetchall()


def _both(
    dsn: str, table: Table, rows: list[Row]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _create(conn, table, "ours")
        _create(conn, table, "pgpq")
        _copy(conn, table, "ours", CopyEncoder(table).encode(rows))
        _copy(conn, table, "pgpq", ArrowCopyEncoder(table).encode(record_batch(table, rows)))
        return _stored(conn, table, "ours"), _stored(conn, table, "pgpq")


def test_satellite_rows_are_stored_alike(pg_dsn: str) -> None:
    rows: list[Row] = [
        (
            NOW + i * 1001 - 5000 * 10**9 * (i % 3),
            f"SAT-{i % 7}",
            i * 1.5,
            1e15 - i,
            -200.0 + i,
            i % 4 == 0,
            ("battery_low", "signal_weak")[: i % 3],
            NOW,
        )
        for i in range(500)
    ]
    rows.append((-1_500, "SAT-0", 0.0, 0.0, 0.0, False, (), -999))  # before 1970: floored
    ours, theirs = _both(pg_dsn, TELEMETRY_TABLE, rows)
    assert len(ours) == len(rows)
    assert theirs == ours


def test_starlink_shaped_rows_are_stored_alike(pg_dsn: str) -> None:
    rows: list[Row] = [
        (
            "UserTerminal",
            f"ut-{i % 5}",
            NOW + i,
            {
                "DownlinkThroughput": i * 0.1,
                "Big": 1e300,
                "Tiny": 5e-324,
                "Int": float(i),
                "Count": i,  # an int: Float64 like the others, in both paths
                "Nan": math.nan,
            },
            {"Version": f"2025.{i}", "Quote": 'a"b\\c', "Unicode": "é✓", "Ctl": "\t\n\x01"},
            ("203.0.113.10",) if i % 2 else (),
            NOW,
        )
        for i in range(200)
    ]
    ours, theirs = _both(pg_dsn, STARLINK_LIKE, rows)
    assert len(ours) == len(rows)
    assert theirs == ours
    assert ours[0][3]["Nan"] is None  # type: ignore[index]
    # the same numbers to the digit: jsonb keeps a number's scale (1.0 is not 1, and a
    # client reads the one as a float, the other as an integer), which == above ignores
    with psycopg.connect(pg_dsn) as conn:
        texts = [
            conn.execute(f"SELECT metrics::text FROM {name} ORDER BY device_id, ts_ns").fetchall()
            for name in ("ours", "pgpq")
        ]
    assert texts[1] == texts[0]
    for stored in (ours, theirs):
        assert all(type(r[3]["Int"]) is type(r[3]["Count"]) is float for r in stored)  # type: ignore[index]


def test_postgres_refuses_what_the_wrapper_refuses(pg_dsn: str) -> None:
    """A NUL in text: our bytes fail the whole COPY in PostgreSQL; the pgpq wrapper names
    the row before sending."""
    rows: list[Row] = [
        (NOW, "SAT-1", 1.0, 1.0, -1.0, False, (), NOW),
        (NOW, "SAT-\x00", 1.0, 1.0, -1.0, False, (), NOW),
    ]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _create(conn, TELEMETRY_TABLE, "ours")
        with pytest.raises(psycopg.errors.DataError):
            _copy(conn, TELEMETRY_TABLE, "ours", CopyEncoder(TELEMETRY_TABLE).encode(rows))
    assert ArrowCopyEncoder(TELEMETRY_TABLE).bad_rows(record_batch(TELEMETRY_TABLE, rows)) == (1,)
