"""The store-backed Kafka chunk log on PostgreSQL (ledger-deduplicated batches)."""

from __future__ import annotations

import pytest

from orbitstream.sinks.postgres.settings import PostgresSettings
from orbitstream.sinks.postgres.sink import PostgresSink
from orbitstream.sources.kafka import CHUNK_LOG_TABLE, TableChunkLog
from tests.integration.kafka.support import check_chunk_log

pytestmark = pytest.mark.integration


async def test_chunk_log_in_postgres(pg_settings: PostgresSettings) -> None:
    sink = PostgresSink(pg_settings)
    await sink.start([CHUNK_LOG_TABLE])
    try:
        log = TableChunkLog(sink)
        assert log.dialect == "postgres"
        await check_chunk_log(log)
    finally:
        await sink.close()
