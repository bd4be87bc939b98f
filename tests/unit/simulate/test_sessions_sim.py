"""The fleet simulator: deterministic by seed; sessions that look like deliveries."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections import defaultdict
from typing import Any

import pytest

from orbitstream.pipelines.mapping import MessagePosition
from orbitstream.pipelines.sessions import SessionsMapper
from orbitstream.simulate.publisher import SimMessage
from orbitstream.simulate.sessions import (
    KM_PER_DEG_LAT,
    MALFORMED_KINDS,
    SessionsConfig,
    SessionsSimulator,
    rfc3339,
)


def run(config: SessionsConfig, n: int) -> list[SimMessage]:
    return list(SessionsSimulator(config).messages(n))


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = (b[0] - a[0]) * KM_PER_DEG_LAT
    dx = (b[1] - a[1]) * KM_PER_DEG_LAT * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dx, dy)


def sessions_of(msgs: list[SimMessage]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in msgs:
        assert m.malformed is None
        doc = json.loads(m.value)
        assert m.key.decode() == doc["session_id"]  # keyed by session: one partition each
        out[doc["session_id"]].append(doc)
    return out


def ns(doc: dict[str, Any]) -> int:
    stamp = dt.datetime.fromisoformat(doc["timestamp"])
    return (stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


CFG = SessionsConfig(vehicles=15, seed=11, cancel_rate=0.3)
MSGS = run(CFG, 15_000)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs() -> None:
    cfg = SessionsConfig(vehicles=5, seed=3, malformed_rate=0.1)
    assert run(cfg, 500) == run(cfg, 500)
    assert run(SessionsConfig(vehicles=5, seed=4, malformed_rate=0.1), 500) != run(cfg, 500)


def test_messages_come_in_time_order_with_the_documented_shape() -> None:
    times = [m.timestamp_ns for m in MSGS]
    assert times == sorted(times)
    doc = json.loads(MSGS[0].value)
    assert list(doc) == [
        "session_id",
        "vehicle_id",
        "order_id",
        "status",
        "timestamp",
        "start_lat",
        "start_lon",
        "end_lat",
        "end_lon",
        "current_lat",
        "current_lon",
    ]
    assert doc["timestamp"].endswith("Z") and ns(doc) // 10**6 == MSGS[0].timestamp_ns // 10**6


def test_sessions_run_started_then_en_route_then_delivered_or_cancelled() -> None:
    sessions = sessions_of(MSGS)
    finished = 0
    outcomes: dict[str, int] = defaultdict(int)
    for docs in sessions.values():
        statuses = [d["status"] for d in docs]
        assert statuses[0] == "started"
        assert set(statuses[1:-1]) <= {"en_route"}
        header = {k: docs[0][k] for k in ("vehicle_id", "order_id", "start_lat", "end_lon")}
        assert all({k: d[k] for k in header} == header for d in docs)  # one immutable header
        if statuses[-1] in ("delivered", "cancelled"):
            finished += 1
            outcomes[statuses[-1]] += 1
            last = docs[-1]
            if statuses[-1] == "delivered":
                assert (last["current_lat"], last["current_lon"]) == (
                    last["end_lat"],
                    last["end_lon"],
                )
        else:
            assert statuses[-1] in ("started", "en_route")  # still driving at the end
    assert finished >= 80
    assert 0.15 <= outcomes["cancelled"] / finished <= 0.45  # cancel_rate 0.3


def test_a_vehicle_runs_one_session_at_a_time_and_sessions_are_unique() -> None:
    by_vehicle: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for m in MSGS:
        doc = json.loads(m.value)
        by_vehicle[doc["vehicle_id"]].append((ns(doc), doc["session_id"], doc["status"]))
    assert len(by_vehicle) == CFG.vehicles
    for events in by_vehicle.values():
        active: str | None = None
        seen: set[str] = set()
        for _, sid, status in events:
            if status == "started":
                assert active is None and sid not in seen
                active = sid
                seen.add(sid)
            else:
                assert sid == active
                if status in ("delivered", "cancelled"):
                    active = None


def test_pings_move_at_a_plausible_speed_inside_the_area() -> None:
    lo, hi = CFG.ping_interval_secs * 0.8, CFG.ping_interval_secs * 1.2
    max_kmh = CFG.speed_kmh[1] * 1.1
    inside = pings = trips = sessions = 0
    for docs in sessions_of(MSGS).values():
        prev = docs[0]
        assert (prev["current_lat"], prev["current_lon"]) == (prev["start_lat"], prev["start_lon"])
        trip = km((prev["start_lat"], prev["start_lon"]), (prev["end_lat"], prev["end_lon"]))
        trips += CFG.trip_km[0] * 0.99 <= trip <= CFG.trip_km[1] * 1.01
        sessions += 1
        for doc in docs[1:]:
            secs = (ns(doc) - ns(prev)) / 1e9
            assert lo - 0.002 <= secs <= hi + 0.002
            a = (prev["current_lat"], prev["current_lon"])
            b = (doc["current_lat"], doc["current_lon"])
            assert km(a, b) / (secs / 3600) <= max_kmh + 0.02 / (secs / 3600)  # + GPS noise
            # both ends lie in the area; the route's turn stays within its bounding box
            assert km(CFG.center, (b[0], CFG.center[1])) <= CFG.radius_km + 0.01
            assert km(CFG.center, (CFG.center[0], b[1])) <= CFG.radius_km + 0.01
            inside += km(CFG.center, b) <= CFG.radius_km + 0.01
            pings += 1
            prev = doc
    assert inside / pings > 0.99
    assert trips / sessions > 0.95  # destinations 0.5-8 km away (a few fall back to anywhere)


def test_every_message_maps_and_malformed_ones_are_dead_at_the_chosen_rate() -> None:
    msgs = run(SessionsConfig(vehicles=10, seed=5, malformed_rate=0.1), 3000)
    bad = [m for m in msgs if m.malformed is not None]
    assert 234 <= len(bad) <= 366  # 10 % of 3,000 ± 4 standard deviations
    assert {m.malformed for m in bad} == set(MALFORMED_KINDS)
    mapper = SessionsMapper()
    for i, m in enumerate(msgs):
        result = mapper.map(m.value, MessagePosition("sessions-topic", 0, i))
        assert (m.malformed is None) == (not result.dead), (m.malformed, result.dead)


def test_rfc3339_keeps_milliseconds_in_utc() -> None:
    assert rfc3339(1_752_928_496_789_999_999) == "2025-07-19T12:34:56.789Z"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vehicles": 0},
        {"ping_interval_secs": 0},
        {"speed_kmh": (30.0, 10.0)},
        {"trip_km": (1.0, 50.0)},
        {"cancel_rate": -0.1},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionsConfig(**kwargs)


def test_sending_faster_than_the_schedule_never_stamps_a_message_ahead_of_the_clock() -> None:
    """Without a rate, thousands of simulated minutes go out in seconds; with the clock
    no message is stamped (much) later than "now": at most 1 ms per message of its own
    session ahead, as one session's messages stay 1 ms apart at least. Every message
    still maps."""
    now = [CFG.start_ns]

    def clock() -> int:
        now[0] += 20_000  # 20 µs of real time per message
        return now[0]

    sim = SessionsSimulator(CFG, clock=clock)
    msgs = list(sim.messages(3000))
    uncapped = run(CFG, 3000)
    assert uncapped[-1].timestamp_ns - CFG.start_ns > 1000 * 10**9  # 20 simulated minutes
    assert msgs[-1].timestamp_ns - CFG.start_ns < 2 * 10**9  # vs 60 ms of real time
    assert [m.value for m in msgs] != [m.value for m in uncapped]
    docs = [json.loads(m.value) for m in msgs]
    assert [ns(d) for d in docs] == [m.timestamp_ns for m in msgs]
    for session in sessions_of(msgs).values():
        times = [ns(d) for d in session]
        assert all(b - a >= 1_000_000 for a, b in itertools.pairwise(times))
    mapper = SessionsMapper()
    results = [
        mapper.map(m.value, MessagePosition("sessions-topic", 0, i)) for i, m in enumerate(msgs)
    ]
    assert not any(r.dead for r in results)
    assert sum(len(r.rows.get("session_events", [])) for r in results) == 3000
