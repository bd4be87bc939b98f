"""A seeded SR Linux-style leaf/spine fabric producing ``network-data`` messages.

Pure and deterministic: the same :class:`FabricConfig` (seed included) yields the same
bytes. Each round (one ``sample_interval_secs`` of simulated time) every node sends one
message: a JSON array of path updates in the shape of docs/kafka.md, with a gNMI
style ``timestamp`` (epoch ns) on each update, keyed by node name.

The fabric: ``spine1..S`` and ``leaf1..L``; every leaf has an uplink
``ethernet-1/{48+s}`` to every spine (``ethernet-1/{l}`` on the spine), ``access_ports``
edge ports ``ethernet-1/1..A``, ``mgmt0`` and ``system0``. Addresses: ``system0``
``10.0.0.n/32`` and ``2001:db8::n/128``; ``mgmt0`` ``172.20.20.n/24`` (DHCP) and
``2001:db8:20::n/64``; fabric links a ``/31`` and a ``/127`` per link; access ports a
``/24`` each (and a ``/64`` when ``ipv6``).

Behaviour: per direction, utilization follows a mean-reverting random walk below 90 % of
the port speed; octets, packets (700-1,200 B average) and rare errors accumulate. A
fabric link goes down (both ends ``oper_status: down``, no traffic) with
``link_down_rate`` per link per round, for 3-12 rounds. A node's counters reset to zero
(reboot / clear) with ``counter_reset_rate`` per node per round. An access port's address
moves to a new subnet with ``address_change_rate`` per port per round. Addresses are
reported in the first round, every ``address_every`` rounds and when they change. A share
``unknown_path_rate`` of messages carries an extra ``.node.srl.system.information``
update; a share ``malformed_rate`` is replaced by a malformed message (truncated JSON, a
negative counter, a bad prefix, a missing key, a non-list ``entries``, an empty array),
marked in :attr:`SimMessage.malformed`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from orbitstream.pipelines.network import (
    COUNTERS,
    IPV4_PATH,
    IPV6_PATH,
    STATISTICS_PATH,
    STATUS_PATH,
)
from orbitstream.simulate.publisher import (
    NotAhead,
    PublishStats,
    SimMessage,
    ensure_topic,
    publish,
)

__all__ = [
    "MALFORMED_KINDS",
    "FabricConfig",
    "NetworkSimulator",
    "simulate_network",
]

DEFAULT_START_NS = 1_752_928_496_000_000_000  # 2025-07-19T12:34:56Z
UNKNOWN_PATH = ".node.srl.system.information"
MALFORMED_KINDS = (
    "truncated",
    "negative_counter",
    "bad_prefix",
    "missing_key",
    "entries_not_list",
    "empty",
)
_ENCODE = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class FabricConfig:
    """The simulated fabric and its behaviour (rates are probabilities per round).

    :param malformed_rate: share of messages replaced by a malformed one.
    """

    spines: int = 2
    leaves: int = 4
    access_ports: int = 4
    seed: int = 0
    sample_interval_secs: float = 10.0
    port_speed_gbps: float = 100.0
    link_down_rate: float = 0.005
    counter_reset_rate: float = 0.001
    address_change_rate: float = 0.002
    address_every: int = 6
    unknown_path_rate: float = 0.05
    malformed_rate: float = 0.0
    ipv6: bool = True
    start_ns: int = DEFAULT_START_NS

    def __post_init__(self) -> None:
        if self.spines < 1 or self.leaves < 1 or self.access_ports < 0:
            raise ValueError("a fabric needs at least one spine and one leaf")
        if self.sample_interval_secs <= 0:
            raise ValueError("sample_interval_secs must be positive")
        for name in (
            "link_down_rate",
            "counter_reset_rate",
            "address_change_rate",
            "unknown_path_rate",
            "malformed_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    @property
    def nodes(self) -> int:
        return self.spines + self.leaves


@dataclass(slots=True)
class _Port:
    name: str
    speed_bps: float
    counted: bool = True
    link: int | None = None  # index into the fabric links
    util: list[float] = field(default_factory=lambda: [0.0, 0.0])  # in, out
    packet_bytes: float = 900.0
    counters: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (prefix, origin)
    generation: int = 0


@dataclass(slots=True)
class _Node:
    name: str
    index: int
    ports: list[_Port]


class NetworkSimulator:
    """Generates the fabric's messages round by round (deterministic per config)."""

    def __init__(self, config: FabricConfig, clock: Callable[[], int] | None = None) -> None:
        """:param clock: epoch ns now; with one, a round's time never runs ahead of it
        (see :class:`~orbitstream.simulate.publisher.NotAhead`) and the counters move by
        the time that really passed since the previous round."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._nodes: list[_Node] = []
        self._link_down: list[int] = []  # rounds left down, per fabric link
        self._round = 0
        self._cap = NotAhead(clock)
        self._capped = clock is not None
        self._prev_t: int | None = None
        self._build()

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self._nodes]

    def _build(self) -> None:
        cfg = self.config
        rng = self._rng
        speed = cfg.port_speed_gbps * 1e9
        spines = [_Node(f"spine{s}", s, []) for s in range(1, cfg.spines + 1)]
        leaves = [_Node(f"leaf{m}", cfg.spines + m, []) for m in range(1, cfg.leaves + 1)]
        link = 0
        for leaf_no, leaf in enumerate(leaves, start=1):
            for p in range(1, cfg.access_ports + 1):
                port = _Port(f"ethernet-1/{p}", speed / 4)  # 25G edge ports
                port.addresses = self._access_addresses(leaf_no, p, 0)
                leaf.ports.append(port)
            for spine_no, spine in enumerate(spines, start=1):
                v4 = ipaddress.ip_network(f"10.1.{link // 128}.{(link % 128) * 2}/31")
                v6 = ipaddress.ip_network(f"2001:db8:1:{link:x}::/127")
                a4, b4 = (f"{ip}/31" for ip in v4)
                a6, b6 = (f"{ip}/127" for ip in v6)
                s_port = _Port(f"ethernet-1/{leaf_no}", speed, link=link)
                l_port = _Port(f"ethernet-1/{48 + spine_no}", speed, link=link)
                s_port.addresses = [(a4, "static")] + ([(a6, "static")] if cfg.ipv6 else [])
                l_port.addresses = [(b4, "static")] + ([(b6, "static")] if cfg.ipv6 else [])
                spine.ports.append(s_port)
                leaf.ports.append(l_port)
                link += 1
        self._link_down = [0] * link
        for node in (*spines, *leaves):
            n = node.index
            mgmt = _Port("mgmt0", 1e9)
            mgmt.addresses = [(f"172.20.20.{n + 1}/24", "dhcp")]
            system = _Port("system0", 0.0, counted=False)
            system.addresses = [(f"10.0.0.{n}/32", "static")]
            if cfg.ipv6:
                mgmt.addresses.append((f"2001:db8:20::{n + 1:x}/64", "dhcp"))
                system.addresses.append((f"2001:db8::{n:x}/128", "static"))
            node.ports += [mgmt, system]
            for port in node.ports:
                port.util = [rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)]
                port.packet_bytes = rng.uniform(700.0, 1200.0)
            self._nodes.append(node)

    def _access_addresses(self, leaf: int, port: int, generation: int) -> list[tuple[str, str]]:
        third = (port + 16 * generation) % 256
        out = [(f"10.{100 + leaf}.{third}.1/24", "static")]
        if self.config.ipv6:
            out.append((f"2001:db8:{100 + leaf:x}:{third:x}::1/64", "static"))
        return out

    # -- rounds ------------------------------------------------------------------------
    def messages(self, count: int | None = None) -> Iterator[SimMessage]:
        """The next ``count`` messages (endless when ``None``), one per node per round."""
        produced = 0
        while count is None or produced < count:
            for msg in self._next_round():
                if count is not None and produced >= count:
                    return
                produced += 1
                yield msg

    def _next_round(self) -> list[SimMessage]:
        cfg = self.config
        rng = self._rng
        dt_secs = cfg.sample_interval_secs
        t = self._cap(cfg.start_ns + int(self._round * dt_secs * 1e9))
        if self._capped and self._prev_t is not None:
            dt_secs = (t - self._prev_t) / 1e9
        self._prev_t = t
        first = self._round == 0
        report_addresses = first or self._round % max(1, cfg.address_every) == 0
        self._round += 1
        # links going down / coming back
        for i, left in enumerate(self._link_down):
            if left > 0:
                self._link_down[i] = left - 1
            elif not first and rng.random() < cfg.link_down_rate:
                self._link_down[i] = rng.randint(3, 12)
        out: list[SimMessage] = []
        for node in self._nodes:
            reset = not first and rng.random() < cfg.counter_reset_rate
            changed = False
            for port in node.ports:
                access = port.name.startswith("ethernet-1/") and port.link is None
                if access and not first and rng.random() < cfg.address_change_rate:
                    port.generation += 1
                    leaf_no = node.index - cfg.spines
                    port.addresses = self._access_addresses(
                        leaf_no, int(port.name.rsplit("/", 1)[1]), port.generation
                    )
                    changed = True
                self._advance(port, dt_secs, reset, first)
            updates = self._updates(node, t, report_addresses or changed)
            if rng.random() < cfg.unknown_path_rate:
                updates.append(
                    {
                        "path": UNKNOWN_PATH,
                        "timestamp": t,
                        "entries": [
                            {
                                "keys": {"node_name": node.name},
                                "fields": {"version": "v24.3.1", "uptime_secs": self._round},
                            }
                        ],
                    }
                )
            malformed: str | None = None
            if rng.random() < cfg.malformed_rate:
                malformed = rng.choice(MALFORMED_KINDS)
                value = self._malform(updates, malformed)
            else:
                value = _ENCODE(updates)
            out.append(SimMessage(node.name.encode(), value, t, malformed))
        return out

    def _is_up(self, port: _Port) -> bool:
        return port.link is None or self._link_down[port.link] == 0

    def _advance(self, port: _Port, dt_secs: float, reset: bool, first: bool) -> None:
        if reset:
            port.counters = [0] * len(COUNTERS)
        if not port.counted or first or not self._is_up(port):
            return
        rng = self._rng
        c = port.counters
        for direction in (0, 1):
            u = port.util[direction]
            u += 0.15 * (0.3 - u) + rng.gauss(0.0, 0.05)  # mean-reverting walk
            u = min(0.9, max(0.01, u))
            port.util[direction] = u
            octets = int(u * port.speed_bps / 8 * dt_secs)
            packets = max(1, int(octets / port.packet_bytes)) if octets else 0
            c[2 + direction] += octets
            c[direction] += packets
            # error bursts as often per second of real time, however close the rounds
            if rng.random() < 0.02 * min(1.0, dt_secs / self.config.sample_interval_secs):
                c[4 + direction] += rng.randint(1, 20)

    def _updates(self, node: _Node, t: int, with_addresses: bool) -> list[dict[str, Any]]:
        status = []
        stats = []
        v4: list[dict[str, Any]] = []
        v6: list[dict[str, Any]] = []
        for port in node.ports:
            keys = {"node_name": node.name, "interface_name": port.name}
            up = self._is_up(port)
            status.append(
                {
                    "keys": keys,
                    "fields": {"admin_status": "up", "oper_status": "up" if up else "down"},
                }
            )
            if port.counted:
                stats.append(
                    {"keys": keys, "fields": dict(zip(COUNTERS, port.counters, strict=True))}
                )
            if with_addresses:
                for prefix, origin in port.addresses:
                    entry = {
                        "keys": {**keys, "subinterface_index": "0", "address_ip-prefix": prefix},
                        "fields": {
                            "origin": origin,
                            "status": "preferred" if up else "inaccessible",
                        },
                    }
                    (v6 if ":" in prefix else v4).append(entry)
        updates: list[dict[str, Any]] = [
            {"path": STATUS_PATH, "timestamp": t, "entries": status},
            {"path": STATISTICS_PATH, "timestamp": t, "entries": stats},
        ]
        if v4:
            updates.append({"path": IPV4_PATH, "timestamp": t, "entries": v4})
        if v6:
            updates.append({"path": IPV6_PATH, "timestamp": t, "entries": v6})
        return updates

    def _malform(self, updates: list[dict[str, Any]], kind: str) -> bytes:
        rng = self._rng
        if kind == "truncated":
            data = _ENCODE(updates)
            return data[: rng.randint(1, len(data) - 1)]
        if kind == "empty":
            return b"[]"
        bad = msgspec.json.decode(_ENCODE(updates))  # a deep copy
        if kind == "negative_counter":
            entry = rng.choice(bad[1]["entries"])
            entry["fields"][rng.choice(COUNTERS)] = -rng.randint(1, 10**6)
        elif kind == "bad_prefix":
            bad.append(
                {
                    "path": IPV4_PATH,
                    "entries": [
                        {
                            "keys": {
                                "node_name": bad[0]["entries"][0]["keys"]["node_name"],
                                "interface_name": "ethernet-1/1",
                                "subinterface_index": "0",
                                "address_ip-prefix": f"10.0.{rng.randint(256, 999)}.1/24",
                            },
                            "fields": {"origin": "static"},
                        }
                    ],
                }
            )
        elif kind == "missing_key":
            entry = rng.choice(bad[0]["entries"])
            del entry["keys"]["interface_name"]
        elif kind == "entries_not_list":
            bad[1]["entries"] = "unavailable"
        else:  # pragma: no cover - MALFORMED_KINDS is closed
            raise ValueError(kind)
        return _ENCODE(bad)


def simulate_network(
    bootstrap: str,
    *,
    topic: str = "network-data",
    config: FabricConfig | None = None,
    rate: float | None = None,
    duration_secs: float | None = None,
    max_messages: int | None = None,
    partitions: int | None = None,
    start_ns: int | None = None,
    producer_config: dict[str, Any] | None = None,
) -> PublishStats:
    """Publish the fabric's messages to ``topic`` (``orbitstream simulate network``).

    :param config: the fabric (its ``start_ns`` is replaced by ``start_ns``).
    :param start_ns: simulated start time (epoch ns; default: now).
    :param rate: messages per second; ``nodes / sample_interval_secs`` keeps the
        simulated clock in step with real time. Faster (a higher rate, or none), rounds
        come closer together than the interval: starting now, a sample is never stamped
        later than the moment it is sent.
    :param partitions: create the topic with this many partitions when it is missing.
    """
    cfg = dataclasses.replace(
        config or FabricConfig(), start_ns=time.time_ns() if start_ns is None else start_ns
    )
    if partitions is not None:
        ensure_topic(bootstrap, topic, partitions)
    sim = NetworkSimulator(cfg, clock=time.time_ns if start_ns is None else None)
    return publish(
        sim.messages(max_messages),
        bootstrap=bootstrap,
        topic=topic,
        rate=rate,
        duration_secs=duration_secs,
        max_messages=max_messages,
        producer_config=producer_config,
    )
