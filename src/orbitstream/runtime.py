"""The runtime: one process, one or more pipelines, shared stores, one HTTP server.

``orbitstream run satellites starlink`` builds, for each named pipeline (from the
registry), its settings, namespaced tables, source and sinks; every configured store is
started **once** with the union of the tables of the pipelines that use it and closed
**once** after the last pipeline has drained. Each pipeline has its own batchers, buffers,
retry state and health per store, so a slow pipeline backs up only itself. The HTTP server
serves ``/health``, ``/metrics``, the dashboard and the query endpoint for every pipeline,
plus the routes of HTTP sources (``orbitstream serve`` is ``run satellites``).

Shutdown (SIGTERM/SIGINT): stop accepting connections and cut every open batch, finish
in-flight requests (in ``sink`` ack mode they wait for their commit), stop the sources
(each commits what is durable), drain every pipeline, close the stores, remove the
service file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orbitstream.core import registry
from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits, close_sink, start_sink
from orbitstream.core.protocols import Sink, Source, Store
from orbitstream.core.registry import SinkRequest
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSettings, PipelineSpec
from orbitstream.core.tables import Table
from orbitstream.core.times import TimeWindow
from orbitstream.errors import ConfigError, SourceError
from orbitstream.settings import EngineSettings, Settings
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sources.http.server import HttpServer, Router, ServerLimits

__all__ = [
    "SERVICE_FILE",
    "PipelinePlan",
    "Runtime",
    "chdb_path",
    "plan_pipelines",
    "read_service_file",
    "registered_tables",
    "server_limits",
]

logger = logging.getLogger(__name__)
#: what a stop takes past its deadline at most: spilling what is left, closing the
#: stores (the writes still going at the deadline are cancelled where the sink allows)
CLOSE_MARGIN_SECS = 5.0
SERVICE_FILE = "service.json"


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


def server_limits(settings: Settings) -> ServerLimits:
    """The HTTP server's per-client limits from the settings (docs/security.md)."""
    h = settings.http
    return ServerLimits(
        header_timeout_secs=h.header_timeout_secs,
        body_timeout_secs=h.body_timeout_secs,
        keepalive_timeout_secs=h.keepalive_timeout_secs,
        send_timeout_secs=h.send_timeout_secs,
        max_header_bytes=h.max_header_bytes,
        max_url_bytes=h.max_url_bytes,
        max_body_bytes=h.max_body_bytes,
        max_connections=h.max_connections,
        write_buffer_high_bytes=h.write_buffer_bytes,
        write_buffer_low_bytes=h.write_buffer_bytes // 4,
    )


# -- planning: settings, namespaces, tables (no I/O) ------------------------------------


def pipeline_limits(engine: EngineSettings) -> PipelineLimits:
    """The batching and buffer limits of every pipeline, from the engine settings."""
    return PipelineLimits(
        batch_size=engine.batch_size,
        linger_secs=engine.batch_timeout,
        max_buffer_rows=engine.max_buffer_rows,
        max_buffer_bytes=engine.max_buffer_bytes,
        max_merge_rows=engine.max_merge_rows,
        deployment_retry_secs=engine.deployment_error_retry_secs,
        health_check_secs=engine.health_check_secs,
    )


@dataclass(frozen=True, slots=True)
class PipelinePlan:
    """One pipeline as configured: its own settings, namespace and namespaced tables."""

    spec: PipelineSpec
    own: PipelineSettings
    namespace: str | None
    tables: tuple[Table, ...]
    source: str

    @property
    def name(self) -> str:
        return self.spec.name


def _namespace(spec: PipelineSpec, own: PipelineSettings) -> str | None:
    """Its own setting, then the seed's variable, then the pipeline's default."""
    if own.namespace:
        return own.namespace
    for var in spec.namespace_env:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return spec.namespace


def plan_pipelines(
    settings: Settings, names: Sequence[str] | None = None, *, source: str | None = None
) -> list[PipelinePlan]:
    """The named pipelines (every registered one without names), checked: known names,
    known sources, no two pipelines' tables in one place.

    :raises ConfigError: naming the pipeline, source or setting at fault.
    """
    specs = registry.pipelines()
    chosen = list(dict.fromkeys(names)) if names else list(specs)
    plans: list[PipelinePlan] = []
    for name in chosen:
        spec = registry.pipeline(name)
        own = settings.pipeline(spec.name, spec.settings)
        src = source or own.source or spec.sources[0]
        if src not in spec.sources:
            raise ConfigError(
                f"pipeline {spec.name} runs on {', '.join(spec.sources)}, not {src!r}",
                setting="--source",
            )
        kind = registry.source_type(src)
        ns = _namespace(spec, own)
        own_tables = [*spec.tables(own, settings), *kind.tables(settings)]
        tables = tuple(t.in_namespace(ns) for t in own_tables)
        plans.append(PipelinePlan(spec, own, ns, tables, src))
    where: dict[str, str] = {}
    for plan in plans:
        for table in plan.tables:
            other = where.setdefault(table.qualified_name, plan.name)
            if other != plan.name:
                raise ConfigError(
                    f"pipelines {other} and {plan.name} would both write table "
                    f"{table.qualified_name}: give one of them its own namespace "
                    f"(ORBITSTREAM_{plan.name.upper()}__NAMESPACE)",
                    setting=f"ORBITSTREAM_{plan.name.upper()}__NAMESPACE",
                )
    return plans


def registered_tables(settings: Settings) -> tuple[tuple[str, ...], tuple[Table, ...]]:
    """Every registered pipeline's namespaces and tables (what users may query, what
    ``orbitstream migrate`` creates)."""
    plans = plan_pipelines(settings)
    namespaces = tuple(dict.fromkeys(p.namespace or "default" for p in plans))
    tables = tuple(t for p in plans for t in p.tables)
    return namespaces, tables


@dataclass(slots=True)
class _Running:
    plan: PipelinePlan
    parts: PipelineParts
    pipeline: Pipeline
    context: PipelineContext
    task: asyncio.Task[None] | None = None
    error: BaseException | None = field(default=None)

    @property
    def source(self) -> Source:
        return self.parts.source


def _is_healthy(r: _Running, source: dict[str, object]) -> bool:
    """A pipeline is healthy when its sinks are up, it has not failed, and its source does
    not report a problem (``"healthy": False``, e.g. no Kafka broker reachable)."""
    return r.pipeline.healthy and r.error is None and source.get("healthy") is not False


def _check_port(host: str, port: int) -> None:
    """:raises ConfigError: something already listens on ``host:port`` (0: any port)."""
    if not port:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the server's own bind reports it
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc} (PORT, --port)", setting="PORT"
            ) from exc


# -- the runtime ------------------------------------------------------------------------


class Runtime:
    """Pipelines, their sources and sinks, the shared stores and the HTTP server.

    :param names: the pipelines to run (registry names).
    :param source: run them on this source type instead of their configured one.
    :param extra_sinks: sinks every pipeline also writes to (embedding, tests).
    :param write_to: the sinks a pipeline writes to instead of the stores (the HTTP tier
        of a scale-out topology publishes to Kafka: ``serve --sink kafka``); the stores
        are still started, for reads.
    """

    def __init__(
        self,
        settings: Settings,
        names: Sequence[str],
        *,
        source: str | None = None,
        extra_sinks: Sequence[Sink] = (),
        write_to: Callable[[PipelinePlan], Sequence[Sink]] | None = None,
    ) -> None:
        from orbitstream.service import ServiceRoutes

        self.settings = settings
        self.metrics = Metrics()
        self.started_at = time.time()
        self.plans = plan_pipelines(settings, names, source=source)
        namespaces, all_tables = registered_tables(settings)
        self.namespaces = namespaces
        self.stores: list[Store] = _build_stores(settings, SinkRequest(namespaces, all_tables))
        self.store = self.stores[0]
        self.extra_sinks = tuple(extra_sinks)
        self.window = TimeWindow.of(
            settings.engine.timestamp_max_ahead_secs,
            settings.timestamp_max_age,
            [s.time_range_ns for s in (*self.stores, *self.extra_sinks)],
        )
        self.dead_letter_file = FileDeadLetters(settings.data_dir / "dead_letters.jsonl")
        self.router = Router()
        self.server = HttpServer(
            self.router, limits=server_limits(settings), on_response=self._count
        )
        self.running: list[_Running] = []
        engine = settings.engine
        limits = pipeline_limits(engine)
        retry = RetryPolicy(max_secs=engine.retry_max_backoff_secs)
        for plan in self.plans:
            instead = list(write_to(plan)) if write_to is not None else None
            build = PipelineBuild(
                spec=plan.spec,
                settings=settings,
                own=plan.own,
                tables={t.name: t for t in plan.tables},
                namespace=plan.namespace,
                source=plan.source,
                window=self.window,
                metrics=self.metrics,
                written=_written(instead) if instead is not None else None,
            )
            parts = plan.spec.build(build)
            if instead is not None:
                parts = dataclasses.replace(parts, sinks=(*instead, *parts.sinks))
                targets: list[Sink] = list(parts.sinks)
            else:
                targets = [*self.stores, *extra_sinks, *parts.sinks]
            pipeline = Pipeline(
                plan.name,
                plan.tables,
                targets,
                limits=limits,
                retry=retry,
                metrics=self.metrics,
                dead_letters=self.dead_letter_file,
            )
            context = PipelineContext(
                pipeline,
                plan.tables,
                metrics=self.metrics,
                store=self.store,
                router=self.router,
                dead_letters=self.dead_letter_file,
            )
            self.running.append(_Running(plan, parts, pipeline, context))
        self.routes = ServiceRoutes(self)
        self.routes.install(self.router)
        self.port: int | None = None
        self.stopping = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None
        self._retry = retry

    # -- what the HTTP routes read -------------------------------------------------------
    def _count(self, request: Any, response: Any) -> None:
        # by route pattern, never the raw path: the label set stays bounded
        self.metrics.counters["http_requests"][(request.route, str(response.status))] += 1

    def pipeline_names(self) -> list[str]:
        return [r.plan.name for r in self.running]

    def plan(self, name: str) -> PipelinePlan | None:
        return next((p for p in self.plans if p.name == name), None)

    @property
    def healthy(self) -> bool:
        return all(_is_healthy(r, r.context.source_health()) for r in self.running)

    def health(self) -> dict[str, Any]:
        sinks: dict[str, dict[str, object]] = {}
        pipelines: dict[str, Any] = {}
        for r in self.running:
            per = r.pipeline.health()
            for name, state in per.items():
                agg = sinks.setdefault(
                    name,
                    {
                        "status": "up",
                        "buffered_rows": 0,
                        "buffered_bytes": 0,
                        "last_error": None,
                        "last_success": None,
                    },
                )
                if state["status"] != "up":
                    agg["status"] = "down"
                    agg["last_error"] = agg["last_error"] or state["last_error"]
                agg["buffered_rows"] = int(str(agg["buffered_rows"])) + int(
                    str(state["buffered_rows"])
                )
                agg["buffered_bytes"] = int(str(agg["buffered_bytes"])) + int(
                    str(state["buffered_bytes"])
                )
                if state["last_success"] is not None:
                    prev = agg["last_success"]
                    agg["last_success"] = max(
                        float(str(prev or 0)), float(str(state["last_success"]))
                    )
            source: dict[str, object] = {"type": r.plan.source, **r.context.source_health()}
            if r.error is not None:
                source["error"] = f"{type(r.error).__name__}: {r.error}"
            pipelines[r.plan.name] = {
                "status": "healthy" if _is_healthy(r, source) else "unhealthy",
                "namespace": r.plan.namespace,
                "sinks": per,
                "source": source,
            }
        return {"sinks": sinks, "pipelines": pipelines}

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
        # A port another process listens on is found before anything starts: stopping
        # stores and sources half-started (a poll in hand, chDB's threads) is what a
        # clear "cannot listen" must not cost.
        _check_port(s.host, s.port)
        if s.store_kind == "chdb" and any(
            r.plan.name == "satellites" and r.plan.source == "kafka" for r in self.running
        ):
            logger.warning(
                "Kafka workers on the embedded store: each worker writes its own store, and "
                "a chunk replayed by another worker after a crash lands in both; set "
                "DATABASE_URL to a shared store (docs/scaling.md).",
                extra={"component": "runtime", "settings": "DATABASE_URL"},
            )
        timeout = s.engine.start_timeout_secs
        tables = [t for r in self.running for t in r.plan.tables]
        for shared in (*self.stores, *self.extra_sinks):  # once each, every pipeline's tables
            await start_sink(shared, tables, self._retry, timeout)
        for r in self.running:
            for sink in r.parts.sinks:
                await start_sink(sink, list(r.plan.tables), self._retry, timeout)
            await r.pipeline.start(timeout, start_sinks=False)
        for r in self.running:
            await r.source.start(r.context)
        for r in self.running:
            r.task = asyncio.create_task(self._run_source(r), name=f"source:{r.plan.name}")
        self._maintenance = asyncio.create_task(self._maintain_forever())
        from orbitstream.core import columns

        columns.warm_up()  # before the freeze: what it imports is frozen with the rest
        gc.collect()
        gc.freeze()
        try:
            self.port = await self.server.start(s.host, s.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {s.host}:{s.port}: {exc} (PORT, --port)", setting="PORT"
            ) from exc
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        info = {
            "pid": os.getpid(),
            "port": self.port,
            "url": f"http://{host}:{self.port}",
            "pipelines": self.pipeline_names(),
        }
        (s.data_dir / SERVICE_FILE).write_text(json.dumps(info))
        logger.info(
            "Service started.",
            extra={
                "url": info["url"],
                "pipelines": self.pipeline_names(),
                "data_dir": str(s.data_dir),
                "ack_mode": s.http.ack_mode,
                "batch_size": s.engine.batch_size,
                "batch_timeout_secs": s.engine.batch_timeout,
                # what SIGTERM may take (more than ORBITSTREAM_SHUTDOWN_TIMEOUT when a
                # pipeline needs it): an orchestrator's grace period should exceed it
                "stop_secs": self.stop_secs,
            },
        )
        return self.port

    async def _run_source(self, r: _Running) -> None:
        try:
            await r.source.run()
        except asyncio.CancelledError:
            raise
        except SourceError as exc:
            r.error = exc
            logger.error(
                "Source stopped with an error.",
                extra={"pipeline": r.plan.name, "error": f"{type(exc).__name__}: {exc}"},
            )
        except Exception as exc:
            r.error = exc
            logger.exception("Source failed.", extra={"pipeline": r.plan.name})

    async def _maintain_forever(self, every_secs: float = 3600.0) -> None:
        """Hourly store upkeep (PostgreSQL: partitions ahead, retention, ledger pruning)."""
        while True:
            await asyncio.sleep(every_secs)
            for store in self.stores:
                try:
                    await store.maintain()
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
        try:
            await self.start()
        except BaseException:
            await self._abandon()
            raise
        self.install_signal_handlers()
        await self.stopping.wait()
        await self.stop()

    async def _abandon(self) -> None:
        """After a failed start: stop what started and close every sink and store (an
        embedded store left open crashes the interpreter at exit); nothing was accepted."""
        if self._maintenance is not None:
            self._maintenance.cancel()
        for r in self.running:
            if r.task is not None:
                r.task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.source.stop(1.0), 5)
        for r in self.running:
            for sink in r.parts.sinks:
                await close_sink(sink)
        for shared in (*self.stores, *self.extra_sinks):
            await close_sink(shared)

    @property
    def stop_secs(self) -> float:
        """The longest a stop may take: ``ORBITSTREAM_SHUTDOWN_TIMEOUT``, or what a
        pipeline may need (``PipelineParts.min_stop_secs``), plus the closing margin."""
        return (
            max(
                [self.settings.engine.shutdown_timeout_secs]
                + [r.parts.min_stop_secs for r in self.running]
            )
            + CLOSE_MARGIN_SECS
        )

    def _stop_deadline_secs(self) -> float:
        """This stop's deadline: the shutdown timeout, or longer where a pipeline has
        input in flight it cannot abandon (``PipelineParts.stop_need``)."""
        needs = [r.parts.stop_need() for r in self.running if r.parts.stop_need is not None]
        return max([self.settings.engine.shutdown_timeout_secs, *needs])

    async def stop(self) -> None:
        # one deadline for the whole stop (ORBITSTREAM_SHUTDOWN_TIMEOUT): a source waiting
        # for a down store to take its last batch, then the pipelines draining to that
        # store, must not wait that long each
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_deadline_secs()

        def left() -> float:
            return max(1.0, deadline - loop.time())

        logger.info("Service stopping.", extra={"buffered": self.health()["sinks"]})
        if self._maintenance is not None:
            self._maintenance.cancel()
        server_closed = asyncio.ensure_future(self.server.close(left()))
        for r in self.running:
            r.pipeline.flush()
        await server_closed
        for r in self.running:
            try:
                await asyncio.wait_for(r.source.stop(left()), left() + 5)
            except Exception as exc:
                logger.warning(
                    "Source did not stop cleanly.",
                    extra={"pipeline": r.plan.name, "error": repr(exc)},
                )
            if r.task is not None:
                r.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await r.task
        remaining = left()
        await asyncio.gather(
            *(r.pipeline.close(remaining, close_sinks=False) for r in self.running)
        )
        for r in self.running:
            for sink in r.parts.sinks:
                await close_sink(sink)
        for shared in (*self.stores, *self.extra_sinks):
            await close_sink(shared)
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


def _written(sinks: Sequence[Sink]) -> frozenset[str] | None:
    """The tables these sinks write (``None``: every table)."""
    names: set[str] = set()
    for sink in sinks:
        only: frozenset[str] | None = getattr(sink, "only_tables", None)
        if only is None:
            return None
        names |= only
    return frozenset(names)


def _build_stores(settings: Settings, request: SinkRequest) -> list[Store]:
    from orbitstream.stores import build_stores

    return build_stores(settings, request)
