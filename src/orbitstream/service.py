"""The service's own HTTP routes, for every pipeline a runtime runs.

``GET /health`` (200, or 503 while a sink is down or a source failed), ``GET /metrics``
(Prometheus), ``GET /openapi.json``, the dashboard (``GET /``, ``/static/*``,
``/api/dashboard/*`` for the satellites view, ``/api/pipelines`` for every running
pipeline's rate, errors and lag, and the configured thresholds), and ``POST /api/query``
(read-only; docs/security.md). Ingest routes come from the pipelines' HTTP sources.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from orbitstream.dashboard import assets
from orbitstream.dashboard.queries import DashboardQueries
from orbitstream.dashboard.starlink import StarlinkQueries
from orbitstream.errors import QueryError
from orbitstream.openapi import openapi_document
from orbitstream.sources.http.origin import is_loopback, origin_problem
from orbitstream.sources.http.push import HttpPushSource
from orbitstream.sources.http.server import Request, Response, Router, error_response

if TYPE_CHECKING:
    from orbitstream.runtime import Runtime

__all__ = ["ServiceRoutes"]


def _enc_hook(value: object) -> object:
    """JSON for values PostgreSQL returns that msgspec does not encode natively."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode
_RATE_WINDOW_SECS = 60.0


class ServiceRoutes:
    """The routes; state comes from the :class:`~orbitstream.runtime.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        sat = runtime.plan("satellites")
        self.dashboard = (
            DashboardQueries(
                runtime.store,
                dialect=runtime.store.query_dialect,
                namespace=sat.namespace,
            )
            if sat is not None
            else None
        )
        sl = runtime.plan("starlink")
        self.starlink = (
            StarlinkQueries(
                runtime.store, dialect=runtime.store.query_dialect, namespace=sl.namespace
            )
            if sl is not None
            else None
        )
        self._samples: collections.deque[tuple[float, dict[str, tuple[int, int, int]]]] = (
            collections.deque(maxlen=64)
        )

    def install(self, r: Router) -> None:
        r.add("GET", "/health", self.health)
        r.add("GET", "/metrics", self.metrics_route)
        r.add("GET", "/openapi.json", self.openapi)
        r.add("GET", "/", self.index)
        r.add_prefix("GET", "/static/", self.static)
        r.add("GET", "/api/dashboard/summary", self.summary)
        r.add("GET", "/api/dashboard/series", self.series)
        r.add("GET", "/api/dashboard/starlink", self.starlink_summary)
        r.add("GET", "/api/pipelines", self.pipelines)
        r.add("POST", "/api/query", self.query)

    # -- health and metrics --------------------------------------------------------------
    def health(self, request: Request) -> Response:
        rt = self.rt
        healthy = rt.healthy
        doc = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "ack_mode": rt.settings.http.ack_mode,
            "uptime_seconds": round(time.time() - rt.started_at, 3),
            **rt.health(),
        }
        return Response(200 if healthy else 503, _encode(doc))

    def metrics_route(self, request: Request) -> Response:
        return Response(200, self.rt.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def openapi(self, request: Request) -> Response:
        ingests = [r.source.ingest for r in self.rt.running if isinstance(r.source, HttpPushSource)]
        return Response(200, _encode(openapi_document(self.rt.settings, ingests)))

    # -- dashboard ----------------------------------------------------------------------
    def index(self, request: Request) -> Response:
        return Response(
            200, assets.index_html(), "text/html; charset=utf-8", [("Cache-Control", "no-cache")]
        )

    def static(self, request: Request) -> Response:
        found = assets.load_asset(request.path.removeprefix("/static/"))
        if found is None:
            return error_response(404, f"no asset {request.path}")
        data, ctype = found
        return Response(200, data, ctype, [("Cache-Control", "no-cache")])

    def _no_satellites(self) -> Response:
        return error_response(404, "the satellites pipeline is not running in this service")

    async def summary(self, request: Request) -> Response:
        if self.dashboard is None:
            return self._no_satellites()
        try:
            return Response(200, _encode(await self.dashboard.summary()))
        except QueryError as exc:
            return error_response(500, f"query failed: {exc}")

    async def series(self, request: Request) -> Response:
        q = request.query
        sid = q.get("satellite_id", "")
        if not sid:
            return error_response(
                422,
                "satellite_id is required",
                errors=[{"field": "satellite_id", "message": "missing required query parameter"}],
            )
        minutes = _minutes(q)
        if isinstance(minutes, Response):
            return minutes
        if self.dashboard is None:
            return self._no_satellites()
        try:
            return Response(200, _encode(await self.dashboard.series(sid, minutes)))
        except QueryError as exc:
            return error_response(500, f"query failed: {exc}")

    async def starlink_summary(self, request: Request) -> Response:
        """The Starlink view: terminals online, alerts open now, latency/obstruction trend."""
        if self.starlink is None:
            return error_response(404, "the starlink pipeline is not running in this service")
        minutes = _minutes(request.query)
        if isinstance(minutes, Response):
            return minutes
        try:
            return Response(200, _encode(await self.starlink.summary(minutes)))
        except QueryError as exc:
            return error_response(500, f"query failed: {exc}")

    def _counts(self) -> dict[str, tuple[int, int, int]]:
        """Per pipeline: rows committed (all sinks, all tables / sinks), records rejected
        or dead-lettered, sink errors."""
        c = self.rt.metrics.counters
        out: dict[str, tuple[int, int, int]] = {}
        for r in self.rt.running:
            name = r.plan.name
            sinks = max(1, len(r.pipeline.lanes))
            written = sum(v for k, v in c["written_rows"].items() if k[0] == name) // sinks
            # each refused record once: a source counts it as rejected (HTTP, Kafka) or
            # dead-letters it (Starlink); source_errors is a breakdown of those by kind
            errors = c["rejected"].get((name,), 0) + sum(
                v for k, v in c["dead_letters"].items() if k[0] == name
            )
            sink_errors = sum(v for k, v in c["sink_errors"].items() if k[0] == name)
            out[name] = (written, errors, sink_errors)
        return out

    def pipelines(self, request: Request) -> Response:
        """Every running pipeline: source, namespace, tables, what it declared (thresholds),
        and its rates over the last minute."""
        now = time.monotonic()
        counts = self._counts()
        self._samples.append((now, counts))
        while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW_SECS:
            self._samples.popleft()
        t0, first = self._samples[0]
        span = now - t0
        health = self.rt.health()["pipelines"]
        docs = []
        for r in self.rt.running:
            name = r.plan.name
            written, errors, sink_errors = counts[name]
            w0, e0, s0 = first.get(name, (0, 0, 0))
            if span < 1.0:  # first look: averages since start
                w0, e0, s0 = 0, 0, 0
                elapsed = max(1.0, time.time() - self.rt.started_at)
            else:
                elapsed = span
            docs.append(
                {
                    "name": name,
                    "description": r.plan.spec.description,
                    "source": r.plan.source,
                    "namespace": r.plan.namespace,
                    "tables": [t.name for t in r.plan.tables],
                    "info": dict(r.parts.info),
                    "status": health[name]["status"],
                    "rows_per_s": (written - w0) / elapsed,
                    "errors_per_s": (errors - e0) / elapsed,
                    "sink_errors_per_s": (sink_errors - s0) / elapsed,
                    "rows_total": written,
                    "errors_total": errors,
                    "buffered_rows": sum(
                        int(str(s["buffered_rows"])) for s in health[name]["sinks"].values()
                    ),
                    "lag": health[name]["source"].get("lag"),
                    "source_state": health[name]["source"],
                }
            )
        return Response(200, _encode({"pipelines": docs}))

    # -- the query endpoint ---------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        """``POST /api/query`` ``{"sql": "SELECT …", "pipeline": "…"}``: a read-only query in
        the pipeline's namespace (docs/security.md)."""
        http = self.rt.settings.http
        if not http.query_allow_remote and not is_loopback(request.client):
            return error_response(
                403,
                "the query endpoint answers loopback clients only "
                "(set ORBITSTREAM_QUERY_ALLOW_REMOTE=true to change)",
            )
        problem = origin_problem(request, http.allowed_hosts)
        if problem is not None:
            return error_response(403, problem)
        if request.content_type != "application/json":
            return error_response(
                415,
                'send the query as application/json: {"sql": "SELECT ..."}',
                [("Accept-Post", "application/json")],
            )
        try:
            doc = msgspec.json.decode(request.body)
        except (msgspec.DecodeError, RecursionError):
            doc = None
        sql = doc.get("sql") if isinstance(doc, dict) else None
        if not isinstance(sql, str) or not sql.strip():
            return error_response(
                400,
                'send {"sql": "SELECT ..."}',
                errors=[{"field": "sql", "message": "a non-empty string is required"}],
            )
        database, bad = self._database(doc)
        if bad is not None:
            return bad
        try:
            rows = await self.rt.store.user_query(sql, database)
        except QueryError as exc:
            return error_response(400, str(exc), code=exc.code)
        return Response(
            200, _encode({"columns": rows.columns, "types": rows.types, "rows": rows.rows})
        )

    def _database(self, doc: Any) -> tuple[str | None, Response | None]:
        """The namespace of ``doc["pipeline"]`` (``None``: the store's default)."""
        name = doc.get("pipeline") if isinstance(doc, dict) else None
        if name is None:
            name = "satellites"
        if not isinstance(name, str):
            return None, error_response(
                400,
                "pipeline must be a name",
                errors=[{"field": "pipeline", "message": "expected a string"}],
            )
        from orbitstream.runtime import plan_pipelines

        try:
            (plan,) = plan_pipelines(self.rt.settings, [name])
        except Exception as exc:
            return None, error_response(
                400, str(exc), errors=[{"field": "pipeline", "message": str(exc)}]
            )
        return plan.namespace, None


_MAX_MINUTES = 7 * 24 * 60


def _minutes(query: Mapping[str, str]) -> int | Response:
    """The ``minutes`` query parameter of a dashboard view (default 60, at most a week), or
    the 422 that names it."""
    raw = query.get("minutes", "60")
    try:
        minutes = int(raw)
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= _MAX_MINUTES:
        return error_response(
            422,
            f"minutes must be an integer from 1 to {_MAX_MINUTES}",
            errors=[{"field": "minutes", "message": f"expected 1..{_MAX_MINUTES}, got {raw!r}"}],
        )
    return minutes
