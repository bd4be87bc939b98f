"""The store-backed chunk log on the embedded store (chDB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitstream.sources.kafka import CHUNK_LOG_TABLE, TableChunkLog
from tests.conftest import _has_chdb, require
from tests.integration.kafka.support import check_chunk_log

pytestmark = pytest.mark.integration


async def test_chunk_log_in_chdb(tmp_path: Path) -> None:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.sinks.chdb import ChdbSink

    sink = ChdbSink(tmp_path / "chdb")
    await sink.start([CHUNK_LOG_TABLE])
    try:
        log = TableChunkLog(sink)
        assert log.dialect == "clickhouse"
        await check_chunk_log(log)
    finally:
        await sink.close()
