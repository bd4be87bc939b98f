"""A fake Starlink Enterprise telemetry API, for tests, benchmarks and demos.

It implements what shared/docs/starlink-api.md (§5.1) documents, over real HTTP on the
project's own server (:class:`~orbitstream.sources.http.server.HttpServer`):

- **Token endpoint** ``POST /api/auth/connect/token`` (aliases
  ``/api/public/auth/connect/token`` and ``/auth/connect/token``): OAuth client
  credentials as form fields (``grant_type``, ``client_id``, ``client_secret``) or an HTTP
  Basic header; answers ``{"access_token", "expires_in", "token_type": "Bearer",
  "scope"}``. Wrong credentials: ``{"error": "invalid_client"}`` with 400 (form) or 401
  (Basic); another grant type: 400 ``unsupported_grant_type``.
- **Stream endpoint** ``POST /api/public/v2/telemetry/stream``: requires a bearer token
  this fake issued and that has not expired (else 401); the body is a JSON object with
  only ``batchSize`` and ``maxLingerMs`` (integers 1..65000, defaults 1000 / 15000; an
  empty body means the defaults); anything else, e.g. ``accountNumber``, is a 400. Each
  client id has its own read position in one shared stream, advanced on every 200. The
  answer waits (long-poll) until ``batchSize`` rows are queued for that client or
  ``maxLingerMs`` has passed, and carries at most ``batchSize`` rows. An empty batch is
  the full envelope with ``values: []``.
- **A generated fleet** (:class:`Fleet`, seeded): UserTerminals (``u``), Routers (``r``)
  whose ``DishId`` is a terminal's ``DeviceId``, IpAllocs (``i``) rows with ``ip-`` ids,
  refreshed every 5 minutes and on change, tombstones (three empty arrays, then silence
  until new addresses), alerts that open and clear (UserTerminal and Router codes, plus
  a code the served alert map does not name), rows of all types interleaved, UT
  timestamps on whole 15-s boundaries, router timestamps with full ns precision, IP
  timestamps with ms precision, exact duplicate rows, IpAllocs echoes a few ms apart,
  nulls in router client stats when there are no Wi-Fi clients, 64-bit integers
  (``UtcTimestampNs``, ``H3CellId``) as exact JSON integers.
- **Per-response variations** (config switches): columns reordered between responses
  (``DeviceType`` stays first), unknown extra columns, the legacy keys
  ``aggregateValues`` / ``LastPartitionUtcTimestampNs``, ``columnNamesByDeviceType: {}`` on
  empty batches, and alert maps that change between responses
  (:meth:`FakeStarlink.change_alert_map` re-points, renames and drops codes).
- **Fault switches** (:meth:`FakeStarlink.inject`, or random rates in the config): 401
  mid-stream (the presented token is revoked), 403, 404, 429 with or without
  ``Retry-After``, 500, 503, a stall (no answer for a while, then 504, position kept),
  truncated JSON (position kept, or advanced: the rows are then lost, as they would be
  with a real server), a non-JSON body, token endpoint 429/500/503, forced token
  expiry (:meth:`FakeStarlink.expire_tokens`), an optional per-client rate limit.

Everything is recorded: :attr:`FakeStarlink.served` holds each 200 response with exactly
the rows, column lists and alert maps it carried (so a test can check that every served
row landed exactly once), :attr:`FakeStarlink.requests` every request with its status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import enum
import logging
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote_plus

import msgspec

from orbitstream.sources.http.server import HttpServer, Request, Response, Router

__all__ = [
    "DEVICE_TYPES",
    "IP_COLUMNS",
    "ROUTER_ALERTS",
    "ROUTER_COLUMNS",
    "STREAM_PATH",
    "TOKEN_PATHS",
    "UT_ALERTS",
    "UT_COLUMNS",
    "FakeStarlink",
    "FakeStarlinkConfig",
    "Fault",
    "Fleet",
    "FleetConfig",
    "RequestRecord",
    "ServedResponse",
    "parse_fault_rates",
    "serve_fake_starlink",
]

logger = logging.getLogger(__name__)

TOKEN_PATHS: Final = (
    "/api/auth/connect/token",
    "/api/public/auth/connect/token",
    "/auth/connect/token",
)
STREAM_PATH: Final = "/api/public/v2/telemetry/stream"

TICK_NS: Final = 15_000_000_000  # UserTerminal and Router rows are 15-s aggregates
MAX_BATCH: Final = 65_000

UT_COLUMNS: Final = (
    "DeviceType",
    "UtcTimestampNs",
    "DeviceId",
    "DownlinkThroughput",
    "UplinkThroughput",
    "PingDropRateAvg",
    "PingLatencyMsAvg",
    "ObstructionPercentTime",
    "Uptime",
    "SignalQuality",
    "H3CellId",
    "SecondsUntilSwupdateRebootPossible",
    "RunningSoftwareVersion",
    "CountryCode",
    "InTerritorialWaters",
    "ActiveAlerts",
)
_CLIENT_STATS: Final = tuple(
    f"Clients{band}{what}{stat}"
    for band, what in (
        ("2Ghz", "RxRateMbps"),
        ("2Ghz", "TxRateMbps"),
        ("5Ghz", "RxRateMbps"),
        ("5Ghz", "TxRateMbps"),
        ("2Ghz", "SignalStrength"),
        ("5Ghz", "SignalStrength"),
    )
    for stat in ("Min", "Max", "Avg")
)
ROUTER_COLUMNS: Final = (
    "DeviceType",
    "UtcTimestampNs",
    "DeviceId",
    "WifiUptimeS",
    "WifiSoftwareVersion",
    "WifiHardwareVersion",
    "WifiIsRepeater",
    "WifiHopsFromController",
    "WifiIsBypassed",
    "InternetPingDropRate",
    "InternetPingLatencyMs",
    "WifiPopPingDropRate",
    "WifiPopPingLatencyMs",
    "DishPingDropRate",
    "DishPingLatencyMs",
    "Clients",
    "Clients2Ghz",
    "Clients5Ghz",
    "ClientsEth",
    "WanRxBytes",
    "WanTxBytes",
    *_CLIENT_STATS,
    "DishId",
    "ActiveAlerts",
)
IP_COLUMNS: Final = ("DeviceType", "UtcTimestampNs", "DeviceId", "Ipv4", "Ipv6Ue", "Ipv6Cpe")
COLUMNS: Final[dict[str, tuple[str, ...]]] = {"u": UT_COLUMNS, "r": ROUTER_COLUMNS, "i": IP_COLUMNS}
# Unknown columns a response may carry (names from a Go plugin; never seen in a payload).
EXTRA_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "u": ("PowerInputVoltage", "TiltAngleDeg", "GpsValidSats", "ObstructionPercentValid"),
    "r": ("ApiVersion",),
}
DEVICE_TYPES: Final = {
    "u": "UserTerminal",
    "r": "Router",
    "d": "UserTerminalDataUsage",
    "i": "IpAllocs",
}
UT_ALERTS: Final[dict[int, str]] = {
    50: "ethernet_slow_10mbps",
    51: "ethernet_slow_100mbps",
    52: "power_supply_thermal_throttling",
    53: "actuator_motor_stuck",
    54: "mast_not_vertical",
    55: "disabled_no_active_service_line",
    56: "disabled_too_far_from_service_address",
    60: "disabled_moving_too_fast",
    61: "power_disconnect_detected",
    62: "pop_change",
    63: "unable_to_align",
    66: "high_time_obstruction",
    80: "thermal_shutdown",
    81: "thermal_throttling",
    82: "software_update_reboot_pending",
    97: "data_overage_rate_limited",
}
ROUTER_ALERTS: Final[dict[int, str]] = {
    52: "sandbox_disabled",
    54: "geo_fenced",
    55: "offline_networks_disabled",
}
# Active codes are drawn from these; 64 is listed only in the docs, never in a served map.
_UT_CODE_POOL: Final = (*UT_ALERTS, 64)
_ROUTER_CODE_POOL: Final = tuple(ROUTER_ALERTS)
_COUNTRIES: Final = ("US", "US", "US", "CA", "MX", "GB", "AU", "XZ")


# -- the fleet -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The generated fleet.

    :param terminals: number of UserTerminals.
    :param routers_per_terminal: mean routers per terminal (0 to 2 each; extra ones are
        mesh repeaters).
    :param seed: the fleet's random seed: the same seed gives the same stream.
    :param start_ns: time of the first tick (epoch ns, rounded down to 15 s); ``None``
        puts the first tick at the wall clock when the fleet is created.
    :param alert_open_probability: per device and tick, the chance a new code opens.
    :param alert_clear_probability: per open code and tick, the chance it clears.
    :param ip_refresh_ticks: IpAllocs rows are re-sent this often (20 ticks = 5 min).
    :param ip_change_probability: per terminal and tick, new addresses (sent at once).
    :param tombstone_probability: per terminal and tick, addresses released (tombstone).
    :param duplicate_probability: per row, an exact copy is emitted too.
    :param ip_echo_probability: per IpAllocs row, 1-2 copies a few ms later.
    """

    terminals: int = 20
    routers_per_terminal: float = 1.0
    seed: int = 1
    start_ns: int | None = None
    alert_open_probability: float = 0.02
    alert_clear_probability: float = 0.2
    ip_refresh_ticks: int = 20
    ip_change_probability: float = 0.005
    tombstone_probability: float = 0.003
    duplicate_probability: float = 0.01
    ip_echo_probability: float = 0.2


@dataclass(slots=True)
class _Terminal:
    device_id: str
    h3: int
    software: str
    country: str
    downlink: float
    uplink: float
    latency: float
    obstruction: float
    uptime: int
    reboot_deferral: int
    alerts: list[int]
    ips: tuple[list[str], list[str], list[str]] | None
    ip_due: int
    silent_until: int = 0


@dataclass(slots=True)
class _Router:
    device_id: str
    dish: str
    software: str
    hardware: str
    repeater: bool
    hops: int
    uptime: int
    rx: int
    tx: int
    alerts: list[int]


def _h3_cell(rng: random.Random) -> int:
    """A resolution-5 H3 cell index (mode 1, res 5, a base cell, 5 digits, unused = 7)."""
    cell = (1 << 59) | (5 << 52) | (rng.randrange(122) << 45)
    for i in range(15):
        digit = rng.randrange(7) if i < 5 else 7
        cell |= digit << (42 - 3 * i)
    return cell


class Fleet:
    """Generates the stream, one 15-s tick at a time (deterministic for a seed).

    Rows are lists in the canonical column order of :data:`COLUMNS`.
    """

    def __init__(self, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        start = cfg.start_ns if cfg.start_ns is not None else time.time_ns()
        self.start_ns = start - start % TICK_NS
        self.ticks = 0
        rng = self.rng
        self.terminals: list[_Terminal] = []
        self.routers: list[_Router] = []
        for n in range(cfg.terminals):
            dev = f"ut{rng.getrandbits(32):08x}-{rng.getrandbits(32):08x}-{n:08x}"
            self.terminals.append(
                _Terminal(
                    device_id=dev,
                    h3=_h3_cell(rng),
                    software=f"2025.12.{rng.randint(1, 28):02d}.mr{rng.randint(60000, 79999)}",
                    country=rng.choice(_COUNTRIES),
                    downlink=rng.uniform(20, 300),
                    uplink=rng.uniform(5, 40),
                    latency=rng.uniform(20, 60),
                    obstruction=rng.choice((0.0, 0.0, rng.uniform(0, 0.05))),
                    uptime=rng.randrange(0, 1_000_000),
                    reboot_deferral=rng.choice((-1, 259_200)),
                    alerts=[],
                    ips=self._new_ips(n),
                    ip_due=rng.randrange(cfg.ip_refresh_ticks or 1),
                )
            )
            whole, frac = divmod(cfg.routers_per_terminal, 1.0)
            count = int(whole) + (1 if rng.random() < frac else 0)
            for hop in range(count):
                self.routers.append(
                    _Router(
                        device_id=f"Router-{rng.getrandbits(96):024X}",
                        dish=dev,
                        software=f"2025.11.{rng.randint(1, 28):02d}.mr{rng.randint(60000, 79999)}",
                        hardware=rng.choice(("v1", "v3", "v4")),
                        repeater=hop > 0,
                        hops=hop,
                        uptime=rng.randrange(0, 1_000_000),
                        rx=rng.randrange(10**9, 10**11),
                        tx=rng.randrange(10**8, 10**10),
                        alerts=[],
                    )
                )
        self._ip_serial = cfg.terminals

    def _new_ips(self, n: int) -> tuple[list[str], list[str], list[str]]:
        a, b = divmod(n, 250)
        return (
            [f"203.0.{113 + a % 100}.{b + 1}"],
            [f"2001:db8:{n % 65536:x}:{self.rng.randrange(256):x}00::/64"],
            [f"2001:db8:{(n + 4096) % 65536:x}:{self.rng.randrange(256):x}00::/56"],
        )

    @property
    def now_ns(self) -> int:
        """The timestamp of the next tick."""
        return self.start_ns + self.ticks * TICK_NS

    def _alerts(self, active: list[int], pool: Sequence[int]) -> list[int]:
        cfg = self.config
        rng = self.rng
        kept = [c for c in active if rng.random() >= cfg.alert_clear_probability]
        if rng.random() < cfg.alert_open_probability:
            code = rng.choice(pool)
            if code not in kept:
                kept.append(code)
        return kept

    def tick(self) -> list[list[Any]]:
        """The rows of the next 15-s tick, interleaved."""
        cfg = self.config
        rng = self.rng
        ts = self.now_ns
        k = self.ticks
        rows: list[list[Any]] = []
        for t in self.terminals:
            t.alerts = self._alerts(t.alerts, _UT_CODE_POOL)
            t.uptime += 15
            t.downlink = max(0.0, t.downlink + rng.gauss(0, 8))
            t.uplink = max(0.0, t.uplink + rng.gauss(0, 2))
            t.latency = min(200.0, max(18.0, t.latency + rng.gauss(0, 2)))
            drop = 0 if rng.random() < 0.7 else round(rng.random() * 0.05, 6)
            quality = 1 if rng.random() < 0.3 else round(rng.uniform(0.6, 1.0), 4)
            territorial: bool | None = (
                None if rng.random() < 0.02 else (t.country != "XZ" and rng.random() < 0.05)
            )
            rows.append(
                [
                    "u",
                    ts,
                    t.device_id,
                    round(t.downlink, 5),
                    round(t.uplink, 5),
                    drop,
                    round(t.latency),
                    # a partly obstructed view varies (trees in the wind, a slow sweep of
                    # the sky): ±50 % around its level, no random draw (the seeded fleet
                    # stays the same); a clear view stays 0
                    round(t.obstruction * (1 + 0.5 * math.sin(k / 6 + len(rows))), 6)
                    if t.obstruction
                    else 0,
                    t.uptime,
                    quality,
                    t.h3,
                    t.reboot_deferral,
                    t.software,
                    t.country,
                    territorial,
                    list(t.alerts),
                ]
            )
            # IP allocations: periodic refresh, changes, tombstones
            if t.silent_until > k:
                pass
            elif t.ips is not None and rng.random() < cfg.tombstone_probability:
                t.ips = None
                t.silent_until = k + rng.randint(4, 40)
                rows.append(self._ip_row(t, ts, ([], [], [])))
            else:
                due = t.ip_due <= k
                if t.ips is None or rng.random() < cfg.ip_change_probability:
                    self._ip_serial += 1
                    t.ips = self._new_ips(self._ip_serial)
                    due = True
                if due:
                    t.ip_due = k + max(1, cfg.ip_refresh_ticks)
                    row = self._ip_row(t, ts, t.ips)
                    rows.append(row)
                    if rng.random() < cfg.ip_echo_probability:
                        for _ in range(rng.randint(1, 2)):
                            echo = list(row)
                            echo[1] = row[1] + rng.randint(1, 9) * 1_000_000
                            rows.append(echo)
        for r in self.routers:
            r.alerts = self._alerts(r.alerts, _ROUTER_CODE_POOL)
            r.uptime += 15
            r.rx += rng.randrange(0, 50_000_000)
            r.tx += rng.randrange(0, 5_000_000)
            c2, c5, eth = rng.randint(0, 4), rng.randint(0, 6), rng.randint(0, 2)
            stats: list[Any]
            if c2 + c5 == 0:
                stats = [None] * len(_CLIENT_STATS)  # no Wi-Fi clients: all null
            else:
                stats = []
                for base, count in ((72, c2), (72, c2), (433, c5), (433, c5), (-55, c2), (-60, c5)):
                    if count == 0:
                        stats += [None, None, None]
                        continue
                    a, b = base * rng.uniform(0.6, 1.0), base * rng.uniform(1.0, 1.4)
                    lo, hi = round(min(a, b), 2), round(max(a, b), 2)
                    stats += [lo, hi, round((lo + hi) / 2, 3)]
                if rng.random() < 0.05:
                    stats[rng.randrange(len(stats))] = None  # a stat missing on its own
            rows.append(
                [
                    "r",
                    ts + rng.randrange(TICK_NS),
                    r.device_id,
                    r.uptime,
                    r.software,
                    r.hardware,
                    r.repeater,
                    r.hops,
                    rng.random() < 0.02,
                    0 if rng.random() < 0.8 else round(rng.random() * 0.02, 5),
                    round(rng.uniform(18, 60), 3),
                    0,
                    round(rng.uniform(15, 50), 2),
                    0,
                    round(rng.uniform(0.2, 2.0), 2),
                    c2 + c5 + eth,
                    c2,
                    c5,
                    eth,
                    r.rx,
                    r.tx,
                    *stats,
                    r.dish,
                    list(r.alerts),
                ]
            )
        for i in range(len(rows)):
            if rng.random() < cfg.duplicate_probability:
                rows.append(list(rows[i]))
        rng.shuffle(rows)
        self.ticks += 1
        return rows

    def _ip_row(
        self, t: _Terminal, ts: int, ips: tuple[list[str], list[str], list[str]]
    ) -> list[Any]:
        ms = ts - self.rng.randrange(1, 15_000) * 1_000_000
        return ["i", ms, "ip-" + t.device_id, list(ips[0]), list(ips[1]), list(ips[2])]


# -- recording -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedResponse:
    """One 200 stream response, exactly as sent.

    :param number: 1-based count over all 200 stream responses of this fake.
    :param position: the client's read position before this response.
    :param rows: the rows as sent (positional, in ``columns`` order, extras included).
    :param columns: ``columnNamesByDeviceType`` as sent.
    :param alert_names: ``metadata.enums.AlertsByDeviceType`` as sent.
    :param lost: the body was sent truncated and the position advanced anyway: these
        rows cannot reach any client.
    """

    number: int
    client_id: str
    position: int
    rows: list[list[Any]]
    columns: dict[str, list[str]]
    alert_names: dict[str, dict[str, str]]
    batch_size: int
    linger_ms: int
    body: bytes | None = None
    lost: bool = False

    def named_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(type code, {column: value})`` per row."""
        for row in self.rows:
            code = row[0]
            yield code, dict(zip(self.columns[code], row, strict=True))


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: ``endpoint`` is ``token`` or ``stream``; ``fault`` the injected one;
    ``at`` when it arrived and ``answered`` when it was answered (``time.monotonic()``)."""

    endpoint: str
    client_id: str | None
    status: int
    at: float
    answered: float
    fault: str | None = None
    rows: int = 0


class Fault(enum.Enum):
    """Fault switches for :meth:`FakeStarlink.inject`."""

    STREAM_401 = "stream_401"  # the presented token is revoked, the answer is 401
    STREAM_403 = "stream_403"
    STREAM_404 = "stream_404"
    STREAM_429 = "stream_429"
    STREAM_500 = "stream_500"
    STREAM_503 = "stream_503"
    STREAM_STALL = "stream_stall"  # no answer for ``stall_secs``, then 504; position kept
    STREAM_TRUNCATE = "stream_truncate"  # 200 with half a body; ``advance`` loses the rows
    STREAM_INVALID_JSON = "stream_invalid_json"  # 200 with an HTML error page
    TOKEN_429 = "token_429"
    TOKEN_500 = "token_500"
    TOKEN_503 = "token_503"

    @property
    def endpoint(self) -> str:
        return self.value.split("_", 1)[0]


_STATUS: Final = {
    Fault.STREAM_401: 401,
    Fault.STREAM_403: 403,
    Fault.STREAM_404: 404,
    Fault.STREAM_429: 429,
    Fault.STREAM_500: 500,
    Fault.STREAM_503: 503,
    Fault.TOKEN_429: 429,
    Fault.TOKEN_500: 500,
    Fault.TOKEN_503: 503,
}


@dataclass(slots=True)
class _Pending:
    fault: Fault
    count: int
    retry_after: float | str | None
    stall_secs: float
    advance: bool


def parse_fault_rates(text: str) -> dict[Fault, float]:
    """``"stream_429=0.05,stream_500=0.01"`` (or ``429=0.05``) -> rates per fault.

    :raises ValueError: an unknown fault name or a rate outside 0..1.
    """
    rates: dict[Fault, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=RATE, got {part!r}")
        name = name.strip().lower()
        if not name.startswith(("stream_", "token_")):
            name = "stream_" + name
        try:
            fault = Fault(name)
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {name!r} (known: {known})") from None
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate of {name} must be within 0..1, got {value}")
        rates[fault] = rate
    return rates


# -- the server ------------------------------------------------------------------------


@dataclass(slots=True)
class FakeStarlinkConfig:
    """How the fake behaves.

    :param clients: accepted service accounts, client id -> secret.
    :param expires_in: token lifetime in seconds, as answered.
    :param backlog_ticks: ticks generated before the server starts (the stream's backlog;
        with the fleet's ``start_ns`` unset, the backlog ends at the current time).
    :param tick_interval_secs: wall time between generated ticks after start; ``None``
        generates nothing more (tests extend the stream with :meth:`FakeStarlink.extend`).
    :param max_rows: stop generating once the stream holds this many rows.
    :param reorder_columns: shuffle every type's columns (after ``DeviceType``) per response.
    :param extra_columns: add unknown columns to UserTerminal and Router rows.
    :param legacy_fields: add ``aggregateValues``, ``aggregateColumnNamesByDeviceType``
        (null) and ``metadata.LastPartitionUtcTimestampNs``.
    :param empty_column_lists: an empty batch carries ``columnNamesByDeviceType: {}``.
    :param rate_limit_per_min: stream requests per client and minute before 429.
    :param random_faults: per stream/token request, the chance of each fault.
    :param fault_retry_after: ``Retry-After`` (seconds) of random 429 and 503 answers;
        ``None`` sends none (the client then backs off on its own schedule).
    :param fault_stall_secs: how long a random stall lasts before its 504.
    :param alert_map_every: change the alert map (:meth:`FakeStarlink.change_alert_map`)
        after every this many 200 responses; ``None``: never.
    :param seed: seed of the per-response choices (column orders, extras, random faults).
    :param record_bodies: keep each served body in :attr:`ServedResponse.body`.
    """

    clients: Mapping[str, str] = field(default_factory=lambda: {"orbitstream-fake": "fake-secret"})
    expires_in: int = 900
    fleet: FleetConfig = field(default_factory=FleetConfig)
    backlog_ticks: int = 0
    tick_interval_secs: float | None = None
    max_rows: int | None = None
    reorder_columns: bool = False
    extra_columns: bool = False
    legacy_fields: bool = False
    empty_column_lists: bool = False
    rate_limit_per_min: int | None = None
    random_faults: Mapping[Fault, float] = field(default_factory=dict)
    fault_retry_after: float | None = 1.0
    fault_stall_secs: float = 2.0
    alert_map_every: int | None = None
    seed: int = 7
    record_bodies: bool = False


_ENCODER = msgspec.json.Encoder()


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """The management API's ServiceResponse envelope (the stream's own is undocumented)."""
    body = msgspec.json.encode(
        {
            "errors": [{"memberNames": [], "errorMessage": message}],
            "warnings": [],
            "information": [],
            "isValid": False,
        }
    )
    return Response(status, body, headers=headers or [])


def _oauth_error(status: int, error: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, msgspec.json.encode({"error": error}), headers=headers or [])


class FakeStarlink:
    """The fake API server. ``await start()``, point a client at :attr:`token_url` and
    :attr:`stream_url` with :attr:`client_id` / :attr:`client_secret`, ``await stop()``.
    """

    def __init__(self, config: FakeStarlinkConfig | None = None) -> None:
        self.config = config or FakeStarlinkConfig()
        fleet = self.config.fleet
        if fleet.start_ns is None:  # the backlog ends now; live ticks follow the wall clock
            start = time.time_ns() - self.config.backlog_ticks * TICK_NS
            fleet = dataclasses.replace(fleet, start_ns=start)
        self.fleet = Fleet(fleet)
        self.stream: list[list[Any]] = []
        self._encoded: list[bytes] = []  # each stream row as JSON, for fast plain responses
        self.positions: dict[str, int] = {}
        self.served: list[ServedResponse] = []
        self.requests: list[RequestRecord] = []
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client id, expires at)
        self.alert_maps: dict[str, dict[int, str]] = {
            "u": dict(UT_ALERTS),
            "r": dict(ROUTER_ALERTS),
        }
        self.alert_map_version = 1
        self._answered = 0  # 200 responses with their rows (alert_map_every counts them)
        self._faults: deque[_Pending] = deque()
        self._rng = random.Random(self.config.seed)
        self._grew = asyncio.Event()
        self._stopping = asyncio.Event()
        self._recent: dict[str, deque[float]] = {}
        self._server: HttpServer | None = None
        self._generator: asyncio.Task[None] | None = None
        self._active: set[asyncio.Task[Any]] = set()
        self.host = "127.0.0.1"
        self.port = 0
        if self.config.backlog_ticks:
            self.extend(self.config.backlog_ticks)

    # -- addresses ----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATHS[0]

    @property
    def stream_url(self) -> str:
        return self.base_url + STREAM_PATH

    @property
    def client_id(self) -> str:
        """The first configured client id."""
        return next(iter(self.config.clients))

    @property
    def client_secret(self) -> str:
        return self.config.clients[self.client_id]

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the port."""
        router = Router()
        for path in TOKEN_PATHS:
            router.add("POST", path, self._token)
        router.add("POST", STREAM_PATH, self._stream)
        self._server = HttpServer(router)
        self.host = host
        self.port = await self._server.start(host, port)
        if self.config.tick_interval_secs is not None:
            self._generator = asyncio.create_task(self._generate(self.config.tick_interval_secs))
        logger.info(
            "Fake Starlink API listening.",
            extra={"url": self.base_url, "client_id": self.client_id, "rows": len(self.stream)},
        )
        return self.port

    async def stop(self) -> None:
        """Stop generating, end waiting requests (503), close the server."""
        self._stopping.set()
        self._grew.set()
        if self._generator is not None:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
        if self._server is not None:
            await self._server.close(timeout_secs=5.0)
            self._server = None

    async def __aenter__(self) -> FakeStarlink:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _generate(self, interval: float) -> None:
        limit = self.config.max_rows
        while limit is None or len(self.stream) < limit:
            await asyncio.sleep(interval)
            self.extend(1)

    # -- control --------------------------------------------------------------------
    def extend(self, ticks: int = 1) -> int:
        """Generate ``ticks`` more ticks into the stream; returns the rows added."""
        added = 0
        limit = self.config.max_rows
        for _ in range(ticks):
            rows = self.fleet.tick()
            if limit is not None:
                rows = rows[: max(0, limit - len(self.stream))]
            self.stream.extend(rows)
            self._encoded.extend(map(_ENCODER.encode, rows))
            added += len(rows)
        self._wake()
        return added

    def push(self, rows: Sequence[list[Any]]) -> None:
        """Append hand-made rows (canonical column order of their type)."""
        copies = [list(r) for r in rows]
        self.stream.extend(copies)
        self._encoded.extend(map(_ENCODER.encode, copies))
        self._wake()

    def _wake(self) -> None:
        self._grew.set()
        self._grew = asyncio.Event()

    def inject(
        self,
        fault: Fault,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
        stall_secs: float = 60.0,
        advance: bool = False,
    ) -> None:
        """Answer the next ``count`` requests of the fault's endpoint with it (in order).

        :param retry_after: ``Retry-After`` value for 429/503 (seconds or an HTTP date).
        :param stall_secs: how long a stall lasts before the 504.
        :param advance: a truncated response still advances the position (rows lost).
        """
        if count > 0:
            self._faults.append(_Pending(fault, count, retry_after, stall_secs, advance))

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> int:
        """Injected fault answers not given yet."""
        return sum(p.count for p in self._faults)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (the next stream request gets 401)."""
        for token, (client, _) in list(self.tokens.items()):
            self.tokens[token] = (client, 0.0)

    def change_alert_map(self) -> None:
        """The next responses name alerts differently: a code is re-pointed to another
        alert's name, one is renamed, one disappears from the map (it becomes unknown)."""
        self.alert_map_version += 1
        v = self.alert_map_version
        ut = self.alert_maps["u"]
        codes = sorted(ut)
        a, b = codes[v % len(codes)], codes[(v * 7 + 3) % len(codes)]
        if a != b:
            ut[a], ut[b] = ut[b], ut[a]
        ut[82] = f"software_update_reboot_pending_v{v}"
        dropped = codes[(v * 3 + 1) % len(codes)]
        if dropped != 82:
            ut.pop(dropped, None)
        router = self.alert_maps["r"]
        router[54] = f"geo_fenced_v{v}"

    def position(self, client_id: str | None = None) -> int:
        return self.positions.get(client_id or self.client_id, 0)

    def available(self, client_id: str | None = None) -> int:
        """Rows queued for a client."""
        return len(self.stream) - self.position(client_id)

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Requests recorded for an endpoint (optionally with one status)."""
        return sum(
            1
            for r in self.requests
            if r.endpoint == endpoint and (status is None or r.status == status)
        )

    def served_rows(self, client_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Every row served to clients (lost responses excluded), by name."""
        out: list[tuple[str, dict[str, Any]]] = []
        for resp in self.served:
            if resp.lost or (client_id is not None and resp.client_id != client_id):
                continue
            out.extend(resp.named_rows())
        return out

    # -- handlers -------------------------------------------------------------------
    def _record(
        self,
        endpoint: str,
        client: str | None,
        status: int,
        fault: Fault | None = None,
        rows: int = 0,
        *,
        at: float,
    ) -> None:
        self.requests.append(
            RequestRecord(
                endpoint,
                client,
                status,
                at,
                time.monotonic(),
                fault.value if fault else None,
                rows,
            )
        )

    def _next_fault(self, endpoint: str) -> _Pending | None:
        for pending in self._faults:
            if pending.fault.endpoint == endpoint:
                pending.count -= 1
                if pending.count <= 0:
                    self._faults.remove(pending)
                return pending
        for fault, rate in self.config.random_faults.items():
            if fault.endpoint == endpoint and self._rng.random() < rate:
                retry = self.config.fault_retry_after if _STATUS.get(fault) in (429, 503) else None
                return _Pending(fault, 1, retry, self.config.fault_stall_secs, False)
        return None

    @staticmethod
    def _retry_after(pending: _Pending) -> list[tuple[str, str]]:
        value = pending.retry_after
        if value is None:
            return []
        return [("Retry-After", value if isinstance(value, str) else f"{value:g}")]

    def _token(self, request: Request) -> Response:
        arrived = time.monotonic()
        form = {k: v[-1] for k, v in parse_qs(request.body.decode("latin-1")).items()}
        basic = False
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            basic = True
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                self._record("token", None, 401, at=arrived)
                return _oauth_error(401, "invalid_client")
            client_id, _, secret = (unquote_plus(part) for part in decoded.partition(":"))
        if form.get("grant_type") != "client_credentials":
            self._record("token", client_id, 400, at=arrived)
            return _oauth_error(400, "unsupported_grant_type")
        if not client_id or self.config.clients.get(client_id) != secret or secret is None:
            status = 401 if basic else 400
            self._record("token", client_id, status, at=arrived)
            headers = [("WWW-Authenticate", 'Basic realm="starlink"')] if basic else []
            return _oauth_error(status, "invalid_client", headers)
        pending = self._next_fault("token")
        if pending is not None:
            status = _STATUS[pending.fault]
            self._record("token", client_id, status, pending.fault, at=arrived)
            return _oauth_error(status, "temporarily_unavailable", self._retry_after(pending))
        token = secrets.token_urlsafe(32)
        self.tokens[token] = (client_id, time.monotonic() + self.config.expires_in)
        self._record("token", client_id, 200, at=arrived)
        return Response(
            200,
            msgspec.json.encode(
                {
                    "access_token": token,
                    "expires_in": self.config.expires_in,
                    "token_type": "Bearer",
                    "scope": "telemetry.read",
                }
            ),
        )

    def _authorize(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        token = auth[7:].strip()
        entry = self.tokens.get(token)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    @staticmethod
    def _parse_body(body: bytes) -> tuple[int, int] | str:
        if not body.strip():
            return 1000, 15000
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return "The request body is not valid JSON."
        if not isinstance(doc, dict):
            return "The request body must be a JSON object."
        unknown = sorted(set(doc) - {"batchSize", "maxLingerMs"})
        if unknown:
            return f"Unknown properties are not allowed: {', '.join(unknown)}."
        out = []
        for name, default in (("batchSize", 1000), ("maxLingerMs", 15000)):
            value = doc.get(name, default)
            if type(value) is not int or not 1 <= value <= MAX_BATCH:
                return f"{name} must be an integer from 1 to {MAX_BATCH}."
            out.append(value)
        return out[0], out[1]

    def _rate_limited(self, client: str) -> float | None:
        limit = self.config.rate_limit_per_min
        if limit is None:
            return None
        now = time.monotonic()
        window = self._recent.setdefault(client, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            return max(0.0, window[0] + 60.0 - now)
        window.append(now)
        return None

    async def _stream(self, request: Request) -> Response:
        arrived = time.monotonic()
        client = self._authorize(request)
        if client is None:
            self._record("stream", None, 401, at=arrived)
            return _error(401, "Unauthorized: the bearer token is missing, unknown or expired.")
        parsed = self._parse_body(request.body)
        if isinstance(parsed, str):
            self._record("stream", client, 400, at=arrived)
            return _error(400, parsed)
        batch_size, linger_ms = parsed
        wait = self._rate_limited(client)
        if wait is not None:
            self._record("stream", client, 429, at=arrived)
            return _error(429, "Too many requests.", [("Retry-After", str(max(1, round(wait))))])
        pending = self._next_fault("stream")
        fault = pending.fault if pending is not None else None
        if pending is not None and fault in _STATUS:
            status = _STATUS[pending.fault]
            if fault is Fault.STREAM_401:
                token = request.headers.get("authorization", "")[7:].strip()
                self.tokens.pop(token, None)
            self._record("stream", client, status, fault, at=arrived)
            return _error(
                status, f"Injected fault {pending.fault.value}.", self._retry_after(pending)
            )
        if pending is not None and fault is Fault.STREAM_STALL:
            await self._sleep(pending.stall_secs)
            self._record("stream", client, 504, fault, at=arrived)
            return _error(504, "Gateway timeout.")
        if fault is Fault.STREAM_INVALID_JSON:
            self._record("stream", client, 200, fault, at=arrived)
            return Response(
                200,
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="application/json",
            )
        await self._wait_rows(client, batch_size, linger_ms)
        if self._stopping.is_set():
            self._record("stream", client, 503, at=arrived)
            return _error(503, "Shutting down.")
        start = self.positions.get(client, 0)
        rows = self.stream[start : start + batch_size]
        body, sent, columns, alerts = self._render(rows, start)
        if fault is Fault.STREAM_TRUNCATE:
            assert pending is not None
            cut = body[: max(1, len(body) // 2)]
            self._record("stream", client, 200, fault, len(rows), at=arrived)
            if pending.advance:
                self.positions[client] = start + len(rows)
                self._serve(client, start, sent, columns, alerts, batch_size, linger_ms, cut, True)
            return Response(200, cut)
        self.positions[client] = start + len(rows)
        self._record("stream", client, 200, None, len(rows), at=arrived)
        self._serve(client, start, sent, columns, alerts, batch_size, linger_ms, body, False)
        return Response(200, body)

    def _serve(
        self,
        client: str,
        start: int,
        rows: list[list[Any]],
        columns: dict[str, list[str]],
        alerts: dict[str, dict[str, str]],
        batch_size: int,
        linger_ms: int,
        body: bytes,
        lost: bool,
    ) -> None:
        every = self.config.alert_map_every
        if not lost:
            self._answered += 1
            if every and self._answered % every == 0:
                self.change_alert_map()  # the next response names the codes anew
        self.served.append(
            ServedResponse(
                number=len(self.served) + 1,
                client_id=client,
                position=start,
                rows=rows,
                columns=columns,
                alert_names=alerts,
                batch_size=batch_size,
                linger_ms=linger_ms,
                body=body if self.config.record_bodies else None,
                lost=lost,
            )
        )

    async def _sleep(self, secs: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), secs)

    async def _wait_rows(self, client: str, batch_size: int, linger_ms: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger_ms / 1000
        while not self._stopping.is_set():
            if len(self.stream) - self.positions.get(client, 0) >= batch_size:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), remaining)

    def _render(
        self, rows: list[list[Any]], start: int
    ) -> tuple[bytes, list[list[Any]], dict[str, list[str]], dict[str, dict[str, str]]]:
        cfg = self.config
        rng = self._rng
        alerts = {
            code: {str(c): name for c, name in sorted(names.items())}
            for code, names in self.alert_maps.items()
        }
        columns: dict[str, list[str]]
        if not rows and cfg.empty_column_lists:
            columns = {}
        else:
            columns = {code: list(cols) for code, cols in COLUMNS.items()}
        sent = rows
        if columns and (cfg.reorder_columns or cfg.extra_columns):
            perms: dict[str, list[int]] = {}
            extras: dict[str, tuple[str, ...]] = {}
            for code, cols in COLUMNS.items():
                order = list(range(1, len(cols)))
                if cfg.reorder_columns:
                    rng.shuffle(order)
                perms[code] = [0, *order]
                extras[code] = EXTRA_COLUMNS.get(code, ()) if cfg.extra_columns else ()
                columns[code] = [cols[i] for i in perms[code]] + list(extras[code])
            sent = []
            for row in rows:
                code = row[0]
                out = [row[i] for i in perms[code]]
                if extras[code]:
                    out += self._extra_values(code)
                sent.append(out)
        doc: dict[str, Any] = {
            "data": {"values": [], "columnNamesByDeviceType": columns},
            "metadata": {"enums": {"DeviceType": DEVICE_TYPES, "AlertsByDeviceType": alerts}},
        }
        if cfg.legacy_fields:
            doc["data"]["aggregateValues"] = None
            doc["data"]["aggregateColumnNamesByDeviceType"] = None
            doc["metadata"]["LastPartitionUtcTimestampNs"] = self.fleet.now_ns
        # rows as sent unchanged were encoded once, when generated: splice them in
        encoded = self._encoded[start : start + len(rows)] if sent is rows else None
        if encoded is None:
            encoded = list(map(_ENCODER.encode, sent))
        head, _, tail = _ENCODER.encode(doc).partition(b'"values":[]')
        body = b"".join((head, b'"values":[', b",".join(encoded), b"]", tail))
        return body, sent, columns, alerts

    def _extra_values(self, code: str) -> list[Any]:
        rng = self._rng
        if code == "u":
            return [
                round(rng.uniform(30, 56), 2),
                round(rng.uniform(0, 30), 1),
                rng.randint(0, 24),
                rng.random() < 0.9,
            ]
        return [rng.choice(("v2", None))]


async def serve_fake_starlink(
    config: FakeStarlinkConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[FakeStarlink], None] | None = None,
) -> FakeStarlink:
    """Run a fake until ``stop`` is set (forever without one; cancel to end).

    For ``orbitstream simulate starlink --serve``: the CLI builds the config from its
    flags and passes ``on_ready`` to print the URLs and credentials.

    :returns: the stopped fake, with its records.
    """
    fake = FakeStarlink(config)
    await fake.start(host, port)
    try:
        if on_ready is not None:
            on_ready(fake)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await fake.stop()
    return fake
