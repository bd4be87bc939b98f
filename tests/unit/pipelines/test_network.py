"""Network mapper: splitting rules, merging, rates and counter resets, IPv6, unknown paths,
malformed input, and state that moves only on commit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.network import (
    ADDRESSES_TABLE,
    COUNTERS,
    INTERFACE_COUNTERS_TABLE,
    INTERFACES_TABLE,
    IPV4_PATH,
    IPV6_PATH,
    NODES_TABLE,
    REPUBLISH_TOPICS,
    RESTORE_SQL,
    STATISTICS_PATH,
    STATUS_PATH,
    NetworkMapper,
    NetworkMapResult,
)

T0 = 1_752_928_496_000_000_000
SEC = 1_000_000_000
TABLES = {t.name: t for t in NetworkMapper.tables}

# the example of docs/input-formats.md, verbatim
EXAMPLE = [
    {
        "path": ".node.srl.interface.subinterface.ipv4.address",
        "entries": [
            {
                "keys": {
                    "node_name": "leaf1",
                    "interface_name": "ethernet-1/1",
                    "subinterface_index": "0",
                    "address_ip-prefix": "10.0.0.0/31",
                },
                "fields": {"origin": "static", "status": "preferred"},
            }
        ],
    },
    {
        "path": ".node.srl.interface.status",
        "entries": [
            {
                "keys": {"node_name": "leaf1", "interface_name": "ethernet-1/1"},
                "fields": {"admin_status": "up", "oper_status": "down"},
            }
        ],
    },
    {
        "path": ".node.srl.interface.statistics",
        "entries": [
            {
                "keys": {"node_name": "leaf1", "interface_name": "ethernet-1/1"},
                "fields": {
                    "in_packets": 1500,
                    "out_packets": 2000,
                    "in_octets": 150000,
                    "out_octets": 200000,
                    "in_errors": 0,
                    "out_errors": 0,
                },
            }
        ],
    },
]


def pos(offset: int = 0, ts: int = T0, partition: int = 0) -> MessagePosition:
    return MessagePosition("network-data", partition, offset, ts)


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def stats(node: str, iface: str, t: int | None = None, **counters: int | str) -> dict[str, Any]:
    update: dict[str, Any] = {
        "path": STATISTICS_PATH,
        "entries": [{"keys": {"node_name": node, "interface_name": iface}, "fields": counters}],
    }
    if t is not None:
        update["timestamp"] = t
    return update


def status(node: str, iface: str, **fields: str) -> dict[str, Any]:
    return {
        "path": STATUS_PATH,
        "entries": [{"keys": {"node_name": node, "interface_name": iface}, "fields": fields}],
    }


def address(node: str, iface: str, prefix: str, v6: bool = False, **fields: str) -> dict[str, Any]:
    return {
        "path": IPV6_PATH if v6 else IPV4_PATH,
        "entries": [
            {
                "keys": {
                    "node_name": node,
                    "interface_name": iface,
                    "subinterface_index": 0,
                    "address_ip-prefix": prefix,
                },
                "fields": fields,
            }
        ],
    }


def col(table: str, row: tuple[object, ...], name: str) -> object:
    return row[TABLES[table].index(name)]


def mapped(mapper: NetworkMapper, doc: Any, p: MessagePosition | None = None) -> NetworkMapResult:
    result = mapper.map(enc(doc), p or pos())
    assert not result.dead, result.dead
    return result


def test_the_documented_example_splits_into_every_record_kind() -> None:
    result = mapped(NetworkMapper(), EXAMPLE)
    assert result.rows["nodes"] == [("leaf1", None, None, T0, T0)]
    assert result.rows["addresses"] == [
        (T0, "leaf1", "ethernet-1/1", 0, "10.0.0.0/31", "IPv4", "static", "preferred")
    ]
    # status and counters of one interface, merged into one record
    assert result.rows["interfaces"] == [
        (T0, "leaf1", "ethernet-1/1", "up", "down", 1500, 2000, 150000, 200000, 0, 0)
    ]
    # a first sample has no baseline: counters, no rates
    assert result.rows["interface_counters"] == [
        (T0, "leaf1", "ethernet-1/1", 1500, 2000, 150000, 200000, 0, 0, *(None,) * 6, False)
    ]
    assert result.unknown_paths == {} and result.messages == 1


def test_every_row_fits_its_table() -> None:
    result = mapped(NetworkMapper(), [*EXAMPLE, address("leaf1", "system0", "10.0.0.1/32")])
    for name, rows in result.rows.items():
        for row in rows:
            assert len(row) == len(TABLES[name].columns), name


def test_one_object_instead_of_an_array_is_accepted() -> None:
    result = mapped(NetworkMapper(), EXAMPLE[1])
    assert [r[3:5] for r in result.rows["interfaces"]] == [("up", "down")]


def test_rates_are_derived_between_consecutive_samples() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("leaf1", "e1", T0, in_octets=1000, out_octets=0, in_packets=10,
                                out_packets=0, in_errors=0, out_errors=5)]))  # fmt: skip
    second = mapped(
        m,
        [
            stats(
                "leaf1",
                "e1",
                T0 + 10 * SEC,
                in_octets=1000 + 1_250_000,
                out_octets=500,
                in_packets=1010,
                out_packets=20,
                in_errors=3,
                out_errors=5,
            )
        ],
    )
    (row,) = second.rows["interface_counters"]
    table = "interface_counters"
    assert col(table, row, "in_bits_per_sec") == pytest.approx(1_000_000.0)
    assert col(table, row, "out_bits_per_sec") == pytest.approx(400.0)
    assert col(table, row, "in_packets_per_sec") == pytest.approx(100.0)
    assert col(table, row, "out_packets_per_sec") == pytest.approx(2.0)
    assert col(table, row, "in_errors_per_sec") == pytest.approx(0.3)
    assert col(table, row, "out_errors_per_sec") == 0.0
    assert col(table, row, "counter_reset") is False


def test_a_counter_that_goes_down_starts_a_new_baseline_without_a_rate() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("n", "e1", T0, in_octets=10_000_000, out_octets=100)]))
    reset = mapped(m, [stats("n", "e1", T0 + 10 * SEC, in_octets=2_000, out_octets=300)])
    m.commit(reset)
    (row,) = reset.rows["interface_counters"]
    t = "interface_counters"
    assert col(t, row, "in_bits_per_sec") is None  # never negative
    assert col(t, row, "out_bits_per_sec") == pytest.approx(160.0)  # this one did not reset
    assert col(t, row, "counter_reset") is True
    after = mapped(m, [stats("n", "e1", T0 + 20 * SEC, in_octets=12_000, out_octets=300)])
    (row,) = after.rows["interface_counters"]
    assert col(t, row, "in_bits_per_sec") == pytest.approx(8_000.0)  # from the new baseline
    assert col(t, row, "counter_reset") is False


def test_an_impossible_jump_is_a_reset_not_a_huge_rate() -> None:
    m = NetworkMapper(max_bits_per_sec=1e12)
    m.commit(mapped(m, [stats("n", "e1", T0, in_octets=5)]))
    jump = mapped(m, [stats("n", "e1", T0 + SEC, in_octets=2**63)])
    (row,) = jump.rows["interface_counters"]
    assert col("interface_counters", row, "in_bits_per_sec") is None
    assert col("interface_counters", row, "counter_reset") is True


def test_a_sample_not_newer_than_the_baseline_gives_no_rate_and_keeps_the_baseline() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("n", "e1", T0 + 10 * SEC, in_octets=1000)]))
    for t in (T0 + 10 * SEC, T0):
        old = mapped(m, [stats("n", "e1", t, in_octets=900)])
        m.commit(old)
        (row,) = old.rows["interface_counters"]
        assert col("interface_counters", row, "in_bits_per_sec") is None
        assert col("interface_counters", row, "counter_reset") is False
    nxt = mapped(m, [stats("n", "e1", T0 + 20 * SEC, in_octets=2000)])
    (row,) = nxt.rows["interface_counters"]
    assert col("interface_counters", row, "in_bits_per_sec") == pytest.approx(800.0)


def test_each_counter_keeps_its_own_baseline_through_partial_samples() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("n", "e1", T0, in_octets=0, in_errors=0)]))
    m.commit(mapped(m, [stats("n", "e1", T0 + 5 * SEC, in_errors=10)]))  # no octets
    last = mapped(m, [stats("n", "e1", T0 + 10 * SEC, in_octets=1000, in_errors=10)])
    (row,) = last.rows["interface_counters"]
    assert col("interface_counters", row, "in_bits_per_sec") == pytest.approx(800.0)  # over 10 s
    assert col("interface_counters", row, "in_errors_per_sec") == 0.0  # over the last 5 s
    # the merged interface record carries the last known value of every counter
    (iface,) = last.rows["interfaces"]
    assert col("interfaces", iface, "in_octets") == 1000
    assert col("interfaces", iface, "out_octets") is None


def test_status_and_counters_merge_across_messages() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("n", "e1", in_octets=7, out_octets=9)]))
    m.commit(mapped(m, [status("n", "e1", admin_status="up", oper_status="up")], pos(1, T0 + SEC)))
    later = mapped(m, [status("n", "e1", oper_status="down")], pos(2, T0 + 2 * SEC))
    (row,) = later.rows["interfaces"]
    assert row[:5] == (T0 + 2 * SEC, "n", "e1", "up", "down")
    assert col("interfaces", row, "in_octets") == 7 and col("interfaces", row, "out_octets") == 9
    assert "interface_counters" not in later.rows  # a status update is not a counter sample


def test_system_and_management_ips_come_from_system0_and_mgmt0() -> None:
    m = NetworkMapper()
    first = mapped(
        m,
        [
            address("leaf1", "system0", "2001:db8::1/128", v6=True),
            address("leaf1", "system0", "10.0.0.1/32"),
            address("leaf1", "mgmt0", "172.20.20.2/24", origin="dhcp"),
            address("leaf1", "ethernet-1/1", "10.1.0.1/31"),
        ],
    )
    assert first.rows["nodes"] == [("leaf1", "10.0.0.1", "172.20.20.2", T0, T0)]
    m.commit(first)
    # a later IPv6-only report keeps the IPv4 system address; known IPs carry over
    later = mapped(m, [address("leaf1", "system0", "2001:db8::1/128", v6=True)], pos(1, T0 + SEC))
    assert later.rows["nodes"] == [("leaf1", "10.0.0.1", "172.20.20.2", T0, T0 + SEC)]
    m.commit(later)
    # a node that only has IPv6 gets its IPv6 address; a new IPv4 address replaces the old
    other = mapped(
        m,
        [
            address("spine1", "mgmt0", "2001:db8:20::5/64", v6=True),
            address("leaf1", "system0", "10.0.0.9/32"),
        ],
        pos(2, T0 + 2 * SEC),
    )
    assert sorted(other.rows["nodes"]) == [
        ("leaf1", "10.0.0.9", "172.20.20.2", T0, T0 + 2 * SEC),
        ("spine1", None, "2001:db8:20::5", T0 + 2 * SEC, T0 + 2 * SEC),
    ]


def test_first_and_last_seen_follow_the_sample_times() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [status("n", "e1", oper_status="up")], pos(0, T0 + 10 * SEC)))
    earlier = mapped(m, [status("n", "e1", oper_status="up")], pos(1, T0))
    assert earlier.rows["nodes"] == [("n", None, None, T0, T0 + 10 * SEC)]


def test_ipv6_addresses_are_normalized_and_tagged() -> None:
    result = mapped(
        NetworkMapper(),
        [
            address(
                "n", "e1", "2001:DB8:0:0::1/64", v6=True, origin="link-layer", status="preferred"
            )
        ],
    )
    assert result.rows["addresses"] == [
        (T0, "n", "e1", 0, "2001:db8::1/64", "IPv6", "link-layer", "preferred")
    ]


def test_address_fields_are_optional() -> None:
    doc = address("n", "e1", "10.0.0.0/31")
    del doc["entries"][0]["fields"]
    result = mapped(NetworkMapper(), [doc])
    assert result.rows["addresses"] == [(T0, "n", "e1", 0, "10.0.0.0/31", "IPv4", None, None)]


def test_counters_may_be_decimal_strings_as_gnmi_encodes_them() -> None:
    big = str(2**64 - 1)
    result = mapped(NetworkMapper(), [stats("n", "e1", in_octets=big, out_octets="12")])
    (row,) = result.rows["interface_counters"]
    assert row[5:7] == (2**64 - 1, 12)


def test_unknown_paths_are_counted_not_errors() -> None:
    doc = [
        {"path": ".node.srl.system.information", "entries": [{"weird": True}]},
        {"path": ".node.srl.network-instance.protocols.bgp", "entries": "whatever"},
        {"path": ".node.srl.system.information", "entries": []},
        EXAMPLE[1],
    ]
    result = mapped(NetworkMapper(), doc)
    assert result.unknown_paths == {
        ".node.srl.system.information": 2,
        ".node.srl.network-instance.protocols.bgp": 1,
    }
    assert len(result.rows["interfaces"]) == 1


def test_a_message_of_only_unknown_paths_is_neither_rows_nor_dead() -> None:
    result = mapped(NetworkMapper(), [{"path": ".node.srl.lldp", "entries": []}])
    assert result.rows == {} and result.dead == [] and result.unknown_paths == {".node.srl.lldp": 1}
    assert result.ignored == 1
    empty = mapped(NetworkMapper(), [{"path": STATUS_PATH, "entries": []}])
    assert empty.rows == {} and empty.ignored == 1


@pytest.mark.parametrize(
    ("value", "kind", "reason"),
    [
        (b"", "empty", "empty message"),
        (b"[]", "empty", "no path updates"),
        (b"{not json", "decode", "not JSON"),
        (b"42", "decode", "$: Expected `object | array`, got `int`"),
        (b'[{"entries": []}]', "decode", "$[0]: Object missing required field `path`"),
        (b'[{"path": ".x"}]', "decode", "missing required field `entries`"),
        (enc([status("n", "e1")]), "invalid", "no admin_status or oper_status"),
        (enc([stats("n", "e1")]), "invalid", "no counters"),
        (enc([stats("n", "e1", in_octets=-1)]), "invalid", "fields.in_octets: Expected `int` >= 0"),
        (enc([stats("n", "e1", in_octets="12x")]), "invalid", "fields.in_octets"),
        (enc([stats("n", "e1", in_octets=2**64)]), "invalid", "does not fit in 64 bits"),
        (enc([stats("", "e1", in_octets=1)]), "invalid", "keys.node_name"),
        (
            enc([{"path": STATUS_PATH, "entries": [{"keys": {"node_name": "n"}, "fields": {}}]}]),
            "invalid",
            "$[0].entries[0].keys: Object missing required field `interface_name`",
        ),
        (enc([{"path": STATISTICS_PATH, "entries": "n/a"}]), "invalid", "$[0].entries"),
        (enc([address("n", "e1", "10.0.0.300/24")]), "invalid", "is not an IPv4 prefix"),
        (enc([address("n", "e1", "10.0.0.1")]), "invalid", "is not an IPv4 prefix"),
        (enc([address("n", "e1", "10.0.0.1/24", v6=True)]), "invalid", "is not an IPv6 prefix"),
        (enc([address("n", "e1", "2001:db8::1/64")]), "invalid", "is not an IPv4 prefix"),
    ],
)
def test_messages_that_cannot_be_processed_are_dead_with_a_reason(
    value: bytes, kind: str, reason: str
) -> None:
    result = NetworkMapper().map(value, pos(7))
    assert result.rows == {}
    (dead,) = result.dead
    assert dead.kind == kind and reason in dead.reason, dead
    assert dead.value == value and dead.position.offset == 7


def test_a_tombstone_is_dead() -> None:
    (dead,) = NetworkMapper().map(None, pos()).dead
    assert dead.kind == "empty" and dead.value == b""


def test_no_timestamp_anywhere_is_dead() -> None:
    (dead,) = NetworkMapper().map(enc(EXAMPLE), pos(ts=0)).dead
    assert dead.kind == "invalid_timestamp"


@pytest.mark.parametrize(
    "ts",
    [
        1_753_000_000,  # epoch seconds: would land in January 1970 as nanoseconds
        1_753_000_000_000,  # milliseconds
        -3,
        "yesterday",
        "2025-07-19T12:34:56",  # no zone
    ],
)
def test_an_unusable_update_timestamp_is_dead_as_invalid_timestamp(ts: object) -> None:
    (dead,) = (
        NetworkMapper().map(enc([{**stats("n", "e1", in_octets=1), "timestamp": ts}]), pos()).dead
    )
    assert dead.kind == "invalid_timestamp", dead
    assert dead.reason.startswith("$[0].timestamp:") and "epoch nanoseconds" in dead.reason


def test_update_timestamps_win_over_the_message_timestamp() -> None:
    m = NetworkMapper()
    ns = mapped(m, [stats("n", "e1", T0 + 5, in_octets=1)], pos(ts=1))
    assert ns.rows["interface_counters"][0][0] == T0 + 5
    text = mapped(
        m, [{**stats("n", "e2", in_octets=1), "timestamp": "2025-07-19T12:34:56.5+02:00"}]
    )
    assert text.rows["interface_counters"][0][0] == T0 - 2 * 3600 * SEC + SEC // 2


def test_one_bad_entry_makes_the_whole_message_dead_and_leaves_state_alone() -> None:
    m = NetworkMapper()
    m.commit(mapped(m, [stats("n", "e1", T0, in_octets=0)]))
    bad = m.map(
        enc([stats("n", "e1", T0 + SEC, in_octets=100), stats("n", "e2", in_octets=-1)]), pos(1)
    )
    assert bad.rows == {} and len(bad.dead) == 1
    m.commit(bad)
    good = mapped(m, [stats("n", "e1", T0 + 10 * SEC, in_octets=1000)])
    (row,) = good.rows["interface_counters"]
    assert col("interface_counters", row, "in_bits_per_sec") == pytest.approx(800.0)  # from T0


# -- state: pending chain, commit, rollback, replay, restore --------------------------------
SAMPLES = [
    enc([stats("n", "e1", T0 + i * 10 * SEC, in_octets=i * 1000, out_octets=i * 10)])
    for i in range(4)
]


def test_uncommitted_results_are_the_baseline_of_the_next_until_rolled_back() -> None:
    m = NetworkMapper()
    first = m.map(SAMPLES[0], pos(0))
    second = m.map(SAMPLES[1], pos(1))  # first is in flight, not yet durable
    assert second.rows["interface_counters"][0][11] == pytest.approx(800.0)
    assert m.pending == 2
    assert m.rollback() == 2 and m.pending == 0
    # after the rollback the state is the committed one: nothing
    replay = m.map(SAMPLES[0], pos(0))
    assert replay.rows == first.rows


def test_replaying_from_the_committed_state_gives_identical_rows() -> None:
    m = NetworkMapper()
    m.commit(m.map(SAMPLES[0], pos(0)))
    a = m.map(SAMPLES[1], pos(1))
    b = m.map(SAMPLES[2], pos(2))
    m.rollback()  # e.g. the partition was revoked before a and b were durable
    assert m.map(SAMPLES[1], pos(1)).rows == a.rows
    assert m.map(SAMPLES[2], pos(2)).rows == b.rows


def test_rollback_of_one_partition_keeps_the_others_pending() -> None:
    m = NetworkMapper()
    p0 = m.map(enc([stats("a", "e1", T0, in_octets=0)]), pos(0, partition=0))
    m.map(enc([stats("b", "e1", T0, in_octets=0)]), pos(0, partition=1))
    assert m.rollback("network-data", 1) == 1 and m.pending == 1
    a_next = m.map(enc([stats("a", "e1", T0 + SEC, in_octets=100)]), pos(1, partition=0))
    b_next = m.map(enc([stats("b", "e1", T0 + SEC, in_octets=100)]), pos(1, partition=1))
    assert a_next.rows["interface_counters"][0][11] == pytest.approx(800.0)
    assert b_next.rows["interface_counters"][0][11] is None  # its baseline was rolled back
    m.commit(p0)
    assert m.pending == 2


def test_commit_is_what_survives_a_full_rollback() -> None:
    m = NetworkMapper()
    m.commit(m.map(SAMPLES[0], pos(0)))
    m.map(SAMPLES[1], pos(1))
    m.rollback()
    nxt = m.map(SAMPLES[2], pos(2))
    assert nxt.rows["interface_counters"][0][11] == pytest.approx(800.0)  # 2000 B in 20 s


def test_committing_twice_or_after_a_rollback_changes_nothing() -> None:
    m = NetworkMapper()
    r0 = m.map(SAMPLES[0], pos(0))
    m.rollback()
    m.commit(r0)  # rolled back: ignored
    assert m.map(SAMPLES[1], pos(1)).rows["interface_counters"][0][11] is None


def test_the_same_input_from_the_same_state_gives_identical_rows() -> None:
    def run() -> list[dict[str, list[tuple[object, ...]]]]:
        m = NetworkMapper()
        out = []
        for i, s in enumerate(SAMPLES):
            r = m.map(s, pos(i))
            out.append(r.rows)
            m.commit(r)
        return out

    assert run() == run()


def test_map_chunk_equals_mapping_one_by_one() -> None:
    class Msg:
        def __init__(self, i: int, value: bytes) -> None:
            self.topic, self.partition, self.offset, self.timestamp_ns = "network-data", 0, i, T0
            self.value = value

    values = [*SAMPLES, b"junk", enc(EXAMPLE)]
    chunk = NetworkMapper().map_chunk(Msg(i, v) for i, v in enumerate(values))
    single = NetworkMapper()
    rows: dict[str, list[tuple[object, ...]]] = {}
    dead = []
    for i, v in enumerate(values):
        r = single.map(v, pos(i))
        for k, rs in r.rows.items():
            rows.setdefault(k, []).extend(rs)
        dead += [(d.position.offset, d.kind) for d in r.dead]
    assert chunk.rows == rows and chunk.messages == len(values)
    assert [(d.position.offset, d.kind) for d in chunk.dead] == dead == [(4, "decode")]


def test_restore_from_store_rows_continues_rates_and_first_seen() -> None:
    m = NetworkMapper()
    r = mapped(
        m,
        [
            address("n", "system0", "10.0.0.7/32"),
            status("n", "e1", admin_status="up", oper_status="up"),
            stats("n", "e1", T0, in_octets=1000, out_octets=5),
        ],
    )

    # what RESTORE_SQL returns from ClickHouse: 64-bit integers as strings
    def as_store(rows: list[tuple[object, ...]]) -> list[list[object]]:
        return [[str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in x]
                for x in rows]  # fmt: skip

    fresh = NetworkMapper()
    fresh.restore(
        as_store(r.rows["nodes"]),
        as_store(r.rows["interfaces"]),
        as_store(r.rows["interface_counters"]),
    )
    nxt = mapped(fresh, [stats("n", "e1", T0 + 10 * SEC, in_octets=2000)], pos(1, T0 + 10 * SEC))
    (row,) = nxt.rows["interface_counters"]
    assert col("interface_counters", row, "in_bits_per_sec") == pytest.approx(800.0)
    assert nxt.rows["nodes"] == [("n", "10.0.0.7", None, T0, T0 + 10 * SEC)]
    assert nxt.rows["interfaces"][0][3:5] == ("up", "up")


def test_restore_sql_reads_latest_state_in_column_order() -> None:
    assert RESTORE_SQL["nodes"].endswith("FROM `nodes` FINAL")
    assert "toUnixTimestamp64Nano(`first_seen`)" in RESTORE_SQL["nodes"]
    assert RESTORE_SQL["interface_counters"].endswith(
        "ORDER BY `time` DESC LIMIT 1 BY `node_name`, `interface_name`"
    )


def test_republished_topics_and_their_tables() -> None:
    assert REPUBLISH_TOPICS == {
        "nodes": ("KAFKA_NODE_TOPIC", "node-data"),
        "interfaces": ("KAFKA_INTERFACE_TOPIC", "interface-data"),
        "addresses": ("KAFKA_ADDRESS_TOPIC", "address-data"),
    }
    for t in (NODES_TABLE, INTERFACES_TABLE, ADDRESSES_TABLE, INTERFACE_COUNTERS_TABLE):
        assert t.entity_column == "node_name"  # the republished records' key
    assert ADDRESSES_TABLE.column_names[1:] == (
        "node_name",
        "interface_name",
        "subinterface_index",
        "prefix",
        "family",
        "origin",
        "status",
    )
    assert tuple(INTERFACES_TABLE.column_names[5:]) == COUNTERS


# -- property: anything maps without an exception, into rows, dead or counted paths -----------
_names = st.text(st.characters(codec="utf-8"), max_size=6)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), _names
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_names, inner, max_size=3)
    ),
    max_leaves=8,
)
_wild_keys = st.fixed_dictionaries(
    {},
    optional={
        "node_name": st.one_of(st.sampled_from(["leaf1", "spine1", ""]), _json),
        "interface_name": st.one_of(st.sampled_from(["system0", "mgmt0", "ethernet-1/1"]), _json),
        "subinterface_index": st.one_of(st.sampled_from([0, "0", "7", -1, "x"]), _json),
        "address_ip-prefix": st.one_of(
            st.sampled_from(["10.0.0.1/31", "2001:db8::1/64", "fe80::1", "300.1.1.1/8"]), _json
        ),
    },
)
_good_keys = st.fixed_dictionaries(
    {
        "node_name": st.sampled_from(["leaf1", "spine1"]),
        "interface_name": st.sampled_from(["system0", "mgmt0", "ethernet-1/1"]),
    },
    optional={
        "subinterface_index": st.sampled_from([0, "0", "7"]),
        "address_ip-prefix": st.sampled_from(["10.0.0.1/31", "2001:db8::1/64", "10.9.0.0/16"]),
    },
)
_field_names = st.sampled_from(
    [*COUNTERS, "admin_status", "oper_status", "origin", "status", "other"]
)
_good_fields = st.dictionaries(
    _field_names,
    st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(["up", "down", "12"])),
    min_size=1,
    max_size=6,
)
_wild_fields = st.dictionaries(
    _field_names, st.one_of(st.integers(-5, 2**65), st.sampled_from(["-3", "x"]), _json), max_size=5
)
_entry = st.one_of(
    st.fixed_dictionaries({"keys": _good_keys, "fields": _good_fields}),
    st.fixed_dictionaries({"keys": _good_keys, "fields": _good_fields}),
    st.fixed_dictionaries(
        {"keys": st.one_of(_good_keys, _wild_keys), "fields": st.one_of(_good_fields, _wild_fields)}
    ),
    _json,
)
_paths = st.sampled_from([STATUS_PATH, STATISTICS_PATH, IPV4_PATH, IPV6_PATH, ".node.srl.other"])
_good_update = st.fixed_dictionaries(
    {"path": _paths, "entries": st.lists(_entry, min_size=1, max_size=3)},
    optional={"timestamp": st.integers(946_684_800_000_000_000, 2**63 - 1)},
)
_wild_update = st.fixed_dictionaries(
    {"path": st.one_of(_paths, _json)},
    optional={
        "entries": st.one_of(st.lists(_entry, max_size=3), _json),
        "timestamp": st.one_of(st.integers(-5, 2**64), st.sampled_from(["2025-07-19T12:00:00Z"])),
    },
)
_update = st.one_of(_good_update, _good_update, _wild_update)
_message = st.one_of(
    st.lists(_update, min_size=1, max_size=4).map(enc),
    st.lists(_update, min_size=1, max_size=4).map(enc),
    _update.map(enc),
    _json.map(enc),
    st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_message, min_size=1, max_size=5))
def test_any_message_maps_into_rows_dead_or_counted_unknown_paths(values: list[bytes]) -> None:
    m = NetworkMapper()
    for i, value in enumerate(values):
        result = m.map(value, pos(i, T0 + i * SEC))
        assert result.messages == 1
        has_rows = bool(result.rows)
        assert has_rows + bool(result.dead) + result.ignored == 1
        for name, rows in result.rows.items():
            for row in rows:
                assert len(row) == len(TABLES[name].columns)
        for row in result.rows.get("interface_counters", []):
            for rate in row[9:15]:
                assert rate is None or 0.0 <= rate <= 1e13  # type: ignore[operator]
        m.commit(result)


def test_a_sample_older_than_the_retention_is_dead_not_deleted_by_the_ttl() -> None:
    import time

    from orbitstream.core.times import TimeWindow

    window = TimeWindow.of(3600, 30 * 86400)
    mapper = NetworkMapper(window=window)
    now = time.time_ns()
    old = now - 31 * 86400 * 10**9
    result = mapper.map(
        enc([stats("leaf1", "e1", now, in_packets=5), stats("leaf1", "e1", old)]), pos()
    )
    assert result.rows == {}
    (dead,) = result.dead
    assert dead.kind == "invalid_timestamp"
    assert "$[1].timestamp" in dead.reason and "ORBITSTREAM_TIMESTAMP_MAX_AGE" in dead.reason
    # without its own timestamp, the message's timestamp counts
    result = mapper.map(enc([stats("leaf1", "e1", in_packets=5)]), pos(ts=old))
    assert result.rows == {} and result.dead[0].kind == "invalid_timestamp"
    kept = mapper.map(enc([stats("leaf1", "e1", in_packets=5)]), pos(ts=now - 86400 * 10**9))
    assert kept.dead == [] and len(kept.rows["interface_counters"]) == 1
