"""Deterministic physics-flavoured telemetry model of one Earth-observation satellite.

The model is pure Python (``math`` + ``random.Random``), deterministic for a given
seed and sequence of sample times, and cheap enough (a few microseconds per sample)
to feed a load driver at tens of thousands of points per second.

Healthy behaviour (chosen so that a healthy satellite never crosses the server's
anomaly thresholds: battery < 10 %, storage > 95,000 MB, signal < -100 dBm):

* **Orbit** -- period drawn in 90-100 min, random phase. Orbital phase 0 is sunrise
  (eclipse exit); the last ~35 % of each orbit (drawn in 33-37 %) is eclipse.
* **Battery** -- charges at 1.2-1.6 %/min in sunlight (capped at 100 %), drains at
  0.75-0.95 %/min in eclipse, with extra loads while imaging (0.3 %/min) and while
  transmitting during a ground-station pass (0.4 %/min). It settles between roughly
  60 and 100 % (never below 50 %).
* **Storage** -- capacity 100,000 MB. Fills at 100-160 MB/min while imaging (a
  window of 15-22 % of each orbit, in sunlight), 1 MB/min of housekeeping data at
  all times, and drains at 2,000-3,000 MB/min during ground-station passes down to a
  500 MB reserve. Daily downlink capacity always exceeds daily imaging volume, so
  storage peaks below ~65,000 MB.
* **Passes** -- 4-6 per day with jittered spacing, each 8-10 minutes, peak elevation
  15-90 degrees following a half-sine over the pass.
* **Signal** -- during a pass it follows elevation: ``-95 + 35 * sin(elevation)`` dBm
  (so -95 dBm at the horizon, -60 dBm at zenith) plus 1 dB of noise. Outside passes
  the only link is a weak relay/beacon carrier around -96 dBm. Healthy values are
  clamped to [-99, -55] dBm.

Injected faults: ``anomaly_rate`` is the share of points that cross a threshold (the
seed's "probability of anomalies", 1 % by default). Faults come as episodes that
persist for a few samples (counted in samples, so the anomalous share of points does
not depend on the send rate) and always cross their threshold on every sample of the
episode; the per-sample probability that an episode starts is derived from the rate
(:func:`episode_start_probability`):

* ``BATTERY_CELL_FAILURE`` -- battery collapses to 2-6 % and creeps back up (still
  below 10 %), then blends back to the healthy value over a recovery tail.
* ``STORAGE_RUNAWAY`` -- downlink failure: storage climbs from above 95,500 MB towards
  capacity, then drains back to the healthy value over a recovery tail.
* ``ANTENNA_FAULT`` -- attitude/antenna fault: signal drops to about -108...-120 dBm.
* ``SENSOR_GLITCH`` -- one or two stuck readings of a single sensor (battery 0 %,
  storage 99,999 MB or signal -150 dBm).

All values always stay inside the server's validation ranges.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

__all__ = [
    "BATTERY_LOW_PERCENT",
    "SIGNAL_LOW_DBM",
    "STORAGE_CAPACITY_MB",
    "STORAGE_HIGH_MB",
    "FaultEpisode",
    "FaultKind",
    "SatelliteModel",
]

# Anomaly thresholds used by the server's detector (a value beyond them is flagged).
BATTERY_LOW_PERCENT = 10.0
STORAGE_HIGH_MB = 95_000.0
SIGNAL_LOW_DBM = -100.0

STORAGE_CAPACITY_MB = 100_000.0
STORAGE_RESERVE_MB = 500.0

# Healthy signal model.
SIGNAL_HORIZON_DBM = -95.0
SIGNAL_ZENITH_DBM = -60.0
SIGNAL_BASELINE_DBM = -96.0
SIGNAL_HEALTHY_MIN_DBM = -99.0
SIGNAL_HEALTHY_MAX_DBM = -55.0

# Longest integration step; larger gaps between samples are sub-stepped.
_MAX_STEP_S = 10.0
_DAY_S = 86_400.0
_NS = 1_000_000_000


class FaultKind(enum.Enum):
    """Kinds of injected fault episodes."""

    BATTERY_CELL_FAILURE = "battery_cell_failure"
    STORAGE_RUNAWAY = "storage_runaway"
    ANTENNA_FAULT = "antenna_fault"
    SENSOR_GLITCH = "sensor_glitch"


_FAULT_KINDS = tuple(FaultKind)
_GLITCH_METRICS = ("battery", "storage", "signal")


@dataclass
class FaultEpisode:
    """A running fault episode.

    ``length`` and ``remaining`` count samples; ``start_value``/``end_value`` are the
    reported values at the first and last sample of the episode (linear in between).
    ``metric`` names the affected metric (``battery``, ``storage`` or ``signal``).
    """

    kind: FaultKind
    metric: str
    length: int
    remaining: int
    start_value: float
    end_value: float

    def current_value(self) -> float:
        """Value to report for the current sample (before ``remaining`` is decremented)."""
        if self.length <= 1:
            return self.start_value
        progress = (self.length - self.remaining) / (self.length - 1)
        return self.start_value + (self.end_value - self.start_value) * progress


@dataclass
class _Recovery:
    """Blend from a fault value back to the healthy value over a number of samples."""

    metric: str
    from_value: float
    length: int
    done: int = 0


class SatelliteModel:
    """Telemetry model of one satellite; see the module docstring for the physics.

    Call :meth:`sample` with non-decreasing epoch-nanosecond times; it returns
    ``(battery_charge_percent, storage_usage_mb, signal_strength_dbm)``. The result
    is a deterministic function of the seed and the sequence of sample times.
    """

    def __init__(
        self,
        satellite_id: str,
        *,
        seed: int | None = None,
        rng: random.Random | None = None,
        anomaly_rate: float = 0.01,
    ) -> None:
        if not 0.0 <= anomaly_rate <= 1.0:
            raise ValueError("anomaly_rate must be within [0, 1]")
        self.satellite_id = satellite_id
        self.anomaly_rate = anomaly_rate
        self._start_p = episode_start_probability(anomaly_rate)
        master = rng if rng is not None else random.Random(seed)
        # Two streams (a Random holds ~2.5 KB of state): the orbit, its parameters and
        # pass schedule do not depend on the anomaly rate or on how often it is sampled.
        self._rng = random.Random(master.getrandbits(64))  # measurement noise and faults
        self._orbit = random.Random(master.getrandbits(64))
        r = self._orbit

        self.period_s = r.uniform(90.0, 100.0) * 60.0
        self.phase_offset = r.random()
        self.eclipse_fraction = r.uniform(0.33, 0.37)
        self.sunlit_fraction = 1.0 - self.eclipse_fraction
        imaging_fraction = r.uniform(0.15, 0.22)
        self.imaging_start = r.uniform(0.05, self.sunlit_fraction - imaging_fraction - 0.02)
        self.imaging_end = self.imaging_start + imaging_fraction

        self.charge_rate = r.uniform(1.2, 1.6) / 60.0  # %/s
        self.drain_rate = r.uniform(0.75, 0.95) / 60.0  # %/s
        self.imaging_load = 0.3 / 60.0  # %/s
        self.transmit_load = 0.4 / 60.0  # %/s
        self.imaging_rate = r.uniform(100.0, 160.0) / 60.0  # MB/s
        self.housekeeping_rate = 1.0 / 60.0  # MB/s
        self.downlink_rate = r.uniform(2_000.0, 3_000.0) / 60.0  # MB/s

        self.passes_per_day = r.randint(4, 6)
        self._pass_spacing_s = _DAY_S / self.passes_per_day

        self.battery = r.uniform(92.0, 100.0)
        self.storage = r.uniform(15_000.0, 45_000.0)

        self._t: float | None = None  # seconds, time of the last integration
        self._pass_start = 0.0
        self._pass_end = 0.0
        self._pass_peak_deg = 0.0
        self._fault: FaultEpisode | None = None
        self._forced: FaultKind | None = None
        self._recovery: _Recovery | None = None

    # ------------------------------------------------------------------ geometry
    def orbital_phase(self, t_ns: int) -> float:
        """Orbital phase in [0, 1): 0 is sunrise, eclipse is ``phase >= sunlit_fraction``."""
        return (t_ns / _NS / self.period_s + self.phase_offset) % 1.0

    def in_eclipse(self, t_ns: int) -> bool:
        """Whether the satellite is in Earth's shadow at ``t_ns``."""
        return self.orbital_phase(t_ns) >= self.sunlit_fraction

    def in_pass(self, t_ns: int) -> bool:
        """Whether a ground-station pass is under way (valid for already-sampled times)."""
        t = t_ns / _NS
        return self._pass_start <= t < self._pass_end

    def elevation_deg(self, t_ns: int) -> float:
        """Ground-station elevation in degrees (0 outside a pass)."""
        return self._elevation(t_ns / _NS)

    @property
    def active_fault(self) -> FaultEpisode | None:
        """The fault episode affecting the most recent sample, if any."""
        return self._fault

    def inject_fault(self, kind: FaultKind) -> None:
        """Force an episode of ``kind`` to start at the next sample (for tests/demos)."""
        self._forced = kind

    # ------------------------------------------------------------------ sampling
    def sample(self, t_ns: int) -> tuple[float, float, float]:
        """Advance to ``t_ns`` and return ``(battery %, storage MB, signal dBm)``."""
        t = t_ns / _NS
        self._advance(t)
        noise = self._rng
        battery = self.battery + noise.gauss(0.0, 0.15)
        battery = 100.0 if battery > 100.0 else (0.0 if battery < 0.0 else battery)
        storage = self.storage
        if self._pass_start <= t < self._pass_end:
            elevation = self._elevation(t)
            signal = (
                SIGNAL_HORIZON_DBM
                + (SIGNAL_ZENITH_DBM - SIGNAL_HORIZON_DBM) * math.sin(math.radians(elevation))
                + noise.gauss(0.0, 1.0)
            )
        else:
            signal = SIGNAL_BASELINE_DBM + noise.gauss(0.0, 0.8)
        if signal < SIGNAL_HEALTHY_MIN_DBM:
            signal = SIGNAL_HEALTHY_MIN_DBM
        elif signal > SIGNAL_HEALTHY_MAX_DBM:
            signal = SIGNAL_HEALTHY_MAX_DBM

        if self._fault is not None or self._recovery is not None or self._forced is not None:
            battery, storage, signal = self._apply_faults(battery, storage, signal)
        elif self._start_p > 0.0 and self._rng.random() < self._start_p:
            self._forced = self._rng.choice(_FAULT_KINDS)
            battery, storage, signal = self._apply_faults(battery, storage, signal)
        return round(battery, 2), round(storage, 1), round(signal, 1)

    def _elevation(self, t: float) -> float:
        if not self._pass_start <= t < self._pass_end:
            return 0.0
        x = (t - self._pass_start) / (self._pass_end - self._pass_start)
        return self._pass_peak_deg * math.sin(math.pi * x)

    def _advance(self, t: float) -> None:
        last = self._t
        if last is None:
            self._t = t
            self._schedule_first_pass(t)
            return
        while t > last:
            step = t - last
            if step > _MAX_STEP_S:
                step = _MAX_STEP_S
            self._integrate(last, step)
            last += step
        self._t = last
        if t >= self._pass_end:
            self._schedule_next_pass(t)  # so that a pass starting just now is seen now

    def _integrate(self, t: float, dt: float) -> None:
        """Integrate battery and storage over ``[t, t + dt)`` (state taken at ``t``)."""
        if t >= self._pass_end:
            self._schedule_next_pass(t)
        passing = self._pass_start <= t < self._pass_end
        phase = (t / self.period_s + self.phase_offset) % 1.0
        imaging = self.imaging_start <= phase < self.imaging_end and not passing
        rate = self.charge_rate if phase < self.sunlit_fraction else -self.drain_rate
        if imaging:
            rate -= self.imaging_load
        if passing:
            rate -= self.transmit_load
        battery = self.battery + rate * dt
        self.battery = 100.0 if battery > 100.0 else (0.0 if battery < 0.0 else battery)

        fill = self.housekeeping_rate
        if imaging:
            fill += self.imaging_rate
        if passing:
            fill -= self.downlink_rate
        storage = self.storage + fill * dt
        if fill < 0.0 and storage < STORAGE_RESERVE_MB:
            storage = min(self.storage, STORAGE_RESERVE_MB)
        self.storage = min(storage, STORAGE_CAPACITY_MB)

    def _schedule_first_pass(self, t: float) -> None:
        r = self._orbit
        duration = r.uniform(8.0, 10.0) * 60.0
        # Some satellites start mid-pass, the others within one nominal spacing.
        self._pass_start = t + r.uniform(-duration, self._pass_spacing_s)
        self._pass_end = self._pass_start + duration
        self._pass_peak_deg = r.uniform(15.0, 90.0)

    def _schedule_next_pass(self, t: float) -> None:
        r = self._orbit
        while self._pass_end <= t:
            self._pass_start += self._pass_spacing_s * r.uniform(0.6, 1.4)
            self._pass_end = self._pass_start + r.uniform(8.0, 10.0) * 60.0
            self._pass_peak_deg = r.uniform(15.0, 90.0)

    # ------------------------------------------------------------------ faults
    def _start_fault(self, kind: FaultKind, storage: float) -> FaultEpisode:
        r = self._rng
        if kind is FaultKind.BATTERY_CELL_FAILURE:
            start = r.uniform(2.0, 6.0)
            return FaultEpisode(kind, "battery", *_len(r, 5, 20), start, r.uniform(start, 9.0))
        if kind is FaultKind.STORAGE_RUNAWAY:
            start = max(storage, STORAGE_HIGH_MB + 500.0) + r.uniform(0.0, 1_000.0)
            end = r.uniform(start, STORAGE_CAPACITY_MB - 200.0)
            return FaultEpisode(kind, "storage", *_len(r, 5, 20), start, end)
        if kind is FaultKind.ANTENNA_FAULT:
            level = r.uniform(-120.0, -108.0)
            return FaultEpisode(kind, "signal", *_len(r, 3, 12), level, level + r.uniform(-3, 3))
        metric = r.choice(_GLITCH_METRICS)
        stuck = {"battery": 0.0, "storage": 99_999.0, "signal": -150.0}[metric]
        return FaultEpisode(kind, metric, *_len(r, 1, 2), stuck, stuck)

    def _apply_faults(
        self, battery: float, storage: float, signal: float
    ) -> tuple[float, float, float]:
        fault = self._fault
        if fault is not None and fault.remaining <= 0:
            # The episode is over; slow metrics (battery, storage) recover gradually.
            self._fault = None
            if fault.kind in (FaultKind.BATTERY_CELL_FAILURE, FaultKind.STORAGE_RUNAWAY):
                self._recovery = _Recovery(fault.metric, fault.end_value, 2 * fault.length)
        if self._forced is not None:
            self._fault = self._start_fault(self._forced, storage)
            self._forced = None
            self._recovery = None
        fault = self._fault
        if fault is not None:
            value = fault.current_value()
            fault.remaining -= 1
            if fault.metric == "battery":
                return value, storage, signal
            if fault.metric == "storage":
                return battery, value, signal
            if fault.kind is FaultKind.ANTENNA_FAULT:
                value += self._rng.gauss(0.0, 1.0)
            return battery, storage, max(-200.0, min(value, SIGNAL_LOW_DBM - 1.0))

        recovery = self._recovery
        if recovery is not None:
            recovery.done += 1
            w = recovery.done / (recovery.length + 1)
            if recovery.metric == "battery":
                battery = recovery.from_value + (battery - recovery.from_value) * w
            else:
                storage = recovery.from_value + (storage - recovery.from_value) * w
            if recovery.done >= recovery.length:
                self._recovery = None
        return battery, storage, signal


# Measured over 1M samples: an episode yields ~8.7 anomalous samples on average and keeps
# new episodes from starting for ~20 samples (episode + recovery tail), so with a start
# probability p the anomalous share is p * 8.7 / (1 + 20.2 p).
_ANOMALOUS_PER_EPISODE = 8.7
_BLOCKED_PER_EPISODE = 20.2


def episode_start_probability(anomaly_rate: float) -> float:
    """The per-sample episode start probability that makes ``anomaly_rate`` of the points
    anomalous (inverts ``f = p * A / (1 + p * B)``; shares above ~40 % need p = 1)."""
    if anomaly_rate <= 0.0:
        return 0.0
    denominator = _ANOMALOUS_PER_EPISODE - anomaly_rate * _BLOCKED_PER_EPISODE
    if denominator <= anomaly_rate:
        return 1.0
    return min(1.0, anomaly_rate / denominator)


def _len(r: random.Random, low: int, high: int) -> tuple[int, int]:
    n = r.randint(low, high)
    return n, n
