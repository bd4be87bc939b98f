"""The HTTP push source: a pipeline's records posted to the service (the seed's API).

Routes, for an :class:`~orbitstream.sources.http.ingest.HttpIngest` at ``path``:
``POST <path>`` (one record), ``POST <path>/batch`` (a JSON array, invalid records
reported by index), ``POST <path>/ndjson`` (one record per line, processed while the body
streams). They are served by the runtime's HTTP server beside ``/health``, ``/metrics``
and the dashboard. The source holds no state of its own: a request's rows are in the
pipeline when it is answered (``memory`` ack mode) or committed in every store (``sink``).
"""

from __future__ import annotations

import asyncio

from orbitstream.core.protocols import SourceContext
from orbitstream.core.registry import SourceType
from orbitstream.core.spec import PipelineBuild
from orbitstream.settings import Settings
from orbitstream.sources.http.ingest import HttpIngest, IngestHandlers

__all__ = ["SOURCE", "HttpPushSource"]


class HttpPushSource:
    """Adds the ingest routes of one pipeline at start; ``run`` waits for ``stop`` (the
    runtime closes the HTTP server first, so in-flight requests finish)."""

    name = "http"

    def __init__(self, settings: Settings, ingest: HttpIngest) -> None:
        self.settings = settings
        self.ingest = ingest
        self.handlers: IngestHandlers | None = None
        self._stopped = asyncio.Event()

    async def start(self, ctx: SourceContext) -> None:
        http = self.settings.http
        handlers = IngestHandlers(
            ctx,
            self.ingest,
            ctx.metrics,
            http.ack_mode,
            ndjson_max_body_bytes=http.ndjson_max_body_bytes,
            ndjson_max_line_bytes=http.ndjson_max_line_bytes,
        )
        path = self.ingest.path
        ctx.router.add("POST", path, handlers.telemetry)
        ctx.router.add("POST", f"{path}/batch", handlers.batch)
        # The NDJSON handler enforces its own limit (answering with next_line); the
        # server's is a backstop just above it.
        ctx.router.add_stream(
            "POST",
            f"{path}/ndjson",
            handlers.ndjson,
            max_body=http.ndjson_max_body_bytes + (1 << 20),
        )
        self.handlers = handlers
        await self.ingest.restore(ctx.store)

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self, timeout_secs: float) -> None:
        self._stopped.set()


def _create(build: PipelineBuild, handler: object) -> HttpPushSource:
    if not isinstance(handler, HttpIngest):
        raise TypeError(f"the http source needs an HttpIngest, got {type(handler).__name__}")
    return HttpPushSource(build.settings, handler)


SOURCE = SourceType(
    name="http",
    description="records pushed over HTTP: POST <path>, <path>/batch, <path>/ndjson",
    handler="orbitstream.sources.http.ingest.HttpIngest",
    create=_create,
)
