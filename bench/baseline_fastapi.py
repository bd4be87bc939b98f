"""The "typical Python" baseline for bench/ingest.py: the seed API on FastAPI + pydantic.

Same routes and field constraints as the service's wire format, points kept in an
in-memory list (no store, no batching, no anomaly detection). Run it the way one would
in production, one worker on uvloop + httptools, access log off::

    python -m uvicorn baseline_fastapi:app --app-dir bench --host 127.0.0.1 --port 8081 \\
        --workers 1 --loop uvloop --http httptools --no-access-log --log-level warning

``GET /stats`` (not part of the seed API) reports how many points were stored, so the
benchmark can check that every 202 was kept.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

__all__ = ["TelemetryPoint", "app"]

_MIN_NS = 946_684_800_000_000_000  # 2000-01-01: smaller integers are not epoch nanoseconds
_MAX_NS = 2**63 - 1


class TelemetryPoint(BaseModel):
    satellite_id: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    ]
    battery_charge_percent: Annotated[float, Field(ge=0.0, le=100.0)]
    storage_usage_mb: Annotated[float, Field(ge=0.0)]
    signal_strength_dbm: Annotated[float, Field(ge=-200.0, le=0.0)]
    timestamp: AwareDatetime | Annotated[int, Field(ge=_MIN_NS, le=_MAX_NS)] | None = None


STORE: list[TelemetryPoint] = []
_STARTED = dt.datetime.now(dt.UTC)

app = FastAPI(title="seed API baseline (FastAPI + pydantic)")


@app.post("/telemetry", status_code=202)
async def telemetry(point: TelemetryPoint) -> dict[str, str]:
    STORE.append(point)
    return {"status": "accepted", "satellite_id": point.satellite_id}


@app.post("/telemetry/batch", status_code=202)
async def telemetry_batch(points: list[TelemetryPoint]) -> dict[str, Any]:
    STORE.extend(points)
    return {"status": "accepted", "accepted": len(points), "rejected": 0}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy", "started": _STARTED.isoformat()}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"points": len(STORE)}
