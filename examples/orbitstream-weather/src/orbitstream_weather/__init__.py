"""An example OrbitStream plug-in: a source of weather-station readings and the pipeline
that stores them. Everything here comes from ``orbitstream``'s public API."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence

from pydantic import Field

from orbitstream import (
    BackpressureError,
    ColType,
    Column,
    PipelineBuild,
    PipelineParts,
    PipelineSettings,
    PipelineSpec,
    Row,
    Settings,
    SourceContext,
    SourceType,
    Table,
    ThresholdRule,
    ThresholdRules,
)

__all__ = ["SOURCE", "SPEC", "StationSource", "WeatherSettings"]

READINGS = Table(
    name="readings",
    columns=(
        Column("time", ColType.TIMESTAMP),
        Column("station_id", ColType.STRING, low_cardinality=True),
        Column("temperature_c", ColType.FLOAT64),
        Column("humidity_pct", ColType.FLOAT64),
        Column("wind_ms", ColType.FLOAT64),
        Column("is_anomaly", ColType.BOOL),
        Column("anomaly_reasons", ColType.STRING_LIST),
    ),
    time_column="time",
    order_by=("station_id", "time"),
    entity_column="station_id",
    comment="Weather-station readings (an example plug-in).",
)


class WeatherSettings(PipelineSettings):
    """``[pipelines.weather]`` in the TOML file, or ``ORBITSTREAM_WEATHER__<FIELD>``."""

    stations: int = Field(10, ge=1, le=10_000)
    interval_secs: float = Field(1.0, gt=0)
    heat_threshold_c: float = Field(40.0)
    seed: int = 7


class StationSource:
    """Every ``interval_secs`` each station reports one reading. A tick's rows are
    submitted under a key of their own, so were it replayed the stores would keep one copy."""

    name = "weather-stations"

    def __init__(self, settings: WeatherSettings, rules: ThresholdRules) -> None:
        self.settings = settings
        self.rules = rules
        self.rng = random.Random(settings.seed)
        self.tick = 0
        self._stop = asyncio.Event()
        self._ctx: SourceContext | None = None

    async def start(self, ctx: SourceContext) -> None:
        self._ctx = ctx
        ctx.on_health(lambda: {"ticks": self.tick, "stations": self.settings.stations})

    def readings(self, now_ns: int) -> list[Row]:
        rows: list[Row] = []
        hour = (now_ns / 3.6e12) % 24
        for i in range(self.settings.stations):
            temp = 15 + 12 * math.sin((hour - 9) / 24 * 2 * math.pi) + self.rng.gauss(0, 3) + i
            values = (temp, self.rng.uniform(20, 90), abs(self.rng.gauss(4, 3)))
            reasons = self.rules.reasons(values[:1])
            rows.append((now_ns, f"WS-{i:03d}", *values, bool(reasons), reasons))
        return rows

    async def run(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        while not self._stop.is_set():
            self.tick += 1
            rows = self.readings(time.time_ns())
            while not self._stop.is_set():
                try:
                    ctx.submit({"readings": rows}, key=f"tick-{self.settings.seed}-{self.tick}")
                    break
                except BackpressureError:
                    await ctx.wait_for_room(len(rows))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.interval_secs)

    async def stop(self, timeout_secs: float) -> None:
        self._stop.set()


def _create(build: PipelineBuild, handler: object) -> StationSource:
    assert isinstance(handler, ThresholdRules) and isinstance(build.own, WeatherSettings)
    return StationSource(build.own, handler)


SOURCE = SourceType(
    name="weather-stations",
    description="simulated weather stations (the example plug-in)",
    handler="orbitstream.ThresholdRules",
    create=_create,
)


def _tables(own: WeatherSettings, settings: Settings) -> Sequence[Table]:
    return (READINGS.with_ttl(settings.retention_days),)


def _build(build: PipelineBuild) -> PipelineParts:
    own = build.own
    assert isinstance(own, WeatherSettings)
    rules = ThresholdRules((ThresholdRule("temperature_c", ">", own.heat_threshold_c, "heat"),))
    source = SOURCE.create(build, rules)
    return PipelineParts(
        source,
        info={
            "thresholds": [
                {
                    "field": "temperature_c",
                    "op": ">",
                    "threshold": own.heat_threshold_c,
                    "rule": "heat",
                }
            ]
        },
    )


SPEC = PipelineSpec(
    name="weather",
    description="Weather-station readings (an example plug-in from examples/).",
    settings=WeatherSettings,
    tables=_tables,
    build=_build,
    sources=("weather-stations",),
    namespace="weather",
)
