"""Satellite fleet simulator and HTTP load driver for the telemetry ingest API."""

from __future__ import annotations

from orbitstream.simulate.cli import render_summary, simulate
from orbitstream.simulate.driver import (
    LatencyHistogram,
    ServerUnreachableError,
    SimulatorConfig,
    Summary,
    TelemetryPoint,
    run_simulation,
    run_simulation_blocking,
    satellite_ids,
)
from orbitstream.simulate.model import (
    BATTERY_LOW_PERCENT,
    SIGNAL_LOW_DBM,
    STORAGE_CAPACITY_MB,
    STORAGE_HIGH_MB,
    FaultEpisode,
    FaultKind,
    SatelliteModel,
)

__all__ = [
    "BATTERY_LOW_PERCENT",
    "SIGNAL_LOW_DBM",
    "STORAGE_CAPACITY_MB",
    "STORAGE_HIGH_MB",
    "FaultEpisode",
    "FaultKind",
    "LatencyHistogram",
    "SatelliteModel",
    "ServerUnreachableError",
    "SimulatorConfig",
    "Summary",
    "TelemetryPoint",
    "render_summary",
    "run_simulation",
    "run_simulation_blocking",
    "satellite_ids",
    "simulate",
]
