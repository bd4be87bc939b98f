"""The network pipeline's state read back from a real store at start (chDB and
PostgreSQL): a mapper restored from the rows the first one wrote continues its counter
rates, keeps each node's first sighting and its interfaces' statuses, exactly as the
mapper that never stopped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orbitstream.core.batch import Batch
from orbitstream.core.protocols import Store
from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.network import (
    IPV4_PATH,
    STATISTICS_PATH,
    STATUS_PATH,
    NetworkMapper,
    restore_from,
    tables,
)
from tests.conftest import _has_chdb, require
from tests.integration.postgres.conftest import fresh_database

pytestmark = pytest.mark.integration

TABLES = tuple(t.in_namespace("network") for t in tables(None))
T0 = 1_767_225_600_000_000_000  # 2026-01-01
SEC = 1_000_000_000


@pytest.fixture(params=["chdb", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    sink: Any
    if request.param == "chdb":
        require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
        from orbitstream.sinks.chdb import ChdbSink

        sink = ChdbSink(tmp_path / "store")
        await sink.start(TABLES)
        try:
            yield sink
        finally:
            await sink.close()
    else:
        from orbitstream.sinks.postgres.settings import PostgresSettings
        from orbitstream.sinks.postgres.sink import PostgresSink

        with fresh_database() as dsn:
            sink = PostgresSink(PostgresSettings(dsn=dsn, max_connections=2))
            await sink.start(list(TABLES))
            try:
                yield sink
            finally:
                await sink.close()


def _update(path: str, node: str, iface: str, t: int, fields: dict[str, Any], **keys: Any) -> Any:
    return {
        "path": path,
        "timestamp": t,
        "entries": [
            {"keys": {"node_name": node, "interface_name": iface, **keys}, "fields": fields}
        ],
    }


def _message(t: int, octets: int) -> bytes:
    prefix = {"subinterface_index": 0, "address_ip-prefix": "10.0.0.7/32"}
    return json.dumps(
        [
            _update(IPV4_PATH, "leaf1", "system0", t, {}, **prefix),
            _update(STATUS_PATH, "leaf1", "e1", t, {"admin_status": "up", "oper_status": "up"}),
            _update(STATISTICS_PATH, "leaf1", "e1", t, {"in_octets": octets, "out_octets": 5}),
            _update(STATISTICS_PATH, "leaf2", "e9", t, {"in_octets": 3 * octets}),
        ]
    ).encode()


def _map(mapper: NetworkMapper, offset: int, t: int, octets: int) -> Any:
    result = mapper.map(_message(t, octets), MessagePosition("network-data", 0, offset, t))
    assert not result.dead, result.dead
    return result


async def test_a_restored_mapper_continues_like_one_that_never_stopped(store: Store) -> None:
    first = NetworkMapper()
    by_name = {t.name: t for t in TABLES}
    for offset, (t, octets) in enumerate([(T0, 1000), (T0 + 10 * SEC, 2000)]):
        result = _map(first, offset, t, octets)
        first.commit(result)
        for name, table_rows in result.rows.items():
            if table_rows:
                await store.write(Batch(by_name[name], table_rows, f"network:{name}:{offset}"))

    restored = NetworkMapper()
    await restore_from(store, by_name, restored)
    later = (T0 + 20 * SEC, 4000)
    want = _map(first, 2, *later).rows
    got = _map(restored, 2, *later).rows
    for name in ("nodes", "interfaces", "interface_counters"):
        assert sorted(got[name]) == sorted(want[name]), name
    rates = [r for r in got["interface_counters"] if r[1] == "leaf1"]
    assert rates and any(v == pytest.approx(1600.0) for v in rates[0] if isinstance(v, float))
