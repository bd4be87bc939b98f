from __future__ import annotations

import asyncio
import itertools
import math
import re
import socket
import time
from collections import Counter

import pytest

from orbitstream.simulate.driver import (
    LatencyHistogram,
    ServerUnreachableError,
    SimulatorConfig,
    Summary,
    run_simulation,
    satellite_ids,
)
from tests.unit.simulate.fake_ingest import Behaviour, FakeIngest, Point


def config(ingest: FakeIngest, **overrides: object) -> SimulatorConfig:
    cfg = SimulatorConfig(
        satellites=10,
        rate=50.0,
        api_url=ingest.url,
        duration=0.5,
        anomaly_rate=0.05,
        connections=8,
        seed=1,
        record_accepted=True,
        live=False,
    )
    for name, value in overrides.items():
        assert hasattr(cfg, name), name
        setattr(cfg, name, value)
    return cfg


def assert_balanced(summary: Summary) -> None:
    assert summary.scheduled == summary.sent + summary.dropped_client
    assert summary.sent == summary.accepted + summary.rejected + summary.errors


def sat(point: Point) -> str:
    return str(point["satellite_id"])


async def test_paced_single_point_run_is_fully_accounted(ingest: FakeIngest) -> None:
    cfg = config(ingest, satellites=20, rate=100.0, duration=2.0, connections=16)
    started = time.monotonic()
    summary = await run_simulation(cfg)
    wall = time.monotonic() - started

    assert summary.scheduled == summary.sent == summary.accepted == 4_000
    assert summary.rejected == summary.errors == summary.backpressure == 0
    assert summary.dropped_client == 0
    assert summary.requests == 4_000
    assert_balanced(summary)
    # Pacing: the schedule spreads the points over the duration (generous bounds).
    assert 1.9 <= summary.elapsed_s <= 3.0
    assert wall < 4.0
    assert 1_300 <= summary.achieved_rate <= 2_100
    assert 0 < summary.p50_ms <= summary.p99_ms

    # Every acknowledged point is in the server's store, exactly once.
    assert summary.accepted_points is not None
    assert len(set(summary.accepted_points)) == 4_000
    assert sorted(summary.accepted_points) == sorted(ingest.stored)
    assert ingest.invalid == []  # anomalies included, every value is valid

    # Round-robin: each satellite gets its own rate, timestamps are the schedule.
    per_sat: dict[str, list[int]] = {}
    for sid, ts in summary.accepted_points:
        per_sat.setdefault(sid, []).append(ts)
    assert sorted(per_sat) == satellite_ids(20)
    for stamps in per_sat.values():
        stamps.sort()
        assert len(stamps) == 200
        gaps = {b - a for a, b in itertools.pairwise(stamps)}
        assert all(abs(g - 10_000_000) <= 1 for g in gaps)  # 100 points/s each
    first = min(ts for _, ts in summary.accepted_points)
    last = max(ts for _, ts in summary.accepted_points)
    assert last - first == pytest.approx(2e9 - 5e5, abs=10)
    assert abs(first - time.time_ns()) < 10e9


async def test_rejected_points_are_counted_and_not_recorded(
    behaviour: Behaviour, ingest: FakeIngest
) -> None:
    behaviour.reject = lambda point: sat(point) in {"SAT-0002", "SAT-0005"}
    summary = await run_simulation(config(ingest))

    assert summary.sent == 250
    assert summary.rejected == 50  # 2 of 10 satellites
    assert summary.accepted == 200
    assert summary.errors == summary.backpressure == 0
    assert_balanced(summary)
    assert summary.accepted_points is not None
    assert sorted(summary.accepted_points) == sorted(ingest.stored)
    assert not {sid for sid, _ in summary.accepted_points} & {"SAT-0002", "SAT-0005"}


async def test_backpressure_resends_the_same_point(
    behaviour: Behaviour, ingest: FakeIngest
) -> None:
    behaviour.busy = lambda point, attempt: 0 if sat(point) == "SAT-0003" and attempt == 1 else None
    summary = await run_simulation(config(ingest))

    assert summary.sent == summary.accepted == 250
    assert summary.backpressure == 25  # SAT-0003's points, once each
    assert summary.errors == summary.rejected == 0
    assert_balanced(summary)
    assert summary.accepted_points is not None
    assert sorted(summary.accepted_points) == sorted(ingest.stored)
    assert Counter(ingest.attempts.values()) == Counter({1: 225, 2: 25})


async def test_retry_after_is_honoured(behaviour: Behaviour, ingest: FakeIngest) -> None:
    behaviour.busy = lambda point, attempt: 1 if attempt == 1 else None
    cfg = config(ingest, satellites=1, rate=1.0, duration=1.0, connections=1)
    summary = await run_simulation(cfg)

    assert (summary.sent, summary.accepted, summary.backpressure) == (1, 1, 1)
    [arrivals] = ingest.arrivals.values()
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.95


async def test_gives_up_after_bounded_retries(behaviour: Behaviour, ingest: FakeIngest) -> None:
    behaviour.busy = lambda point, attempt: 0 if sat(point) == "SAT-0001" else None
    summary = await run_simulation(config(ingest, max_retries=2))

    assert summary.sent == 250
    assert summary.errors == 25
    assert summary.backpressure == 25 * 3  # first attempt + 2 retries
    assert summary.accepted == 225
    assert_balanced(summary)
    assert summary.accepted_points is not None
    assert "SAT-0001" not in {sid for sid, _ in summary.accepted_points}


async def test_lost_responses_are_errors_and_the_pool_reconnects(
    behaviour: Behaviour, ingest: FakeIngest
) -> None:
    behaviour.drop = lambda point, attempt: sat(point) == "SAT-0004"
    summary = await run_simulation(config(ingest, connections=2))

    assert summary.sent == 250
    assert summary.errors == 25  # never counted as accepted...
    assert summary.accepted == 225  # ...and the others still get through
    assert summary.dropped_client == 0
    assert_balanced(summary)
    assert summary.accepted_points is not None
    assert sorted(summary.accepted_points) == sorted(ingest.stored)
    assert sum(ingest.attempts.values()) == 250  # an unanswered request is not resent


async def test_batch_mode_accounts_per_point(behaviour: Behaviour, ingest: FakeIngest) -> None:
    behaviour.reject = lambda point: sat(point) == "SAT-0007"
    cfg = config(ingest, satellites=10, rate=50.0, duration=2.0, batch=10)
    summary = await run_simulation(cfg)

    assert summary.sent == 1_000
    assert summary.rejected == 100
    assert summary.accepted == 900
    assert summary.errors == summary.backpressure == 0
    assert_balanced(summary)
    assert sum(ingest.batch_sizes) == 1_000
    assert summary.requests == len(ingest.batch_sizes)
    assert Counter(ingest.batch_sizes).most_common(1)[0][0] == 10
    assert max(ingest.batch_sizes) == 10
    assert summary.accepted_points is not None
    assert sorted(summary.accepted_points) == sorted(ingest.stored)
    assert "SAT-0007" not in {sid for sid, _ in summary.accepted_points}
    assert ingest.invalid == []


async def test_partial_batches_are_not_held_back_at_low_rates(ingest: FakeIngest) -> None:
    cfg = config(ingest, satellites=1, rate=5.0, duration=1.0, batch=10)
    summary = await run_simulation(cfg)

    assert summary.sent == summary.accepted == 5
    assert ingest.batch_sizes == [1] * 5  # 200 ms apart: each one leaves after the linger


async def test_batch_fully_rejected_is_422(behaviour: Behaviour, ingest: FakeIngest) -> None:
    behaviour.reject = lambda point: True
    summary = await run_simulation(config(ingest, batch=5))

    assert summary.sent == summary.rejected == 250
    assert summary.accepted == 0
    assert summary.accepted_points == []
    assert summary.achieved_rate == 0.0


async def test_client_drops_points_it_cannot_send(behaviour: Behaviour, ingest: FakeIngest) -> None:
    behaviour.delay = 0.1  # one connection can do 10 requests/s at best
    cfg = config(ingest, satellites=1, rate=200.0, duration=0.5, connections=1, max_pending=5)
    summary = await run_simulation(cfg)

    assert summary.scheduled == 100
    assert summary.dropped_client > 50
    assert 1 <= summary.sent <= 20
    assert summary.sent == summary.accepted  # queued points still drained before exit
    assert_balanced(summary)
    assert summary.accepted_points is not None
    assert sorted(summary.accepted_points) == sorted(ingest.stored)


async def test_stop_event_ends_an_unbounded_run(ingest: FakeIngest) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    started = time.monotonic()
    summary = await run_simulation(config(ingest, duration=0.0), stop=stop)

    assert time.monotonic() - started < 2.0
    assert 100 <= summary.scheduled <= 400  # ~0.5 s at 500 points/s
    assert summary.sent == summary.accepted == summary.scheduled
    assert_balanced(summary)


async def test_drain_is_bounded_when_responses_never_come(
    behaviour: Behaviour, ingest: FakeIngest
) -> None:
    behaviour.delay = 30.0
    cfg = config(ingest, satellites=1, rate=10.0, duration=0.2, connections=2, drain_timeout=0.3)
    started = time.monotonic()
    summary = await run_simulation(cfg)

    assert time.monotonic() - started < 2.0
    assert summary.sent == summary.errors == 2
    assert summary.accepted == 0
    assert summary.dropped_client == 0  # queued, then given up at the drain deadline
    assert summary.scheduled == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_raises_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cfg = SimulatorConfig(api_url=url, live=False, connections=2, duration=0.1)
    with pytest.raises(ServerUnreachableError, match=re.escape(url)) as info:
        await run_simulation(cfg)
    assert info.value.url == url


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("satellites", 0, "satellites"),
        ("rate", 0.0, "rate"),
        ("rate", math.inf, "rate"),
        ("duration", -1.0, "duration"),
        ("anomaly_rate", 1.5, "anomaly_rate"),
        ("batch", -1, "batch"),
        ("connections", 0, "connections"),
        ("id_prefix", "SAT/", "id_prefix"),
        ("api_url", "https://example.com", "api_url"),
        ("api_url", "http://:80", "api_url"),
    ],
)
def test_invalid_config_is_refused(field: str, value: object, message: str) -> None:
    cfg = SimulatorConfig()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_satellite_ids_are_numbered_from_one() -> None:
    assert satellite_ids(3) == ["SAT-0001", "SAT-0002", "SAT-0003"]
    assert satellite_ids(1, "X:") == ["X:0001"]


def test_latency_histogram_percentiles() -> None:
    hist = LatencyHistogram()
    assert hist.percentile_ms(0.5) == 0.0
    for ms in range(1, 1_001):
        hist.record(ms * 1_000_000)
    assert hist.count == 1_000
    assert hist.percentile_ms(0.50) == pytest.approx(500, rel=0.02)
    assert hist.percentile_ms(0.99) == pytest.approx(990, rel=0.02)
    assert hist.percentile_ms(1.0) == pytest.approx(1_000, rel=0.02)
    assert hist.percentile_ms(0.001) == pytest.approx(1, rel=0.02)
    hist.record(0)
    hist.record(10**15)  # out of range values land in the edge buckets
    assert hist.percentile_ms(1.0) == 10**15 / 1e6
    hist.reset()
    assert hist.count == 0
    assert hist.percentile_ms(0.99) == 0.0
