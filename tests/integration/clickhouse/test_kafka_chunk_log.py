"""The store-backed Kafka chunk log on a ClickHouse server (its own database)."""

from __future__ import annotations

import pytest

from orbitstream.sinks.clickhouse import ClickHouseSettings
from orbitstream.sinks.clickhouse.sink import ClickHouseSink
from orbitstream.sources.kafka import CHUNK_LOG_TABLE, TableChunkLog
from tests.integration.kafka.support import check_chunk_log

pytestmark = pytest.mark.integration


async def test_chunk_log_in_clickhouse(ch_settings: ClickHouseSettings) -> None:
    sink = ClickHouseSink(ch_settings)
    await sink.start([CHUNK_LOG_TABLE])
    try:
        log = TableChunkLog(sink)
        assert log.qualified_name == f"`{ch_settings.database}`.`kafka_chunks`"
        await check_chunk_log(log)
    finally:
        await sink.close()
