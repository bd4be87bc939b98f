from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.simulate.model import (
    BATTERY_LOW_PERCENT,
    SIGNAL_LOW_DBM,
    STORAGE_CAPACITY_MB,
    STORAGE_HIGH_MB,
    FaultKind,
    SatelliteModel,
)

T0 = 1_700_000_000 * 1_000_000_000  # a fixed epoch (ns) keeps the tests reproducible
SECOND = 1_000_000_000
DAY_S = 86_400

Sample = tuple[int, float, float, float]


def run(model: SatelliteModel, seconds: int, step_s: int = 10) -> list[Sample]:
    out: list[Sample] = []
    for s in range(0, seconds, step_s):
        t = T0 + s * SECOND
        out.append((t, *model.sample(t)))
    return out


def segments(flags: list[bool]) -> list[tuple[int, int]]:
    """Index ranges [start, end] of consecutive True flags."""
    result: list[tuple[int, int]] = []
    start: int | None = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            result.append((start, i - 1))
            start = None
    return result


def crosses(metric: str, values: tuple[float, float, float]) -> bool:
    battery, storage, signal = values
    return {
        "battery": battery < BATTERY_LOW_PERCENT,
        "storage": storage > STORAGE_HIGH_MB,
        "signal": signal < SIGNAL_LOW_DBM,
    }[metric]


def test_orbit_parameters_are_in_range() -> None:
    for seed in range(20):
        m = SatelliteModel("SAT-0001", seed=seed)
        assert 90 * 60 <= m.period_s <= 100 * 60
        assert 0.33 <= m.eclipse_fraction <= 0.37
        assert 4 <= m.passes_per_day <= 6


def test_same_seed_same_telemetry_and_different_seed_differs() -> None:
    a = run(SatelliteModel("SAT-0001", seed=7, anomaly_rate=0.05), 3_000, step_s=1)
    b = run(SatelliteModel("SAT-0001", seed=7, anomaly_rate=0.05), 3_000, step_s=1)
    c = run(SatelliteModel("SAT-0001", seed=8, anomaly_rate=0.05), 3_000, step_s=1)
    assert a == b
    assert a != c


def test_orbit_does_not_depend_on_the_anomaly_rate() -> None:
    calm = SatelliteModel("SAT-0001", seed=11, anomaly_rate=0.0)
    faulty = SatelliteModel("SAT-0001", seed=11, anomaly_rate=0.5)
    for s in range(0, DAY_S, 30):
        t = T0 + s * SECOND
        calm.sample(t)
        faulty.sample(t)
        assert calm.in_eclipse(t) == faulty.in_eclipse(t)
        assert calm.elevation_deg(t) == faulty.elevation_deg(t)
    assert calm.period_s == faulty.period_s


def test_shared_rng_gives_a_reproducible_fleet() -> None:
    def fleet(seed: int) -> list[list[Sample]]:
        master = random.Random(seed)
        models = [SatelliteModel(f"SAT-{i:04d}", rng=master) for i in range(1, 4)]
        return [run(m, 600) for m in models]

    assert fleet(3) == fleet(3)


@pytest.mark.parametrize("seed", range(5))
def test_battery_drains_in_eclipse_and_recharges_in_sunlight(seed: int) -> None:
    m = SatelliteModel("SAT-0001", seed=seed, anomaly_rate=0.0)
    samples = run(m, 5 * 100 * 60)  # five orbits
    eclipse = [m.in_eclipse(t) for t, *_ in samples]
    assert 0.30 < sum(eclipse) / len(eclipse) < 0.40
    battery = [b for _, b, _, _ in samples]
    checked = 0
    for start, end in segments(eclipse):
        if start == 0 or end == len(samples) - 1:
            continue  # partial eclipse at the edges of the window
        # Roughly 0.75-1.35 %/min for 30-37 minutes.
        assert battery[end] < battery[start] - 20
        assert all(
            b2 <= b1 + 1.0
            for b1, b2 in zip(battery[start:end], battery[start + 1 : end + 1], strict=True)
        )
        # The following sunlit part of the orbit brings the battery back up.
        sunlit_end = end + int(0.6 * m.period_s / 10)
        if sunlit_end < len(samples):
            assert max(battery[end:sunlit_end]) > battery[end] + 20
            checked += 1
    assert checked >= 2
    assert min(battery) > 50.0


@pytest.mark.parametrize("seed", range(5))
def test_storage_fills_while_imaging_and_drops_during_passes(seed: int) -> None:
    m = SatelliteModel("SAT-0001", seed=seed, anomaly_rate=0.0)
    samples: list[Sample] = []
    in_pass: list[bool] = []
    for step in range(0, DAY_S, 10):
        t = T0 + step * SECOND
        samples.append((t, *m.sample(t)))
        in_pass.append(m.in_pass(t))
    passes = [p for p in segments(in_pass) if p[0] > 0 and p[1] < len(samples) - 1]
    assert len(passes) >= 2
    for start, end in passes:
        before, after = samples[start - 1][2], samples[end + 1][2]
        # 2,000-3,000 MB/min over 8-10 minutes, down to the 500 MB reserve.
        assert after <= max(before - 15_000, 600.0)
    # Between passes storage grows (imaging + housekeeping) and never shrinks.
    for (_, prev_end), (next_start, _) in itertools.pairwise(passes):
        gap = [s for _, _, s, _ in samples[prev_end + 1 : next_start]]
        assert gap[-1] > gap[0] + 1_000
        assert all(b >= a for a, b in itertools.pairwise(gap))


def test_signal_follows_elevation_during_passes() -> None:
    elevations: list[float] = []
    signals: list[float] = []
    for seed in range(5):
        m = SatelliteModel("SAT-0001", seed=seed, anomaly_rate=0.0)
        for s in range(0, DAY_S, 5):
            t = T0 + s * SECOND
            _, _, signal = m.sample(t)
            if m.in_pass(t):
                elevations.append(m.elevation_deg(t))
                signals.append(signal)
            else:
                assert -99.0 <= signal <= -90.0
    assert len(signals) > 100
    assert max(signals) > -70.0  # high passes reach well above the horizon level
    assert correlation(elevations, signals) > 0.9


def correlation(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    return cov / math.sqrt(vx * vy)


def test_healthy_fleet_never_crosses_thresholds_over_two_days() -> None:
    for seed in range(12):
        m = SatelliteModel(f"SAT-{seed:04d}", seed=seed, anomaly_rate=0.0)
        for _, battery, storage, signal in run(m, 2 * DAY_S, step_s=15):
            assert battery > 50.0
            assert 0.0 <= storage <= 70_000.0
            assert -99.0 <= signal <= -55.0
        assert m.active_fault is None


@pytest.mark.parametrize(
    ("kind", "metrics"),
    [
        (FaultKind.BATTERY_CELL_FAILURE, {"battery"}),
        (FaultKind.STORAGE_RUNAWAY, {"storage"}),
        (FaultKind.ANTENNA_FAULT, {"signal"}),
        (FaultKind.SENSOR_GLITCH, {"battery", "storage", "signal"}),
    ],
)
def test_each_injected_fault_crosses_its_threshold(kind: FaultKind, metrics: set[str]) -> None:
    seen_metrics: set[str] = set()
    for seed in range(30):
        m = SatelliteModel("SAT-0001", seed=seed, anomaly_rate=0.0)
        t = T0
        for _ in range(50):
            t += SECOND // 10
            m.sample(t)
        m.inject_fault(kind)
        episode: list[tuple[float, float, float]] = []
        while True:
            t += SECOND // 10
            values = m.sample(t)
            fault = m.active_fault
            if fault is None:
                break
            assert fault.kind is kind
            assert fault.metric in metrics
            assert crosses(fault.metric, values), (fault, values)
            episode.append(values)
            seen_metrics.add(fault.metric)
        assert 1 <= len(episode) <= 20
        if kind is not FaultKind.SENSOR_GLITCH:
            assert len(episode) >= 3  # an episode lasts several points
        # After the episode (and its recovery tail) the values are healthy again.
        for _ in range(60):
            t += SECOND // 10
            last = m.sample(t)
        assert m.active_fault is None
        assert last[0] > 50.0
        assert last[1] < STORAGE_HIGH_MB
        assert last[2] >= -99.0
    assert seen_metrics == metrics


def test_battery_fault_recovers_gradually() -> None:
    m = SatelliteModel("SAT-0001", seed=1, anomaly_rate=0.0)
    t = T0
    healthy = m.sample(t)[0]
    m.inject_fault(FaultKind.BATTERY_CELL_FAILURE)
    episode: list[float] = []
    after: list[float] = []
    for _ in range(100):
        t += SECOND // 100
        value = m.sample(t)[0]
        (episode if m.active_fault is not None else after).append(value)
    assert 5 <= len(episode) <= 20
    assert max(episode) < BATTERY_LOW_PERCENT
    assert episode == sorted(episode)  # creeps back up during the episode
    tail = after[: 2 * len(episode)]  # the recovery tail is twice as long as the episode
    assert tail[0] < healthy - 50  # no jump straight back to normal...
    assert all(b > a for a, b in itertools.pairwise(tail))
    assert abs(after[-1] - healthy) < 3.0  # ...but back to normal afterwards


def test_random_faults_start_at_the_configured_rate_and_cross_thresholds() -> None:
    m = SatelliteModel("SAT-0001", seed=5, anomaly_rate=0.02)
    kinds: Counter[FaultKind] = Counter()
    anomalous = 0
    starts = 0
    previous = None
    n = 40_000
    for i in range(n):
        values = m.sample(T0 + i * 10_000_000)
        fault = m.active_fault
        if fault is not None:
            anomalous += 1
            assert crosses(fault.metric, values)
            if fault is not previous:
                starts += 1
                kinds[fault.kind] += 1
        previous = fault
    assert set(kinds) == set(FaultKind)
    # --anomaly-rate is the share of anomalous points (the seed's meaning), within noise
    assert 0.012 < anomalous / n < 0.03
    assert starts < n * 0.02


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05, 0.2])
def test_anomaly_rate_is_the_share_of_points_crossing_a_threshold(rate: float) -> None:
    bad = total = 0
    for s in range(20):
        m = SatelliteModel(f"SAT-{s:04d}", seed=100 + s, anomaly_rate=rate)
        for i in range(5_000):
            b, st, g = m.sample(T0 + i * 10_000_000)
            total += 1
            bad += b < 10 or st > 95_000 or g < -100
    assert rate * 0.6 < bad / total < rate * 1.4


def test_no_faults_when_anomaly_rate_is_zero() -> None:
    m = SatelliteModel("SAT-0001", seed=9, anomaly_rate=0.0)
    for i in range(20_000):
        m.sample(T0 + i * 10_000_000)
        assert m.active_fault is None


def test_invalid_anomaly_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="anomaly_rate"):
        SatelliteModel("SAT-0001", anomaly_rate=1.5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    anomaly_rate=st.floats(0.0, 1.0),
    gaps=st.lists(st.integers(0, 3_600 * SECOND), min_size=1, max_size=60),
)
def test_values_always_within_the_server_validation_ranges(
    seed: int, anomaly_rate: float, gaps: list[int]
) -> None:
    m = SatelliteModel("SAT-0001", seed=seed, anomaly_rate=anomaly_rate)
    t = T0
    for gap in gaps:
        t += gap
        battery, storage, signal = m.sample(t)
        assert 0.0 <= battery <= 100.0
        assert 0.0 <= storage <= STORAGE_CAPACITY_MB
        assert -200.0 <= signal <= 0.0
        assert all(math.isfinite(v) for v in (battery, storage, signal))
