"""Replacing tables on PostgreSQL: one row per key, the one the declaration says (the first
``started`` message of a session, a node's latest state), whatever order, worker or replay
wrote the rows in, and with two writers merging the same keys at once."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from orbitstream.core.batch import Batch, Row
from orbitstream.core.tables import Table
from orbitstream.pipelines import network, sessions
from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.sinks.postgres.settings import PostgresSettings
from orbitstream.sinks.postgres.sink import PostgresSink
from tests.support.rows import started_message

pytestmark = pytest.mark.integration

BASE_NS = 1_750_000_000_000_000_000


def _started(session: str, vehicle: str, ts: str, offset: int) -> list[Row]:
    value = started_message(session, vehicle, ts)
    result = sessions.SessionsMapper().map(value, MessagePosition("sessions-topic", 0, offset))
    assert not result.dead, result.dead
    return result.rows["sessions_base"]


def _in(table: Table, namespace: str) -> Table:
    return dataclasses.replace(table, namespace=namespace)


async def test_sessions_base_keeps_the_earliest_started_row(pg_settings: PostgresSettings) -> None:
    table = _in(sessions.SESSIONS_BASE_TABLE, "sessions")
    sink = PostgresSink(pg_settings)
    await sink.start([table])
    orders = list(itertools.permutations(range(3)))
    try:
        for n, order in enumerate(orders):
            sid = f"s-{n}"
            first = _started(sid, "veh-first", "2025-07-19T12:00:00.000Z", 1)
            later = _started(sid, "veh-later", "2025-07-19T12:05:00.000Z", 9)
            batches = [
                Batch(table, first, f"w1:{sid}"),
                Batch(table, later, f"w2:{sid}"),
                # a replay under another id (a rebalance): the ledger cannot hide it
                Batch(table, first + later, f"w2-replay:{sid}"),
            ]
            for i in order:
                await sink.write(batches[i])
        got = await sink.query(
            "SELECT session_id, vehicle_id, count(*) OVER (PARTITION BY session_id) "
            "FROM sessions.sessions_base ORDER BY session_id"
        )
        assert [tuple(r) for r in got.rows] == [
            (f"s-{n}", "veh-first", 1) for n in range(len(orders))
        ]
    finally:
        await sink.close()


async def test_nodes_keep_the_latest_state_with_two_writers_at_once(
    pg_settings: PostgresSettings,
) -> None:
    table = _in(network.NODES_TABLE, "network")
    writers = [PostgresSink(pg_settings), PostgresSink(pg_settings)]
    for w in writers:
        await w.start([table])
    names = [f"leaf{n}" for n in range(40)]
    try:
        for rnd in range(5):
            # every round both writers carry every node; the higher last_seen must win
            rows = [
                [(name, f"10.0.{rnd}.{k}", None, BASE_NS, BASE_NS + (rnd * 2 + k) * 10**9)]
                for name in names
                for k in range(2)
            ]
            a = [r[0] for r in rows[0::2]]
            b = [r[0] for r in rows[1::2]]
            await asyncio.gather(
                writers[0].write(Batch(table, a, f"a{rnd}")),
                writers[1].write(Batch(table, b, f"b{rnd}")),
            )
        got = await writers[0].query(
            "SELECT node_name, system_ip, count(*) OVER (PARTITION BY node_name) "
            "FROM network.nodes ORDER BY node_name"
        )
        assert sorted(tuple(r) for r in got.rows) == sorted((name, "10.0.4.1", 1) for name in names)
        # an older state written late changes nothing
        await writers[0].write(
            Batch(table, [(names[0], "10.9.9.9", None, BASE_NS, BASE_NS)], "old")
        )
        got = await writers[0].query(
            "SELECT system_ip FROM network.nodes WHERE node_name = 'leaf0'"
        )
        assert [tuple(r) for r in got.rows] == [("10.0.4.1",)]
    finally:
        for w in writers:
            await w.close()
