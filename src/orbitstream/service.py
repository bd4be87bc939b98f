"""The ingest service: settings -> store, pipeline, HTTP routes; start, run, stop.

Shutdown order on SIGTERM/SIGINT: stop accepting connections, cut every open batch,
finish in-flight requests (in ``sink`` ack mode they wait for their commit), flush and
write every batch, close the store, remove the service file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.protocols import Sink
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.times import TimeWindow
from orbitstream.dashboard import assets
from orbitstream.dashboard.queries import DashboardQueries
from orbitstream.errors import ConfigError
from orbitstream.openapi import openapi_document
from orbitstream.pipelines import satellites
from orbitstream.settings import Settings
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sinks.results import QueryError
from orbitstream.sources.http.ingest import IngestHandlers
from orbitstream.sources.http.origin import is_loopback, origin_problem
from orbitstream.sources.http.server import (
    HttpServer,
    Request,
    Response,
    Router,
    ServerLimits,
    error_response,
)
from orbitstream.stores import build_stores

__all__ = ["SERVICE_FILE", "Service", "chdb_path", "read_service_file"]

logger = logging.getLogger(__name__)
SERVICE_FILE = "service.json"


def _enc_hook(value: object) -> object:
    """JSON for values PostgreSQL returns that msgspec does not encode natively."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)


_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


def sql_dialect(store: object) -> str:
    """``postgres`` for PostgreSQL stores, ``clickhouse`` for chDB and ClickHouse."""
    return "postgres" if getattr(store, "name", "") == "postgres" else "clickhouse"


def server_limits(settings: Settings) -> ServerLimits:
    """The HTTP server's per-client limits from the settings (docs/security.md)."""
    return ServerLimits(
        header_timeout_secs=settings.http_header_timeout_secs,
        body_timeout_secs=settings.http_body_timeout_secs,
        keepalive_timeout_secs=settings.http_keepalive_timeout_secs,
        send_timeout_secs=settings.http_send_timeout_secs,
        max_header_bytes=settings.http_max_header_bytes,
        max_url_bytes=settings.http_max_url_bytes,
        max_body_bytes=settings.max_body_bytes,
        max_connections=settings.http_max_connections,
        write_buffer_high_bytes=settings.http_write_buffer_bytes,
        write_buffer_low_bytes=settings.http_write_buffer_bytes // 4,
    )


def chdb_path(settings: Settings) -> Path:
    return settings.data_dir / "chdb"


def read_service_file(data_dir: Path) -> dict[str, Any] | None:
    """The running service's ``{"pid", "port", "url"}`` if its process is alive."""
    path = data_dir / SERVICE_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(info)


class Service:
    """One process: HTTP ingest + pipeline + embedded store + dashboard."""

    def __init__(self, settings: Settings, *, extra_sinks: Sequence[Sink] = ()) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stores = build_stores(settings)
        self.store = self.stores[0]
        self.tables = satellites.tables(settings.retention_days)
        self.pipeline = Pipeline(
            satellites.PIPELINE,
            self.tables,
            [*self.stores, *extra_sinks],
            limits=PipelineLimits(
                batch_size=settings.batch_size,
                linger_secs=settings.batch_timeout,
                max_buffer_rows=settings.max_buffer_rows,
                max_buffer_bytes=settings.max_buffer_bytes,
                deployment_retry_secs=settings.deployment_error_retry_secs,
            ),
            retry=RetryPolicy(max_secs=settings.retry_max_backoff_secs),
            metrics=self.metrics,
            dead_letters=FileDeadLetters(settings.data_dir / "dead_letters.jsonl"),
        )
        self.mapper = satellites.SatelliteMapper(
            satellites.threshold_rules(
                settings.anomaly_threshold_battery,
                settings.anomaly_threshold_storage,
                settings.anomaly_threshold_signal,
            ),
            self.metrics,
            window=TimeWindow.of(
                settings.timestamp_max_ahead_secs,
                settings.timestamp_max_age,
                [
                    s.time_range_ns
                    for s in (*self.stores, *extra_sinks)
                    if hasattr(s, "time_range_ns")
                ],
            ),
        )
        self.ingest = IngestHandlers(
            self.pipeline,
            self.mapper,
            self.metrics,
            settings.ack_mode,
            ndjson_max_body_bytes=settings.ndjson_max_body_bytes,
            ndjson_max_line_bytes=settings.ndjson_max_line_bytes,
        )
        self.dashboard = DashboardQueries(self.store, dialect=sql_dialect(self.store))
        self.server = HttpServer(
            self._router(), limits=server_limits(settings), on_response=self._count
        )
        self.port: int | None = None
        self._maintenance: asyncio.Future[None] | None = None
        self.stopping = asyncio.Event()
        self._started_at = time.time()

    # -- routes -----------------------------------------------------------------------
    def _router(self) -> Router:
        r = Router()
        r.add("POST", "/telemetry", self.ingest.telemetry)
        r.add("POST", "/telemetry/batch", self.ingest.batch)
        # The NDJSON handler enforces its own limit (answering with next_line); the server's
        # is a backstop just above it.
        r.add_stream(
            "POST",
            "/telemetry/ndjson",
            self.ingest.ndjson,
            max_body=self.settings.ndjson_max_body_bytes + (1 << 20),
        )
        r.add("GET", "/health", self.health)
        r.add("GET", "/metrics", self.metrics_route)
        r.add("GET", "/openapi.json", self.openapi)
        r.add("GET", "/", self.index)
        r.add_prefix("GET", "/static/", self.static)
        r.add("GET", "/api/dashboard/summary", self.summary)
        r.add("GET", "/api/dashboard/series", self.series)
        r.add("POST", "/api/query", self.query)
        return r

    def _count(self, request: Request, response: Response) -> None:
        # by route pattern, never the raw path: the label set stays bounded
        self.metrics.counters["http_requests"][(request.route, str(response.status))] += 1

    def health(self, request: Request) -> Response:
        healthy = self.pipeline.healthy
        doc = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "ack_mode": self.settings.ack_mode,
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "sinks": self.pipeline.health(),
        }
        return Response(200 if healthy else 503, _encode(doc))

    def metrics_route(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def openapi(self, request: Request) -> Response:
        return Response(200, _encode(openapi_document(self.settings)))

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

    async def summary(self, request: Request) -> Response:
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
        try:
            minutes = int(q.get("minutes", "60"))
        except ValueError:
            return error_response(
                422,
                "minutes must be an integer",
                errors=[{"field": "minutes", "message": "expected an integer"}],
            )
        try:
            return Response(200, _encode(await self.dashboard.series(sid, minutes)))
        except QueryError as exc:
            return error_response(500, f"query failed: {exc}")

    async def query(self, request: Request) -> Response:
        """``POST /api/query`` ``{"sql": "SELECT …"}``: a read-only query (see docs/security.md)."""
        if not self.settings.query_allow_remote and not is_loopback(request.client):
            return error_response(
                403,
                "the query endpoint answers loopback clients only "
                "(set ORBITSTREAM_QUERY_ALLOW_REMOTE=true to change)",
            )
        problem = origin_problem(request, self.settings.allowed_hosts)
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
        try:
            rows = await self.store.user_query(sql)
        except QueryError as exc:
            return error_response(400, str(exc), code=exc.code)
        return Response(
            200, _encode({"columns": rows.columns, "types": rows.types, "rows": rows.rows})
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> int:
        s = self.settings
        # Short GIL switch interval: the event loop thread releases the GIL on every
        # socket write; with the default 5 ms a busy writer thread keeps it that long.
        sys.setswitchinterval(0.0005)
        # Buffered rows are many small tuples: keep the collector from rescanning them.
        gc.set_threshold(50_000, 50, 100)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        other = read_service_file(s.data_dir)
        if other is not None and other.get("pid") != os.getpid():
            raise ConfigError(
                f"data directory {s.data_dir} is used by a running service (pid {other['pid']}, "
                f"{other.get('url')}); stop it or choose another ORBITSTREAM_DATA_DIR",
                setting="ORBITSTREAM_DATA_DIR",
            )
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        await self.pipeline.start(s.start_timeout_secs)
        await self._restore_alerts()
        self._maintenance = asyncio.ensure_future(self._maintain_forever())
        gc.collect()
        gc.freeze()
        self.port = await self.server.start(s.host, s.port)
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        info = {"pid": os.getpid(), "port": self.port, "url": f"http://{host}:{self.port}"}
        (s.data_dir / SERVICE_FILE).write_text(json.dumps(info))
        logger.info(
            "Service started.",
            extra={
                "url": info["url"],
                "data_dir": str(s.data_dir),
                "ack_mode": s.ack_mode,
                "batch_size": s.batch_size,
                "batch_timeout_secs": s.batch_timeout,
            },
        )
        return self.port

    async def _restore_alerts(self) -> None:
        firing = await self.dashboard.firing_alerts(satellites.PIPELINE)
        self.mapper.alerts.restore(firing)

    async def _maintain_forever(self, every_secs: float = 3600.0) -> None:
        """Hourly store upkeep (PostgreSQL: partitions ahead, retention, ledger pruning)."""
        while True:
            await asyncio.sleep(every_secs)
            for store in self.stores:
                maintain = getattr(store, "maintain", None)
                if maintain is None:
                    continue
                try:
                    await maintain()
                except Exception as exc:  # upkeep must never take the service down
                    logger.warning(
                        "Store maintenance failed.",
                        extra={"component": store.name, "error": repr(exc)},
                    )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop."""
        await self.start()
        self.install_signal_handlers()
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        timeout = self.settings.shutdown_timeout_secs
        logger.info("Service stopping.", extra={"buffered": self.pipeline.health()})
        if self._maintenance is not None:
            self._maintenance.cancel()
        server_closed = asyncio.ensure_future(self.server.close(timeout))
        self.pipeline.flush()
        await server_closed
        await self.pipeline.close(timeout)
        with contextlib.suppress(OSError):
            info = read_service_file(self.settings.data_dir)
            if info is None or info.get("pid") == os.getpid():
                (self.settings.data_dir / SERVICE_FILE).unlink()
        logger.info(
            "Service stopped.",
            extra={
                "accepted": self.metrics.total("accepted"),
                "written_rows": self.metrics.total("written_rows"),
            },
        )
