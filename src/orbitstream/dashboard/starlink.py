"""Read-side queries behind the dashboard's Starlink view (``/api/dashboard/starlink``):
terminals online, alerts open now, latency and obstruction trends.

A device is *online* when it has a row stamped within ``online_secs`` of now (rows are
15-s aggregates). Alerts open now are the (device, code) pairs whose latest
``alert_events`` row is ``opened``. Trends average ``PingLatencyMsAvg`` and
``ObstructionPercentTime`` over UserTerminal rows per time bucket.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from orbitstream.dashboard.queries import render_sql

__all__ = ["StarlinkQueries"]


class _Store(Protocol):
    async def query(self, sql: str, params: dict[str, object] | None = None) -> Any: ...


def _num(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(str(value))
    except ValueError:
        return None
    return out if out == out else None  # NaN (avg of nothing) -> None


def _iso_ns(value: object) -> str | None:
    if value is None:
        return None
    ns = int(str(value))
    return (
        dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class StarlinkQueries:
    """:param namespace: the starlink pipeline's namespace."""

    def __init__(
        self,
        store: _Store,
        *,
        dialect: str = "clickhouse",
        namespace: str | None = "starlink",
        online_secs: int = 120,
        max_alerts: int = 200,
    ) -> None:
        self.store = store
        self.sql = render_sql(_CLICKHOUSE, _POSTGRES, dialect, namespace)
        self.online_secs = online_secs
        self.max_alerts = max_alerts

    async def summary(self, minutes: int = 60) -> dict[str, Any]:
        minutes = max(1, min(minutes, 7 * 24 * 60))
        bucket = max(15, (minutes * 60) // 240)
        devices = await self.store.query(self.sql["devices"], {"o": self.online_secs})
        counts: dict[str, dict[str, int]] = {}
        for dtype, online, seen in devices.rows:
            counts[str(dtype)] = {"online": int(str(online)), "seen": int(str(seen))}
        alerts = await self.store.query(self.sql["open_alerts"], {"n": self.max_alerts})
        total_open = await self.store.query(self.sql["open_count"])
        trend = await self.store.query(self.sql["trend"], {"b": bucket, "m": minutes})
        t: list[int] = []
        latency: list[float | None] = []
        obstruction: list[float | None] = []
        for ts, lat, obs in trend.rows:
            t.append(int(str(ts)))
            latency.append(_num(lat))
            obstruction.append(_num(obs))
        terminals = counts.get("UserTerminal", {"online": 0, "seen": 0})
        routers = counts.get("Router", {"online": 0, "seen": 0})
        return {
            "generated_at": dt.datetime.now(dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "online_seconds": self.online_secs,
            "terminals_online": terminals["online"],
            "terminals_seen": terminals["seen"],
            "routers_online": routers["online"],
            "routers_seen": routers["seen"],
            "alerts_open": int(str(total_open.rows[0][0] or 0)) if total_open.rows else 0,
            "open_alerts": [
                {
                    "device_type": str(d),
                    "device_id": str(i),
                    "alert_code": int(str(c)),
                    "alert_name": str(n),
                    "since": _iso_ns(s),
                }
                for d, i, c, n, s in alerts.rows
            ],
            "trend": {
                "bucket_seconds": bucket,
                "t": t,
                "latency_ms": latency,
                "obstruction_pct": obstruction,
            },
        }


_OPEN_CH = (
    "SELECT argMax(device_type, ts_ns) AS device_type, device_id, alert_code, "
    "argMax(alert_name, ts_ns) AS alert_name, toUnixTimestamp64Nano(max(ts_ns)) AS since "
    "FROM @ns.alert_events GROUP BY device_id, alert_code "
    "HAVING argMax(event, ts_ns) = 'opened'"
)
_OPEN_PG = (
    "SELECT device_type, device_id, alert_code, alert_name, "
    "(EXTRACT(EPOCH FROM ts_ns) * 1000000)::bigint * 1000 AS since FROM ("
    " SELECT DISTINCT ON (device_id, alert_code) device_type, device_id, alert_code,"
    " alert_name, ts_ns, event FROM @ns.alert_events ORDER BY device_id, alert_code, ts_ns DESC"
    ") AS latest WHERE event = 'opened'"
)

_CLICKHOUSE = {
    "devices": (
        "SELECT device_type, uniqExactIf(device_id, ts_ns >= now64(9) - "
        "toIntervalSecond({o:UInt32})), uniqExact(device_id) FROM @ns.telemetry "
        "WHERE ts_ns >= now64(9) - toIntervalDay(1) GROUP BY device_type"
    ),
    "open_alerts": f"SELECT * FROM ({_OPEN_CH}) ORDER BY since DESC LIMIT {{n:UInt32}}",
    "open_count": f"SELECT count() FROM ({_OPEN_CH})",
    "trend": (
        "SELECT toUnixTimestamp(toStartOfInterval(ts_ns, toIntervalSecond({b:UInt32}))) AS t, "
        "avgIf(metrics['PingLatencyMsAvg'], mapContains(metrics, 'PingLatencyMsAvg')), "
        "avgIf(metrics['ObstructionPercentTime'], mapContains(metrics, 'ObstructionPercentTime'))"
        " FROM @ns.telemetry WHERE device_type = 'UserTerminal' "
        "AND ts_ns >= now64(9) - toIntervalMinute({m:UInt32}) GROUP BY t ORDER BY t"
    ),
}

_POSTGRES = {
    "devices": (
        "SELECT device_type, count(DISTINCT device_id) FILTER (WHERE ts_ns >= now() - "
        "make_interval(secs => %(o)s)), count(DISTINCT device_id) FROM @ns.telemetry "
        "WHERE ts_ns >= now() - interval '1 day' GROUP BY device_type"
    ),
    "open_alerts": f"SELECT * FROM ({_OPEN_PG}) AS o ORDER BY since DESC LIMIT %(n)s",
    "open_count": f"SELECT count(*) FROM ({_OPEN_PG}) AS o",
    "trend": (
        "SELECT (floor(extract(epoch FROM ts_ns) / %(b)s) * %(b)s)::bigint AS t, "
        "avg((metrics->>'PingLatencyMsAvg')::float8), "
        "avg((metrics->>'ObstructionPercentTime')::float8) "
        "FROM @ns.telemetry WHERE device_type = 'UserTerminal' "
        "AND ts_ns >= now() - make_interval(mins => %(m)s) GROUP BY t ORDER BY t"
    ),
}
