"""Read-side queries behind the dashboard's JSON endpoints (ClickHouse SQL).

The page reads only through these; they never touch a sink's write path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

__all__ = ["DashboardQueries"]


class _Result(Protocol):
    columns: list[str]
    rows: list[tuple[object, ...]]


class _Store(Protocol):
    async def query(self, sql: str, params: dict[str, object] | None = None) -> Any: ...


def render_sql(
    clickhouse: dict[str, str], postgres: dict[str, str], dialect: str, namespace: str | None
) -> dict[str, str]:
    """A dashboard's statements for ``dialect``, with ``@ns.`` replaced by the pipeline's
    namespace (``starlink.``), or removed for the store's default."""
    prefix = f"{namespace}." if namespace else ""
    sql = postgres if dialect == "postgres" else clickhouse
    return {k: v.replace("@ns.", prefix) for k, v in sql.items()}


def _iso(value: object) -> str | None:
    """ClickHouse ``DateTime64`` text (UTC) or a datetime -> RFC 3339."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    text = str(value)
    if "T" in text:
        return text
    return text.replace(" ", "T", 1) + "Z"


class DashboardQueries:
    """Summary and per-satellite series for the built-in page.

    :param namespace: the satellites pipeline's namespace (``None``: the store's default).
    :param stale_secs: a satellite with no point for this long shows as ``stale``.
    """

    def __init__(
        self,
        store: _Store,
        *,
        dialect: str = "clickhouse",
        namespace: str | None = None,
        window_secs: int = 60,
        stale_secs: int = 60,
        latest_secs: int = 300,
    ) -> None:
        self.store = store
        self.sql = render_sql(_CLICKHOUSE, _POSTGRES, dialect, namespace)
        self.window_secs = window_secs
        self.stale_secs = stale_secs
        self.latest_secs = latest_secs

    async def summary(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        # Everything here stays cheap however large the table grows: the window counts read
        # only recent data, per-satellite counts come from the 5-minute rollup (kept with the
        # same dedup as the raw rows), and latest values from the last ``latest_secs``.
        window = await self.store.query(self.sql["window"], {"w": self.window_secs})
        row = window.rows[0]
        in_window, anomalies_window = int(str(row[0] or 0)), int(str(row[1] or 0))
        # Rate over the window, or over the time since the first point when that is shorter
        # (just after start the window is not yet full).
        span = float(str(row[2])) if row[2] is not None and in_window else float(self.window_secs)
        span = min(float(self.window_secs), max(1.0, span))
        counts = await self.store.query(self.sql["sat_counts"])
        latest = {
            r[0]: r[1:]
            for r in (await self.store.query(self.sql["sat_latest"], {"h": self.latest_secs})).rows
        }
        satellites = []
        total = anomalies = 0
        for sid, points, anom, last_bucket in counts.rows:
            total += int(str(points))
            anomalies += int(str(anom))
            recent = latest.get(sid)
            if recent is not None:
                last_seen, battery, storage, signal, latest_anom, age = recent
                status = (
                    "stale"
                    if float(str(age)) > self.stale_secs
                    else ("anomaly" if latest_anom else "ok")
                )
            else:  # nothing lately: the rollup bucket tells when it was last seen
                last_seen, battery, storage, signal, status = last_bucket, None, None, None, "stale"
            satellites.append(
                {
                    "satellite_id": sid,
                    "last_seen": _iso(last_seen),
                    "points": int(str(points)),
                    "anomalies": int(str(anom)),
                    "battery": battery,
                    "storage": storage,
                    "signal": signal,
                    "status": status,
                }
            )
        alerts = await self.store.query(self.sql["alerts"], {"p": "satellites"})
        return {
            "generated_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "window_seconds": self.window_secs,
            "total_points": total,
            "total_anomalies": anomalies,
            "ingest_rate": in_window / span,
            "anomaly_rate": (anomalies_window / in_window) if in_window else 0.0,
            "active_alerts": [
                {
                    "entity_id": e,
                    "rule": r,
                    "since": _iso(s),
                    "value": v,
                    "threshold": t,
                    "message": m,
                }
                for e, r, s, v, t, m in alerts.rows
            ],
            "satellites": satellites,
        }

    async def series(self, satellite_id: str, minutes: int = 60) -> dict[str, Any]:
        minutes = max(1, min(minutes, 7 * 24 * 60))
        bucket = max(1, (minutes * 60) // 720)
        res = await self.store.query(
            self.sql["series"], {"b": bucket, "sid": satellite_id, "m": minutes}
        )
        cols: list[list[Any]] = [[], [], [], [], []]
        for row in res.rows:
            for i, v in enumerate(row):
                cols[i].append(int(str(v)) if i in (0, 4) else v)
        return {
            "satellite_id": satellite_id,
            "bucket_seconds": bucket,
            "t": cols[0],
            "battery": cols[1],
            "storage": cols[2],
            "signal": cols[3],
            "anomalies": cols[4],
        }

    async def firing_alerts(self, pipeline: str) -> list[tuple[str, str]]:
        """``(entity_id, rule)`` pairs whose latest alert event is ``firing``."""
        res = await self.store.query(self.sql["firing"], {"p": pipeline})
        return [(str(e), str(r)) for e, r in res.rows]


_CLICKHOUSE = {
    "window": (
        "SELECT count(), countIf(is_anomaly), "
        "dateDiff('millisecond', min(received_at), now64(9)) / 1000 "
        "FROM @ns.telemetry WHERE received_at >= now64(9) - toIntervalSecond({w:UInt32})"
    ),
    "sat_counts": (
        "SELECT satellite_id, sum(s_data_points), sum(s_anomaly_points), max(bucket) "
        "FROM @ns.satellite_stats_agg GROUP BY satellite_id ORDER BY satellite_id"
    ),
    "sat_latest": (
        "SELECT satellite_id, max(time), argMax(battery_charge_percent, time), "
        "argMax(storage_usage_mb, time), argMax(signal_strength_dbm, time), "
        "argMax(is_anomaly, time), dateDiff('millisecond', max(time), now64(9)) / 1000 "
        "FROM @ns.telemetry WHERE time >= now64(9) - toIntervalSecond({h:UInt32}) "
        "GROUP BY satellite_id"
    ),
    "alerts": (
        "SELECT entity_id, rule, since, value, threshold, message FROM ("
        " SELECT entity_id, rule, argMax(state, time) AS st, max(time) AS since,"
        " argMax(value, time) AS value, argMax(threshold, time) AS threshold,"
        " argMax(message, time) AS message"
        " FROM @ns.alerts WHERE pipeline = {p:String} GROUP BY entity_id, rule"
        ") WHERE st = 'firing' ORDER BY since DESC"
    ),
    "firing": (
        "SELECT entity_id, rule FROM @ns.alerts WHERE pipeline = {p:String} "
        "GROUP BY entity_id, rule HAVING argMax(state, time) = 'firing'"
    ),
    "series": (
        "SELECT toUnixTimestamp(toStartOfInterval(time, toIntervalSecond({b:UInt32}))) AS t,"
        " avg(battery_charge_percent), avg(storage_usage_mb), avg(signal_strength_dbm),"
        " countIf(is_anomaly)"
        " FROM @ns.telemetry WHERE satellite_id = {sid:String}"
        " AND time >= now64(9) - toIntervalMinute({m:UInt32})"
        " GROUP BY t ORDER BY t"
    ),
}

_POSTGRES = {
    # received_at has no index: the time condition (1 day of slack) lets the planner skip
    # old partitions; points received now but stamped more than a day ago are not counted.
    "window": (
        "SELECT count(*), count(*) FILTER (WHERE is_anomaly), "
        "extract(epoch FROM now() - min(received_at)) FROM @ns.telemetry "
        "WHERE received_at >= now() - make_interval(secs => %(w)s) "
        "AND time >= now() - interval '1 day'"
    ),
    "sat_counts": (
        "SELECT satellite_id, sum(data_points), sum(anomaly_points), max(bucket) "
        "FROM @ns.satellite_stats GROUP BY satellite_id ORDER BY satellite_id"
    ),
    "sat_latest": (
        "SELECT DISTINCT ON (satellite_id) satellite_id, time, battery_charge_percent, "
        "storage_usage_mb, signal_strength_dbm, is_anomaly, extract(epoch FROM now() - time) "
        "FROM @ns.telemetry WHERE time >= now() - make_interval(secs => %(h)s) "
        "ORDER BY satellite_id, time DESC"
    ),
    "alerts": (
        "SELECT entity_id, rule, since, value, threshold, message FROM ("
        " SELECT DISTINCT ON (entity_id, rule) entity_id, rule, state, time AS since, value,"
        " threshold, message FROM @ns.alerts WHERE pipeline = %(p)s"
        " ORDER BY entity_id, rule, time DESC) a WHERE state = 'firing' ORDER BY since DESC"
    ),
    "firing": (
        "SELECT entity_id, rule FROM ("
        " SELECT DISTINCT ON (entity_id, rule) entity_id, rule, state FROM @ns.alerts"
        " WHERE pipeline = %(p)s ORDER BY entity_id, rule, time DESC) a WHERE state = 'firing'"
    ),
    "series": (
        "SELECT (floor(extract(epoch FROM time) / %(b)s) * %(b)s)::bigint AS t,"
        " avg(battery_charge_percent), avg(storage_usage_mb), avg(signal_strength_dbm),"
        " count(*) FILTER (WHERE is_anomaly)"
        " FROM @ns.telemetry WHERE satellite_id = %(sid)s"
        " AND time >= now() - make_interval(mins => %(m)s)"
        " GROUP BY t ORDER BY t"
    ),
}
