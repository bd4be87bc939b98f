"""Rows for archive tests: satellite telemetry, and a table with every column type; the
sessions pipeline's ``started`` message."""

from __future__ import annotations

import json

from orbitstream.core.batch import Row
from orbitstream.core.tables import ColType, Column, Table

__all__ = ["MIXED", "T0", "mixed_rows", "started_message", "telemetry_rows"]

# 2027-01-15T08:00:00Z
T0 = 1_800_000_000_000_000_000

MIXED = Table(
    "mixed",
    (
        Column("time", ColType.TIMESTAMP),
        Column("entity", ColType.STRING),
        Column("counter", ColType.UINT64),
        Column("delta", ColType.INT64),
        Column("up", ColType.BOOL),
        Column("tags", ColType.STRING_LIST),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
        Column("note", ColType.STRING, nullable=True),
    ),
    time_column="time",
    order_by=("entity", "time"),
)


def mixed_rows(n: int) -> list[Row]:
    return [
        (
            T0 + i,
            f"e{i % 3}",
            2**64 - 1 - i,
            -(2**62) + i,
            i % 2 == 0,
            tuple(f"t{k}" for k in range(i % 3)),
            {f"m{k}": k * 0.5 + i for k in range(i % 4)},
            {"hw": "rev4", "sw": f"v{i}"} if i % 2 else {},
            None if i % 5 == 0 else f"note {i}",
        )
        for i in range(n)
    ]


def telemetry_rows(n: int, start_ns: int = T0) -> list[Row]:
    return [
        (
            start_ns + i * 1000,
            f"SAT-{i % 7}",
            float(i % 100),
            100.0 + i,
            -50.0,
            i % 10 == 0,
            ("battery_low",) if i % 10 == 0 else (),
            start_ns + i,
        )
        for i in range(n)
    ]


def started_message(session: str, vehicle: str, ts: str) -> bytes:
    """A sessions-topic message opening ``session`` at ``ts`` (RFC 3339)."""
    return json.dumps(
        {
            "session_id": session,
            "vehicle_id": vehicle,
            "order_id": f"order-{vehicle}",
            "status": "started",
            "timestamp": ts,
            "start_lat": 40.75,
            "start_lon": -73.98,
            "end_lat": 40.76,
            "end_lon": -73.99,
            "current_lat": 40.75,
            "current_lon": -73.98,
        }
    ).encode()
