"""Replacing tables on chDB: whatever order several workers write a key's rows in, FINAL and
argMin/argMax give the row the declaration says (first started message / latest state),
before and after the engine merges the parts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from orbitstream.core.batch import Batch, Row
from orbitstream.pipelines import network, sessions
from orbitstream.pipelines.mapping import Mapper, MessagePosition
from orbitstream.sinks.chdb import ChdbSink
from tests.conftest import require
from tests.support.rows import started_message

pytestmark = pytest.mark.integration


def _chdb() -> bool:
    try:
        import chdb  # noqa: F401
    except ImportError:
        return False
    return True


def _base_rows(value: bytes, offset: int) -> list[Row]:
    result = sessions.SessionsMapper().map(value, MessagePosition("sessions-topic", 0, offset))
    assert not result.dead
    return result.rows["sessions_base"]


async def test_sessions_base_keeps_the_earliest_started_row_in_any_write_order(
    tmp_path: Path,
) -> None:
    require(_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    store = ChdbSink(tmp_path / "chdb")
    await store.start(list(sessions.tables()))
    table = sessions.SESSIONS_BASE_TABLE
    orders = list(itertools.permutations(range(3)))
    try:
        for n, order in enumerate(orders):
            sid = f"s-{n}"
            # worker A sees the real first started message; worker B a later duplicate
            # "started" with other ids; worker A's batch is replayed by B after a rebalance
            # under another batch id (so the store's dedup token cannot hide it).
            first = _base_rows(started_message(sid, "veh-first", "2025-07-19T12:00:00.000Z"), 1)
            later = _base_rows(started_message(sid, "veh-later", "2025-07-19T12:05:00.000Z"), 9)
            batches = [
                Batch(table, first, f"w1:{sid}"),
                Batch(table, later, f"w2:{sid}"),
                Batch(table, first, f"w2-replay:{sid}"),
            ]
            for i in order:
                await store.write(batches[i])
        final = await store.query(
            "SELECT session_id, vehicle_id, toUnixTimestamp64Nano(started_at) "
            "FROM sessions_base FINAL ORDER BY session_id"
        )
        expected_ns = first[0][3]
        assert [(r[0], r[1], int(str(r[2]))) for r in final.rows] == [
            (f"s-{n}", "veh-first", expected_ns) for n in range(len(orders))
        ]
        arg = await store.query(
            "SELECT session_id, argMin(vehicle_id, started_at) FROM sessions_base "
            "GROUP BY session_id ORDER BY session_id"
        )
        assert arg.rows == [(f"s-{n}", "veh-first") for n in range(len(orders))]
        # what a user reads (orbitstream query, /api/query, the dashboard) is merged
        # without saying FINAL: one row per session before the engine merges the parts
        plain = await store.query("SELECT session_id, vehicle_id FROM sessions_base")
        assert sorted(plain.rows) == [(f"s-{n}", "veh-first") for n in range(len(orders))]
        counted = await store.user_query("SELECT count() FROM sessions_base", "default")
        assert [int(str(c)) for (c,) in counted.rows] == [len(orders)]
    finally:
        await store.close()

    import chdb

    conn = chdb.connect(str(tmp_path / "chdb"))  # type: ignore[no-untyped-call]
    try:
        conn.query("OPTIMIZE TABLE sessions_base FINAL")
        merged = conn.query(
            "SELECT session_id, vehicle_id FROM sessions_base ORDER BY session_id", "CSV"
        )
        lines = merged.bytes().decode().split()
        assert lines == [f'"s-{n}","veh-first"' for n in range(len(orders))]
    finally:
        conn.close()


async def test_nodes_keep_the_latest_state_in_any_write_order(tmp_path: Path) -> None:
    require(_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    store = ChdbSink(tmp_path / "chdb")
    await store.start(list(network.tables()))
    table = network.NODES_TABLE
    base = 1_750_000_000_000_000_000
    orders = list(itertools.permutations(range(3)))
    try:
        for n, order in enumerate(orders):
            name = f"leaf{n}"
            rows: list[list[Row]] = [
                [(name, f"10.0.0.{k}", None, base, base + k * 10**9)] for k in range(3)
            ]
            for i in order:
                await store.write(Batch(table, rows[i], f"w{i}:{name}"))
        final = await store.query(
            "SELECT node_name, system_ip, toUnixTimestamp64Nano(last_seen) FROM nodes FINAL "
            "ORDER BY node_name"
        )
        assert [(r[0], r[1], int(str(r[2]))) for r in final.rows] == [
            (f"leaf{n}", "10.0.0.2", base + 2 * 10**9) for n in range(len(orders))
        ]
        arg = await store.query(
            "SELECT node_name, argMax(system_ip, last_seen) FROM nodes GROUP BY node_name "
            "ORDER BY node_name"
        )
        assert arg.rows == [(f"leaf{n}", "10.0.0.2") for n in range(len(orders))]
    finally:
        await store.close()


async def test_every_network_and_sessions_table_accepts_mapped_rows(tmp_path: Path) -> None:
    """The declared column types take the mappers' rows (nullable low-cardinality strings,
    UInt64 counters, nullable rates), and SELECT * returns exactly the declared columns."""
    require(_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.simulate.network import FabricConfig, NetworkSimulator
    from orbitstream.simulate.publisher import SimMessage
    from orbitstream.simulate.sessions import SessionsConfig, SessionsSimulator

    store = ChdbSink(tmp_path / "chdb")
    all_tables = [*network.tables(), *sessions.tables()]
    await store.start(all_tables)
    try:
        net_sim = NetworkSimulator(FabricConfig(spines=1, leaves=2, seed=3, link_down_rate=0.1))
        ses_sim = SessionsSimulator(SessionsConfig(vehicles=3, seed=3, cancel_rate=0.5))
        streams: list[tuple[Mapper, str, list[SimMessage]]] = [
            (network.NetworkMapper(), "network-data", list(net_sim.messages(60))),
            (sessions.SessionsMapper(), "sessions-topic", list(ses_sim.messages(400))),
        ]
        totals: dict[str, int] = {}
        keys: dict[str, set[object]] = {}
        for mapper, topic, msgs in streams:
            for i, m in enumerate(msgs):
                result = mapper.map(m.value, MessagePosition(topic, 0, i, m.timestamp_ns))
                assert not result.dead
                for name, rows in result.rows.items():
                    t = next(t for t in all_tables if t.name == name)
                    await store.write(Batch(t, rows, f"{name}:{i}"))
                    totals[name] = totals.get(name, 0) + len(rows)
                    key = t.index(t.order_by[0])
                    keys.setdefault(name, set()).update(r[key] for r in rows)
                mapper.commit(result)
        for t in all_tables:
            got = await store.query(f"SELECT * FROM `{t.name}` LIMIT 1")
            assert tuple(got.columns) == t.column_names
            if t.replacing is None:
                count = await store.query(f"SELECT count() FROM `{t.name}`")
                assert int(str(count.rows[0][0])) == totals[t.name], t.name
            else:  # one row per key (the engine may already have merged the others)
                count = await store.query(f"SELECT count() FROM `{t.name}` FINAL")
                assert int(str(count.rows[0][0])) == len(keys[t.name]), t.name
        # NULLs in nullable low-cardinality strings and nullable counters go through Arrow
        t0 = 1_750_000_000_000_000_000
        null_address = network.NetworkMapper().map(
            json.dumps(
                [
                    {
                        "path": network.IPV6_PATH,
                        "timestamp": t0,
                        "entries": [
                            {
                                "keys": {
                                    "node_name": "solo",
                                    "interface_name": "e1",
                                    "subinterface_index": "3",
                                    "address_ip-prefix": "2001:DB8::7/64",
                                }
                            }
                        ],
                    },
                    {
                        "path": network.STATISTICS_PATH,
                        "timestamp": t0,
                        "entries": [
                            {
                                "keys": {"node_name": "solo", "interface_name": "e1"},
                                "fields": {"in_octets": str(2**64 - 1)},
                            }
                        ],
                    },
                ]
            ).encode(),
            MessagePosition("network-data", 0, 0),
        )
        for name, rows in null_address.rows.items():
            t = next(t for t in all_tables if t.name == name)
            await store.write(Batch(t, rows, f"nulls:{name}"))
        got_address = await store.query(
            "SELECT prefix, family, subinterface_index, origin, status FROM addresses "
            "WHERE node_name = 'solo'"
        )
        assert [tuple(str(v) if v is not None else None for v in r) for r in got_address.rows] == [
            ("2001:db8::7/64", "IPv6", "3", None, None)
        ]
        got_counters = await store.query(
            "SELECT toString(in_octets), out_octets, in_bits_per_sec FROM interface_counters "
            "WHERE node_name = 'solo'"
        )
        assert got_counters.rows == [(str(2**64 - 1), None, None)]
        rates = await store.query(
            "SELECT count() FROM interface_counters WHERE in_bits_per_sec IS NOT NULL"
        )
        assert int(str(rates.rows[0][0])) > 0
    finally:
        await store.close()
