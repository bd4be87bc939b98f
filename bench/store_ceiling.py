"""The stores' own insert rate for the rows ``bench/ingest.py`` sends: the baselines of its
"committed to chDB" and "committed to PostgreSQL" steps.

The rows are those of the wrk batch body (``bench/wrk_ingest.lua``: 1000 points, satellites
``SAT-0001`` … ``SAT-1000``), mapped once by the satellites pipeline and encoded once
(Arrow IPC for chDB, binary COPY for PostgreSQL); the loop then only inserts, for
``--seconds``, into tables created by OrbitStream's own DDL (the same layout the service
writes)::

    .venv/bin/python bench/store_ceiling.py chdb --seconds 10
    .venv/bin/python bench/store_ceiling.py postgres --seconds 10 --connections 4

chDB: ``send_insert(... FORMAT ArrowStream)`` on one connection (the service's writer has
one too), with the service's insert settings (a dedup token per insert) and without.
PostgreSQL: ``COPY telemetry FROM STDIN (FORMAT BINARY)`` per batch on ``--connections``
connections at once (the service's sink commits up to 4 batches at once), into a fresh
database, each COPY its own transaction in one round trip (autocommit: the cheapest a
transaction of 1000 rows can be; ``BEGIN``, ``COPY``, ``COMMIT`` was measured 2-10 % slower),
each with timestamps of its own, as the service's batches have (see :class:`_Retimed`). Prints one line ``STORE_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds


def wrk_body(n: int = 1000) -> bytes:
    """The JSON array ``bench/wrk_ingest.lua`` posts in batch mode."""
    points = [
        f'{{"satellite_id":"SAT-{i % 1000:04d}","battery_charge_percent":{50 + (i % 50):.1f},'
        '"storage_usage_mb":45000.0,"signal_strength_dbm":-55.0}'
        for i in range(1, n + 1)
    ]
    return ("[" + ",".join(points) + "]").encode()


def mapped(n: int, received_ns: int | None = None) -> Any:
    """The wrk body's telemetry rows as one record batch (the service's own mapping; the
    body has no timestamps, so every row's ``time`` and ``received_at`` are
    ``received_ns``)."""
    from orbitstream.pipelines.satellites import SatelliteMapper, threshold_rules
    from orbitstream.pipelines.satellites_columnar import decode_columns, map_columns

    cols = decode_columns(wrk_body(n))
    assert cols is not None
    stamp = time.time_ns() if received_ns is None else received_ns
    return map_columns(SatelliteMapper(threshold_rules()), cols, stamp).telemetry


class _Retimed:
    """One pre-encoded COPY stream, handed out with new timestamps each time.

    The service's batches each carry the time they were received, so no two hold the
    same ``(satellite_id, time)`` keys; re-inserting one identical stream instead is
    ~20 % cheaper for PostgreSQL (its btree deduplicates equal keys: measured 390,000 vs
    320,000 rows/s), which would flatter the ceiling. Each call rewrites the 8-byte
    timestamp fields (``time``, ``received_at``: all ``stamped_ns``) with one microsecond
    more than the last: a copy and a numpy scatter, ~20 µs, where encoding the batch
    anew would cost ~400 µs.
    """

    def __init__(self, payload: bytes, stamped_ns: int) -> None:
        import numpy as np

        self._np = np
        self.us = stamped_ns // 1000 - _PG_EPOCH_US
        field = b"\x00\x00\x00\x08" + self.us.to_bytes(8, "big", signed=True)
        spots: list[int] = []
        at = payload.find(field)
        while at >= 0:
            spots.append(at + 4)
            at = payload.find(field, at + len(field))
        self.payload = payload
        self.fields = len(spots)
        self.index = (np.array(spots)[:, None] + np.arange(8)).ravel()

    def next(self) -> bytes:
        np = self._np
        self.us += 1
        stamp = np.frombuffer(self.us.to_bytes(8, "big", signed=True), dtype=np.uint8)
        buf = np.frombuffer(self.payload, dtype=np.uint8).copy()
        buf[self.index] = np.tile(stamp, len(self.index) // 8)
        return bytes(buf.tobytes())


def bench_chdb(seconds: float, rows: int) -> dict[str, Any]:
    from orbitstream.core.columns import ipc_stream
    from orbitstream.pipelines.satellites import tables
    from orbitstream.sinks.chdb import ChdbSink

    tmp = Path(tempfile.mkdtemp(prefix="store-ceiling-chdb-"))
    sink = ChdbSink(tmp)
    out: dict[str, Any] = {"store": "chdb", "rows_per_insert": rows}
    try:
        telemetry, alerts = tables(30)
        asyncio.run(sink.start([telemetry, alerts]))
        data = ipc_stream(mapped(rows))
        conn = sink._writer.conn
        assert conn is not None
        seq = iter(range(10**12))

        def insert(settings: str) -> None:
            ins = conn.send_insert(f"INSERT INTO {telemetry.name} {settings}", "ArrowStream")
            ins.append(data)
            ins.finish()

        variants: dict[str, Callable[[], None]] = {
            "with_dedup_token": lambda: insert(sink.dialect.insert_settings(f"sc-{next(seq)}")),
            "no_settings": lambda: insert(""),
        }
        for name, fn in variants.items():
            fn()  # warm
            n = 0
            started = time.perf_counter()
            deadline = started + seconds / len(variants)
            while time.perf_counter() < deadline:
                sink._writer.call(fn)
                n += 1
            elapsed = time.perf_counter() - started
            out[name] = n * rows / elapsed
            out[f"{name}_inserts"] = n
        out["rows_per_s"] = max(out["with_dedup_token"], out["no_settings"])
    finally:
        sink.close_sync()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def _bench_postgres(dsn: str, seconds: float, rows: int, connections: int) -> dict[str, Any]:
    import psycopg

    from orbitstream.pipelines.satellites import tables
    from orbitstream.sinks.postgres import ddl
    from orbitstream.sinks.postgres.arrow_copy import ArrowCopyEncoder
    from orbitstream.sinks.postgres.settings import PostgresSettings
    from orbitstream.sinks.postgres.sink import PostgresSink

    name = f"store_ceiling_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    db = dsn.rsplit("/", 1)[0] + "/" + name
    out: dict[str, Any] = {"store": "postgres", "rows_per_insert": rows, "connections": connections}
    try:
        telemetry, alerts = tables(30)
        sink = PostgresSink(PostgresSettings(dsn=db, max_connections=4))
        await sink.start([telemetry, alerts])  # the service's layout
        out["layout"] = sink.layout
        await sink.close()
        stamped_ns = time.time_ns()
        payloads = _Retimed(
            ArrowCopyEncoder(telemetry).encode(mapped(rows, stamped_ns)), stamped_ns
        )
        if payloads.fields != 2 * rows:  # time and received_at of every row
            raise SystemExit(f"found {payloads.fields} timestamp fields, not {2 * rows}")
        sql = ddl.copy_sql(telemetry)
        counts = [0] * connections

        async def worker(i: int, deadline: float) -> None:
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
                while time.perf_counter() < deadline:
                    payload = payloads.next()
                    async with conn.cursor() as cur, cur.copy(sql) as copy:
                        await copy.write(payload)
                    counts[i] += 1

        await worker(0, time.perf_counter() + 0.5)  # warm
        counts[0] = 0
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(i, deadline) for i in range(connections)))
        elapsed = time.perf_counter() - started
        out["inserts"] = sum(counts)
        out["rows_per_s"] = sum(counts) * rows / elapsed
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("store", choices=["chdb", "postgres"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rows", type=int, default=1000, help="rows per insert (default 1000)")
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args(argv)
    if args.store == "chdb":
        result = bench_chdb(args.seconds, args.rows)
    else:
        result = asyncio.run(_bench_postgres(args.dsn, args.seconds, args.rows, args.connections))
    print("STORE_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH.parent / "src"))
    sys.exit(main())
