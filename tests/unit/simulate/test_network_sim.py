"""The fabric simulator: deterministic by seed, and realistic as the mapper sees it."""

from __future__ import annotations

from collections import defaultdict

import pytest

from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.network import INTERFACE_COUNTERS_TABLE, NetworkMapper
from orbitstream.simulate.network import (
    MALFORMED_KINDS,
    UNKNOWN_PATH,
    FabricConfig,
    NetworkSimulator,
)
from orbitstream.simulate.publisher import SimMessage

RATE = {
    name: INTERFACE_COUNTERS_TABLE.index(name) for name in INTERFACE_COUNTERS_TABLE.column_names
}


def run(config: FabricConfig, rounds: int) -> list[SimMessage]:
    return list(NetworkSimulator(config).messages(rounds * config.nodes))


def mapped(msgs: list[SimMessage]) -> tuple[dict[str, list[tuple[object, ...]]], NetworkMapper]:
    mapper = NetworkMapper()
    rows: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    for i, m in enumerate(msgs):
        result = mapper.map(m.value, MessagePosition("network-data", 0, i, m.timestamp_ns))
        assert (m.malformed is None) == (not result.dead), (m.malformed, result.dead)
        for name, table_rows in result.rows.items():
            rows[name] += table_rows
        mapper.commit(result)
    return rows, mapper


def port_speed(node: str, iface: str) -> float:
    if iface == "mgmt0":
        return 1e9
    n = int(iface.rsplit("/", 1)[1])
    return 25e9 if node.startswith("leaf") and n <= 48 else 100e9  # access ports are 25G


def peer(node: str, iface: str) -> tuple[str, str]:
    """The other end of a fabric link (spineS ethernet-1/L <-> leafL ethernet-1/(48+S))."""
    n = int(iface.rsplit("/", 1)[1])
    if node.startswith("spine"):
        return f"leaf{n}", f"ethernet-1/{48 + int(node[5:])}"
    assert n > 48, "only fabric links go down"
    return f"spine{n - 48}", f"ethernet-1/{int(node[4:])}"


def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs() -> None:
    cfg = FabricConfig(seed=7, malformed_rate=0.1, link_down_rate=0.05)
    assert run(cfg, 30) == run(cfg, 30)
    assert run(FabricConfig(seed=8, malformed_rate=0.1, link_down_rate=0.05), 30) != run(cfg, 30)


def test_one_message_per_node_per_round_keyed_by_node() -> None:
    cfg = FabricConfig(spines=2, leaves=3, sample_interval_secs=5.0)
    sim = NetworkSimulator(cfg)
    msgs = list(sim.messages(3 * cfg.nodes))
    names = ["spine1", "spine2", "leaf1", "leaf2", "leaf3"]
    assert sim.node_names == names
    assert [m.key.decode() for m in msgs] == names * 3
    assert [m.timestamp_ns for m in msgs[:: cfg.nodes]] == [
        cfg.start_ns + r * 5 * 10**9 for r in range(3)
    ]


def test_every_good_message_maps_and_every_malformed_one_is_dead_at_the_chosen_rate() -> None:
    cfg = FabricConfig(spines=2, leaves=3, malformed_rate=0.2, seed=1)
    msgs = run(cfg, 400)  # 2,000 messages
    bad = [m for m in msgs if m.malformed is not None]
    assert 328 <= len(bad) <= 472  # 20 % ± 4 standard deviations
    assert {m.malformed for m in bad} == set(MALFORMED_KINDS)
    mapped(msgs)  # asserts good <-> rows, malformed <-> dead


def test_nodes_get_their_system_and_management_ips() -> None:
    rows, _ = mapped(run(FabricConfig(spines=2, leaves=2), 2))
    latest = {r[0]: r for r in rows["nodes"]}
    assert latest["spine1"][1:3] == ("10.0.0.1", "172.20.20.2")
    assert latest["leaf2"][1:3] == ("10.0.0.4", "172.20.20.5")


def test_rates_stay_within_port_speed_and_links_go_down_on_both_ends() -> None:
    cfg = FabricConfig(spines=2, leaves=4, link_down_rate=0.05, seed=3)
    msgs = run(cfg, 120)
    rows, _ = mapped(msgs)
    bits = 0
    for r in rows["interface_counters"]:
        for name in ("in_bits_per_sec", "out_bits_per_sec"):
            rate = r[RATE[name]]
            if rate is not None:
                bits += 1
                assert 0.0 <= rate <= 0.9 * port_speed(str(r[1]), str(r[2]))  # type: ignore[operator]
    assert bits > 0.9 * 2 * len(rows["interface_counters"]) * 119 / 120  # all but round one
    # status per (time, node, interface); fabric links are down on both ends together
    down = {(r[0], r[1], r[2]) for r in rows["interfaces"] if r[4] == "down"}
    assert down, "no link went down"
    for t, node, iface in down:
        assert (t, *peer(str(node), str(iface))) in down
    # a down interface carries no traffic
    down_rates = [
        r[RATE["in_bits_per_sec"]]
        for r in rows["interface_counters"]
        if (r[0], r[1], r[2]) in down and r[RATE["in_bits_per_sec"]] is not None
    ]
    assert down_rates and all(v == 0.0 for v in down_rates)


def test_counter_resets_are_flagged_and_never_give_negative_rates() -> None:
    rows, _ = mapped(run(FabricConfig(spines=1, leaves=2, counter_reset_rate=0.05, seed=4), 200))
    resets = [r for r in rows["interface_counters"] if r[-1] is True]
    assert resets
    for r in rows["interface_counters"]:
        assert all(v is None or v >= 0 for v in r[9:15])  # type: ignore[operator]


def test_access_addresses_change_and_ipv6_is_reported() -> None:
    cfg = FabricConfig(spines=1, leaves=2, address_change_rate=0.05, address_every=1000, seed=5)
    rows, _ = mapped(run(cfg, 200))
    prefixes: dict[tuple[object, object], set[object]] = defaultdict(set)
    for r in rows["addresses"]:
        if r[5] == "IPv4":
            prefixes[(r[1], r[2])].add(r[4])
    assert any(len(p) > 1 for p in prefixes.values())
    assert {r[5] for r in rows["addresses"]} == {"IPv4", "IPv6"}
    assert any(r[4] == "2001:db8::1/128" for r in rows["addresses"])
    # reported on change only (address_every is large): fewer rows than rounds x addresses
    assert len(rows["addresses"]) < 200 * len(prefixes)
    v4_only, _ = mapped(run(FabricConfig(spines=1, leaves=1, ipv6=False), 2))
    assert {r[5] for r in v4_only["addresses"]} == {"IPv4"}


def test_unknown_paths_come_at_their_rate_and_are_tolerated() -> None:
    msgs = run(FabricConfig(spines=1, leaves=1, unknown_path_rate=0.5, seed=6), 200)
    with_unknown = sum(UNKNOWN_PATH.encode() in m.value for m in msgs)
    assert 150 <= with_unknown <= 250  # 50 % of 400, ± 5 sd
    mapped(msgs)


@pytest.mark.parametrize(
    "kwargs",
    [{"spines": 0}, {"leaves": 0}, {"sample_interval_secs": 0}, {"malformed_rate": 1.5}],
)
def test_bad_configs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FabricConfig(**kwargs)  # type: ignore[arg-type]


class StepClock:
    """Epoch ns that advance ``step_ns`` per reading (a sender faster than the schedule)."""

    def __init__(self, start_ns: int, step_ns: int) -> None:
        self.now = start_ns
        self.step = step_ns

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def test_sending_faster_than_the_schedule_never_stamps_a_sample_ahead_of_the_clock() -> None:
    """``simulate network -r 100`` on 6 nodes sends 16 rounds a second of a 10 s
    interval: without the cap, its samples soon lie hours in the future. With the clock,
    each round is stamped at most "now", and the counters move by the time that really
    passed, so the rates stay those of the links."""
    cfg = FabricConfig(spines=2, leaves=4, seed=3)
    clock = StepClock(cfg.start_ns, 60_000_000)  # 60 ms of real time per round
    sim = NetworkSimulator(cfg, clock=clock)
    msgs: list[SimMessage] = []
    for _ in range(40):
        batch = list(sim.messages(cfg.nodes))
        assert {m.timestamp_ns for m in batch} == {batch[0].timestamp_ns}  # one time a round
        assert batch[0].timestamp_ns <= clock.now
        msgs += batch
    stamps = sorted({m.timestamp_ns for m in msgs})
    assert len(stamps) == 40
    assert stamps[-1] - stamps[0] < 40 * 61_000_000  # not 40 × 10 s
    rows, _ = mapped(msgs)
    rates = [
        float(str(r[RATE["in_bits_per_sec"]]))
        for r in rows["interface_counters"]
        if r[RATE["in_bits_per_sec"]] is not None
    ]
    assert rates and max(rates) > 1e8
    for r in rows["interface_counters"]:
        rate = r[RATE["in_bits_per_sec"]]
        if rate is not None:
            assert 0.0 <= rate <= 0.9 * port_speed(str(r[1]), str(r[2]))  # type: ignore[operator]
