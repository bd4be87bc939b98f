"""Seeded vehicles running delivery sessions, producing ``sessions-topic`` messages.

Pure and deterministic: the same :class:`SessionsConfig` (seed included) yields the same
bytes. Each vehicle starts somewhere within ``radius_km`` of ``center`` and runs sessions
back to back: ``started`` at its position (with a destination 0.5-8 km away, inside the
area), ``en_route`` pings every ``ping_interval_secs`` (±20 %) along a grid route (one
leg north/south, one east/west, like city blocks) at a per-session speed within
``speed_kmh`` slowed by traffic and the odd red light, with a few metres of GPS noise, then
``delivered`` at the destination — or, for a share ``cancel_rate`` of sessions,
``cancelled`` part way — then idles before the next order. Messages come in time order
across vehicles, keyed by session id, in the shape of docs/kafka.md. A share
``malformed_rate`` is replaced by a malformed message (truncated JSON, a missing id, an
unknown status, an impossible coordinate, an unparseable timestamp, a non-object), marked
in :attr:`SimMessage.malformed`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from orbitstream.simulate.publisher import (
    NotAhead,
    PublishStats,
    SimMessage,
    ensure_topic,
    publish,
)

__all__ = ["MALFORMED_KINDS", "SessionsConfig", "SessionsSimulator", "simulate_sessions"]

DEFAULT_START_NS = 1_752_928_496_000_000_000  # 2025-07-19T12:34:56Z
KM_PER_DEG_LAT = 111.32
MALFORMED_KINDS = (
    "truncated",
    "missing_id",
    "bad_status",
    "bad_coordinates",
    "bad_timestamp",
    "not_object",
)
_ENCODE = msgspec.json.Encoder().encode
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_GPS_NOISE_DEG = 0.00003  # about 3 m


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """The simulated fleet (rates are shares of sessions or messages).

    :param center: (lat, lon) of the delivery area (default: Midtown Manhattan).
    """

    vehicles: int = 20
    seed: int = 0
    ping_interval_secs: float = 5.0
    speed_kmh: tuple[float, float] = (15.0, 45.0)
    trip_km: tuple[float, float] = (0.5, 8.0)
    idle_secs: tuple[float, float] = (30.0, 300.0)
    cancel_rate: float = 0.05
    center: tuple[float, float] = (40.7527, -73.9772)
    radius_km: float = 10.0
    malformed_rate: float = 0.0
    start_ns: int = DEFAULT_START_NS

    def __post_init__(self) -> None:
        if self.vehicles < 1:
            raise ValueError("vehicles must be at least 1")
        if self.ping_interval_secs <= 0:
            raise ValueError("ping_interval_secs must be positive")
        if not 0 < self.speed_kmh[0] <= self.speed_kmh[1]:
            raise ValueError("speed_kmh must be (min, max) with 0 < min <= max")
        if not 0 < self.trip_km[0] <= self.trip_km[1] <= 2 * self.radius_km:
            raise ValueError("trip_km must be (min, max) within the area")
        for name in ("cancel_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


def _km_per_deg_lon(lat: float) -> float:
    return KM_PER_DEG_LAT * math.cos(math.radians(lat))


_MS = 1_000_000


def rfc3339(t_ns: int) -> str:
    """Epoch ns as ``2025-07-19T12:34:56.789Z`` (milliseconds, as the reference sent)."""
    stamp = _EPOCH + dt.timedelta(microseconds=t_ns // 1000)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Trip:
    session_id: str
    order_id: str
    start: tuple[float, float]
    end: tuple[float, float]
    corner: tuple[float, float]
    legs_km: tuple[float, float]
    speed_kmh: float
    stop_km: float  # where the session ends (the full route, or the cancel point)
    cancelled: bool
    done_km: float = 0.0
    last_ns: int = 0  # time of the previous message
    last_stamp: int = 0  # timestamp the previous message carried


@dataclass(slots=True)
class _Vehicle:
    vehicle_id: str
    position: tuple[float, float]
    trip: _Trip | None = None


class SessionsSimulator:
    """Generates the fleet's messages in time order (deterministic per config)."""

    def __init__(self, config: SessionsConfig, clock: Callable[[], int] | None = None) -> None:
        """:param clock: epoch ns now; with one, no message is stamped later than it (see
        :class:`~orbitstream.simulate.publisher.NotAhead`); the trips still move in
        simulated time."""
        self.config = config
        self._cap = NotAhead(clock)
        self._rng = random.Random(config.seed)
        self._vehicles = [
            _Vehicle(self._uuid(), self._random_point()) for _ in range(config.vehicles)
        ]
        # the first orders come in over the first minute
        self._queue: list[tuple[int, int]] = [
            (config.start_ns + int(self._rng.uniform(0, 60) * 1e9), i)
            for i in range(config.vehicles)
        ]
        heapq.heapify(self._queue)

    @property
    def vehicle_ids(self) -> list[str]:
        return [v.vehicle_id for v in self._vehicles]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _random_point(self) -> tuple[float, float]:
        lat0, lon0 = self.config.center
        r = self.config.radius_km * math.sqrt(self._rng.random())
        a = self._rng.uniform(0, 2 * math.pi)
        return (
            lat0 + r * math.sin(a) / KM_PER_DEG_LAT,
            lon0 + r * math.cos(a) / _km_per_deg_lon(lat0),
        )

    def _inside(self, p: tuple[float, float]) -> bool:
        lat0, lon0 = self.config.center
        dy = (p[0] - lat0) * KM_PER_DEG_LAT
        dx = (p[1] - lon0) * _km_per_deg_lon(lat0)
        return math.hypot(dx, dy) <= self.config.radius_km

    def _destination(self, start: tuple[float, float]) -> tuple[float, float]:
        cfg = self.config
        for _ in range(50):
            d = self._rng.uniform(*cfg.trip_km)
            a = self._rng.uniform(0, 2 * math.pi)
            end = (
                start[0] + d * math.sin(a) / KM_PER_DEG_LAT,
                start[1] + d * math.cos(a) / _km_per_deg_lon(start[0]),
            )
            if self._inside(end):
                return end
        return self._random_point()

    def _new_trip(self, start: tuple[float, float]) -> _Trip:
        rng = self._rng
        end = self._destination(start)
        corners = [(end[0], start[1]), (start[0], end[1])]
        if rng.random() < 0.5:
            corners.reverse()
        # take the turn that stays in the area when only one does
        corner = next((c for c in corners if self._inside(c)), corners[0])
        legs = (self._distance_km(start, corner), self._distance_km(corner, end))
        total = legs[0] + legs[1]
        cancelled = rng.random() < self.config.cancel_rate
        stop = total * rng.uniform(0.1, 0.9) if cancelled else total
        return _Trip(
            self._uuid(),
            self._uuid(),
            start,
            end,
            corner,
            legs,
            rng.uniform(*self.config.speed_kmh),
            stop,
            cancelled,
        )

    @staticmethod
    def _distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
        dy = (b[0] - a[0]) * KM_PER_DEG_LAT
        dx = (b[1] - a[1]) * _km_per_deg_lon((a[0] + b[0]) / 2)
        return math.hypot(dx, dy)

    @staticmethod
    def _along(trip: _Trip, km: float) -> tuple[float, float]:
        first, second = trip.legs_km
        if km <= first or second == 0:
            a, b, f = trip.start, trip.corner, (min(1.0, km / first) if first else 1.0)
        else:
            a, b, f = trip.corner, trip.end, min(1.0, (km - first) / second)
        return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)

    # -- messages ----------------------------------------------------------------------
    def messages(self, count: int | None = None) -> Iterator[SimMessage]:
        """The next ``count`` messages in time order (endless when ``None``)."""
        produced = 0
        while count is None or produced < count:
            yield self._next()
            produced += 1

    def _next(self) -> SimMessage:
        cfg = self.config
        rng = self._rng
        t, i = heapq.heappop(self._queue)
        vehicle = self._vehicles[i]
        trip = vehicle.trip
        interval = cfg.ping_interval_secs * rng.uniform(0.8, 1.2)
        if trip is None:
            trip = vehicle.trip = self._new_trip(vehicle.position)
            trip.last_ns = t
            status, position = "started", trip.start
            next_t = t + int(interval * 1e9)
        else:
            pace = 0.0 if rng.random() < 0.1 else rng.uniform(0.6, 1.1)  # red light / traffic
            elapsed_secs = (t - trip.last_ns) / 1e9
            trip.last_ns = t
            trip.done_km += trip.speed_kmh * pace * elapsed_secs / 3600.0
            if trip.done_km >= trip.stop_km:
                trip.done_km = trip.stop_km
                status = "cancelled" if trip.cancelled else "delivered"
                position = trip.end if not trip.cancelled else self._along(trip, trip.stop_km)
                vehicle.position = position
                vehicle.trip = None
                next_t = t + int(interval * 1e9) + int(rng.uniform(*cfg.idle_secs) * 1e9)
            else:
                status = "en_route"
                position = self._along(trip, trip.done_km)
                next_t = t + int(interval * 1e9)
        heapq.heappush(self._queue, (next_t, i))
        current = position
        if status == "en_route":  # GPS noise; the endpoints are exact addresses
            current = (
                position[0] + rng.uniform(-_GPS_NOISE_DEG, _GPS_NOISE_DEG),
                position[1] + rng.uniform(-_GPS_NOISE_DEG, _GPS_NOISE_DEG),
            )
        # capped at the clock, to the millisecond the message carries, and after the
        # session's previous message (the pings of one session stay apart)
        stamp = max(self._cap(t) // _MS * _MS, trip.last_stamp + _MS)
        trip.last_stamp = stamp
        doc: dict[str, Any] = {
            "session_id": trip.session_id,
            "vehicle_id": vehicle.vehicle_id,
            "order_id": trip.order_id,
            "status": status,
            "timestamp": rfc3339(stamp),
            "start_lat": round(trip.start[0], 6),
            "start_lon": round(trip.start[1], 6),
            "end_lat": round(trip.end[0], 6),
            "end_lon": round(trip.end[1], 6),
            "current_lat": round(current[0], 6),
            "current_lon": round(current[1], 6),
        }
        key = trip.session_id.encode()
        if rng.random() < cfg.malformed_rate:
            kind = rng.choice(MALFORMED_KINDS)
            return SimMessage(key, self._malform(doc, kind), stamp, kind)
        return SimMessage(key, _ENCODE(doc), stamp)

    def _malform(self, doc: dict[str, Any], kind: str) -> bytes:
        rng = self._rng
        bad = dict(doc)
        if kind == "truncated":
            data = _ENCODE(doc)
            return data[: rng.randint(1, len(data) - 1)]
        if kind == "missing_id":
            del bad[rng.choice(("session_id", "vehicle_id", "order_id"))]
        elif kind == "bad_status":
            bad["status"] = rng.choice(("arrived", "EN_ROUTE", "", "lost"))
        elif kind == "bad_coordinates":
            field = rng.choice(("current_lat", "current_lon", "start_lat", "end_lon"))
            bad[field] = (95.0 if field.endswith("lat") else 200.0) * rng.choice((-1, 1))
        elif kind == "bad_timestamp":
            bad["timestamp"] = rng.choice(("19/07/2025 12:34", "yesterday", "2025-13-45T99:00:00Z"))
        elif kind == "not_object":
            return _ENCODE([doc])
        else:  # pragma: no cover - MALFORMED_KINDS is closed
            raise ValueError(kind)
        return _ENCODE(bad)


def simulate_sessions(
    bootstrap: str,
    *,
    topic: str = "sessions-topic",
    config: SessionsConfig | None = None,
    rate: float | None = None,
    duration_secs: float | None = None,
    max_messages: int | None = None,
    partitions: int | None = None,
    start_ns: int | None = None,
    producer_config: dict[str, Any] | None = None,
) -> PublishStats:
    """Publish the fleet's messages to ``topic`` (``orbitstream simulate sessions``).

    :param config: the fleet (its ``start_ns`` is replaced by ``start_ns``).
    :param start_ns: simulated start time (epoch ns; default: now).
    :param rate: messages per second (``None``: as fast as possible).
    :param partitions: create the topic with this many partitions when it is missing.
    """
    cfg = dataclasses.replace(
        config or SessionsConfig(), start_ns=time.time_ns() if start_ns is None else start_ns
    )
    if partitions is not None:
        ensure_topic(bootstrap, topic, partitions)
    sim = SessionsSimulator(cfg, clock=time.time_ns if start_ns is None else None)
    return publish(
        sim.messages(max_messages),
        bootstrap=bootstrap,
        topic=topic,
        rate=rate,
        duration_secs=duration_secs,
        max_messages=max_messages,
        producer_config=producer_config,
    )
