"""Backends for the compliance suite that need servers (PostgreSQL, ClickHouse front).

Fault injection happens at the server, not in the sink, so the sink's own error
classification is what the suite exercises: PostgreSQL connections are terminated
(a transient failure) or refused (an outage); the ClickHouse front answers 503.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg

from orbitstream.pipelines.satellites import tables
from tests.conftest import require


async def _postgres_backend(tmp_path: Path) -> AsyncIterator[Any]:
    from orbitstream.sinks.postgres.settings import PostgresSettings
    from orbitstream.sinks.postgres.sink import PostgresSink
    from tests.integration.compliance.test_sink_compliance import Backend
    from tests.integration.postgres.conftest import require_server, server_url, with_database

    admin = server_url()
    require_server(admin)
    name = f"os_comp_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    sink = PostgresSink(
        PostgresSettings(dsn=with_database(admin, name), max_connections=6, connect_timeout_secs=2)
    )
    await sink.start(list(tables()))

    def terminate() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )

    def set_down(flag: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if flag else "true"}')
        if flag:
            terminate()

    async def count(table: str) -> int:  # a separate connection: the pipeline closes the sink
        async with await psycopg.AsyncConnection.connect(with_database(admin, name)) as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    try:
        yield Backend(sink, count, lambda: count("dead_letters"), terminate, set_down)
    finally:
        await sink.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _clickhouse_backend(tmp_path: Path) -> AsyncIterator[Any]:
    from orbitstream.sinks.clickhouse import ClickHouseSettings
    from orbitstream.sinks.clickhouse.sink import ClickHouseSink
    from tests.conftest import _has_chdb
    from tests.integration.compliance.test_sink_compliance import Backend
    from tests.support.clickhouse_front import ClickHouseFront

    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    front = ClickHouseFront(tmp_path / "front").start()
    settings = ClickHouseSettings(url=front.url, database=f"comp_{uuid.uuid4().hex[:8]}")
    sink = ClickHouseSink(settings)
    await sink.start(list(tables()))
    reader = ClickHouseSink(settings)  # the pipeline closes its sink; count with another client

    async def count(table: str) -> int:
        res = await reader.query(f"SELECT count() FROM {table}")
        return int(str(res.rows[0][0]))

    def set_down(flag: bool) -> None:
        front.down = flag

    try:
        yield Backend(
            sink, count, lambda: count("dead_letters"), lambda: front.fail_next(1, 503), set_down
        )
    finally:
        await sink.close()
        await reader.close()
        front.stop()


EXTRA: dict[str, Callable[[Path], AsyncIterator[Any]]] = {
    "postgres": _postgres_backend,
    "clickhouse": _clickhouse_backend,
}
