"""A small HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools``.

Why not Starlette/uvicorn: measured here, a raw protocol serves 76–99k single-point
requests/s per worker against 17–19k for Starlette on uvicorn (docs/decisions.md). The
ingest path is a handful of routes, so the server is kept minimal: keep-alive,
pipelining (responses in request order), ``Expect: 100-continue``, chunked request
bodies, streaming body handlers and a graceful close that finishes in-flight requests.

Replacing uvicorn must not cost its protections, so a hostile client costs bounded
memory and CPU (every limit is a :class:`ServerLimits` field, set from the service
settings; docs/security.md lists them):

- header read timeout (from the first byte of a request to the end of its headers) and
  body read timeout (longest silence while a body arrives): ``408`` and close;
- keep-alive idle timeout: an idle connection is closed;
- send timeout: a client that stops reading its answers is disconnected;
- maximum header size (``431``) and URL length (``414``), counted while they arrive;
- maximum body size (``413``), checked on ``Content-Length`` before reading and while a
  chunked or streaming body arrives (a running count: linear in the body size);
- a cap on open connections (``503`` and close for the ones above it);
- write-side flow control: above the transport's high-water mark the connection stops
  reading, and requests already parsed wait unexecuted until the client has read its
  answers — a client that pipelines requests and never reads costs at most one read
  chunk of requests plus the high-water mark.

Timeouts are checked by one sweep per server every ``tick`` seconds against a coarse
clock, so the per-request cost is a few attribute stores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

import httptools
import msgspec

__all__ = [
    "BodyStream",
    "HttpServer",
    "Refusal",
    "Request",
    "Response",
    "Router",
    "ServerLimits",
    "error_response",
    "refuse",
]

logger = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may cost the server.

    :param header_timeout_secs: from the first byte of a request (or the connection's
        opening) to the end of its headers; then ``408`` and close.
    :param body_timeout_secs: the longest pause between two reads of a body; ``408``.
    :param keepalive_timeout_secs: an idle keep-alive connection is closed after this.
    :param send_timeout_secs: a connection whose answers the client does not read for
        this long is closed.
    :param max_header_bytes: request line excluded; ``431`` above it.
    :param max_url_bytes: ``414`` above it.
    :param max_body_bytes: default body limit of a route; ``413`` above it.
    :param max_connections: open connections; the ones above get ``503`` and are closed.
    :param write_buffer_high_bytes: unsent output above which the connection stops
        reading and parsed requests wait (``write_buffer_low_bytes``: resume below).
    :param max_pipelined: answers computed ahead of the one being written.
    """

    header_timeout_secs: float = 10.0
    body_timeout_secs: float = 30.0
    keepalive_timeout_secs: float = 30.0
    send_timeout_secs: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_url_bytes: int = 8 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_connections: int = 1024
    write_buffer_high_bytes: int = 256 * 1024
    write_buffer_low_bytes: int = 64 * 1024
    max_pipelined: int = 32
    tick_secs: float = 0.25


class Request:
    """A parsed request. Header names are lower-case ``str``; ``route`` is the matched
    route pattern (a bounded set: metrics labels use it)."""

    __slots__ = ("body", "client", "headers", "method", "path", "query_string", "route")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        client: str,
        route: str = _UNMATCHED,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.client = client
        self.route = route

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.query_string).items()}

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, keep_alive: bool) -> bytes:
        if not self.headers:
            key = (self.status, self.content_type, keep_alive)
            prefix = _PREFIXES.get(key)
            if prefix is None:
                prefix = _PREFIXES[key] = self._prefix(keep_alive)
            return prefix + b"%d\r\n\r\n" % len(self.body) + self.body
        return self._encode_full(keep_alive)

    def _prefix(self, keep_alive: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        head.append(f"Content-Type: {self.content_type}")
        if not keep_alive:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\nContent-Length: ").encode("latin-1")

    def _encode_full(self, keep_alive: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        if self.body or self.status not in (204, 304):
            head.append(f"Content-Type: {self.content_type}")
        head.append(f"Content-Length: {len(self.body)}")
        for name, value in self.headers:
            head.append(f"{name}: {value}")
        if not keep_alive:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


_PREFIXES: dict[tuple[int, str, bool], bytes] = {}

HandlerResult = Response | Awaitable[Response]
Handler = Callable[[Request], HandlerResult]


class BodyStream(Protocol):
    """A handler that consumes the body while it arrives (NDJSON bulk ingest)."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> HandlerResult: ...


StreamFactory = Callable[[Request], BodyStream]


@dataclass(slots=True)
class _Route:
    pattern: str
    handler: Handler | None = None
    stream: StreamFactory | None = None
    max_body: int | None = None


class Router:
    """Exact-path routes by method, plus prefix routes (``/static/``)."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, _Route]] = {}
        self.prefixes: list[tuple[str, str, _Route]] = []

    def add(self, method: str, path: str, handler: Handler, *, max_body: int | None = None) -> None:
        self.routes.setdefault(path, {})[method] = _Route(path, handler=handler, max_body=max_body)

    def add_stream(self, method: str, path: str, factory: StreamFactory, max_body: int) -> None:
        self.routes.setdefault(path, {})[method] = _Route(path, stream=factory, max_body=max_body)

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        self.prefixes.append((method, prefix, _Route(prefix + "*", handler=handler)))

    def resolve(self, method: str, path: str) -> _Route | Response:
        methods = self.routes.get(path)
        if methods is not None:
            route = methods.get(method)
            if route is None:
                return error_response(
                    405, f"method {method} not allowed on {path}", [("Allow", ", ".join(methods))]
                )
            return route
        for m, prefix, route in self.prefixes:
            if path.startswith(prefix):
                if m != method:
                    return error_response(
                        405, f"method {method} not allowed on {path}", [("Allow", m)]
                    )
                return route
        return error_response(404, f"no route for {path}")

    def pattern(self, method: str, path: str) -> str:
        """The route pattern a request falls under (``unmatched`` when none)."""
        route = self.resolve(method, path)
        return route.pattern if isinstance(route, _Route) else _UNMATCHED


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None, **extra: Any
) -> Response:
    body = msgspec.json.encode({"status": "error", "error": message, **extra})
    return Response(status, body, headers=headers or [])


# Read-side states of a connection (what the timeout sweep checks).
_IDLE = 0  # between requests (or nothing received yet)
_HEAD = 1  # request line / headers arriving
_BODY = 2  # body arriving


class _Job:
    """A parsed request in a connection's queue: executed (``result`` set) or waiting."""

    __slots__ = ("keep_alive", "request", "result", "route")

    def __init__(
        self,
        request: Request,
        route: _Route | Response | BodyStream | None,
        keep_alive: bool,
        result: HandlerResult | None,
    ) -> None:
        self.request = request
        self.route = route
        self.keep_alive = keep_alive
        self.result = result


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_body_timeout",
        "_client",
        "_closing",
        "_deadline",
        "_head_bytes",
        "_head_seen",
        "_header_timeout",
        "_headers",
        "_keepalive",
        "_limit",
        "_max_header",
        "_max_pipelined",
        "_max_url",
        "_out",
        "_out_bytes",
        "_out_limit",
        "_pending",
        "_read_paused",
        "_request",
        "_route",
        "_state",
        "_stream",
        "_streaming_error",
        "_task",
        "_too_large",
        "_url",
        "_writable",
        "_write_paused",
        "_write_paused_at",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        limits = server.limits  # copied: read on every request
        self._max_url = limits.max_url_bytes
        self._max_header = limits.max_header_bytes
        self._header_timeout = limits.header_timeout_secs
        self._body_timeout = limits.body_timeout_secs
        self._keepalive = limits.keepalive_timeout_secs
        self._max_pipelined = limits.max_pipelined
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._request: Request | None = None
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._head_seen = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._limit = server.limits.max_body_bytes
        self._route: _Route | Response | None = None
        self._stream: BodyStream | None = None
        self._streaming_error: Response | None = None
        self._too_large = False
        self._pending: collections.deque[_Job] = collections.deque()
        self._out: list[bytes] = []  # answers to write at the end of this loop turn
        self._out_bytes = 0
        self._out_limit = limits.write_buffer_high_bytes
        self._task: asyncio.Task[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._write_paused_at = 0.0
        self._writable: asyncio.Event | None = None
        self._closing = False
        self._client = ""
        self._state = _IDLE
        self._deadline = server.now + server.limits.header_timeout_secs

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            server.refused_connections += 1
            self._closing = True
            self.transport.write(
                error_response(
                    503, "too many open connections; retry later", [("Retry-After", "1")]
                ).encode(False)
            )
            self.transport.close()
            self.transport = None
            return
        limits = server.limits
        self.transport.set_write_buffer_limits(
            high=limits.write_buffer_high_bytes, low=limits.write_buffer_low_bytes
        )
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if peer else ""
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self._writable is not None:
            self._writable.set()
        if self._task is not None and not self._pending:
            self._task.cancel()
        self.server.idle_changed()

    def eof_received(self) -> bool | None:
        # The client half-closed: the transport closes itself once we return, so the
        # answers queued this turn are written first (they would be dropped otherwise).
        self.flush()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_at = self.server.now
        if self._writable is not None:
            self._writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writable is not None:
            self._writable.set()
        if self._pending:
            self._schedule()
        elif self._read_paused:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._state != _BODY:
            # Bytes of a head still arriving: httptools buffers a header line whole, so
            # count here too (exactly in on_header; this bounds a single huge line).
            self._head_seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(error_response(400, "protocol upgrade not supported"))
            return
        except httptools.HttpParserError as exc:
            if self._too_large or self._closing:
                return
            self._reply_and_close(error_response(400, f"malformed HTTP request: {exc}"))
            return
        if self._state == _HEAD and not self._closing:
            limits = self.server.limits
            if self._head_seen > limits.max_header_bytes + limits.max_url_bytes + 1024:
                self._reply_and_close(
                    error_response(
                        431,
                        f"request headers exceed the limit of {limits.max_header_bytes} bytes",
                    )
                )

    # -- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._route = None
        self._stream = None
        self._streaming_error = None
        self._state = _HEAD
        self._head_bytes = 0
        self._head_seen = 0
        self._deadline = self.server.now + self._header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            self._too_large = True
            self._reply_and_close(
                error_response(
                    414,
                    f"request URL exceeds the limit of {self.server.limits.max_url_bytes} bytes",
                )
            )
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header:
            self._too_large = True
            self._reply_and_close(
                error_response(
                    431,
                    f"request headers exceed the limit of {self.server.limits.max_header_bytes} "
                    "bytes",
                )
            )
            raise _Stop
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        if key in self._headers:
            self._headers[key] += ", " + val
        else:
            self._headers[key] = val

    def _head(self, body: bytes = b"") -> Request:
        url = self._url
        if b"?" in url or b"#" in url or not url.startswith(b"/"):
            parsed = httptools.parse_url(url)
            path = parsed.path.decode("latin-1") if parsed.path else "/"
            query = parsed.query.decode("latin-1") if parsed.query else ""
        else:
            path, query = url.decode("latin-1"), ""
        method = self.parser.get_method().decode("latin-1")
        return Request(method, path, query, self._headers, body, self._client)

    def on_headers_complete(self) -> None:
        self._state = _BODY
        self._deadline = self.server.now + self._body_timeout
        head = self._head()
        self._request = head
        route = self.server.router.resolve(head.method, head.path)
        self._route = route
        limit = self.server.limits.max_body_bytes
        if isinstance(route, _Route):
            head.route = route.pattern
            if route.max_body is not None:
                limit = route.max_body
        self._limit = limit
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._too_large = True
            self._reply_and_close(
                error_response(
                    413, f"request body of {length} bytes exceeds the limit of {limit} bytes"
                ),
                head,
            )
            raise _Stop
        if isinstance(route, _Route) and route.stream is not None:
            try:
                self._stream = route.stream(head)
            except Refusal as refusal:
                self._streaming_error = refusal.response
            except Exception:
                logger.exception("Request handler failed.")
                self._streaming_error = _internal()
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            if isinstance(route, Response) or self._streaming_error is not None:
                return  # answer the error without reading the body
            self.write_now(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._deadline = self.server.now + self._body_timeout
        self._body_size += len(body)
        if self._body_size > self._limit:
            self._too_large = True
            self._reply_and_close(
                error_response(413, f"request body exceeds the limit of {self._limit} bytes"),
                self._request,
            )
            raise _Stop
        if self._streaming_error is not None:
            return
        if self._stream is not None:
            try:
                self._stream.feed(body)
            except Refusal as refusal:
                if refusal.close:
                    self._reply_and_close(refusal.response, self._request)
                    raise _Stop from None
                self._streaming_error = refusal.response
            except Exception:
                logger.exception("Request handler failed.")
                self._streaming_error = _internal()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._state = _IDLE
        self._deadline = self.server.now + self._keepalive
        if self._too_large or self._closing or self.transport is None:
            return  # nothing after a "Connection: close" request or a refusal is executed
        keep_alive = self.parser.should_keep_alive() and not self.server.closing
        request = self._request
        if request is None:  # pragma: no cover - headers always complete first
            return
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        route: _Route | Response | BodyStream | None = self._route
        if isinstance(route, _Route) and route.stream is not None:
            route = self._stream
        if self._streaming_error is not None:
            route = self._streaming_error
        if not keep_alive:
            self._closing = True
        if self._write_paused or len(self._pending) >= self._max_pipelined:
            # The client is not reading its answers: keep the request, not its answer.
            self._pending.append(_Job(request, route, keep_alive, None))
            self._pause_reading()
            self._schedule()
            return
        result = self._execute(request, route)
        if not self._pending and isinstance(result, Response):
            self._send(request, result, keep_alive)
            return
        self._pending.append(_Job(request, route, keep_alive, result))
        if len(self._pending) >= self._max_pipelined:
            self._pause_reading()
        self._schedule()

    # -- dispatch --------------------------------------------------------------------
    def _execute(
        self, request: Request, route: _Route | Response | BodyStream | None
    ) -> HandlerResult:
        if isinstance(route, Response):
            return route
        try:
            if isinstance(route, _Route) and route.handler is not None:
                return route.handler(request)
            if route is not None and not isinstance(route, _Route):
                return route.finish()
        except Exception:
            logger.exception("Request handler failed.")
        return _internal()

    def _schedule(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        self.server.busy += 1
        try:
            while self._pending and self.transport is not None:
                if self._write_paused:
                    if self._writable is None:
                        self._writable = asyncio.Event()
                    self._writable.clear()
                    await self._writable.wait()
                    continue
                job = self._pending[0]
                result = job.result
                if result is None:
                    result = job.result = self._execute(job.request, job.route)
                if not isinstance(result, Response):
                    try:
                        result = await result
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("Request handler failed.")
                        result = _internal()
                self._pending.popleft()
                self._send(job.request, result, job.keep_alive)
                if (
                    self._read_paused
                    and not self._write_paused
                    and len(self._pending) < self.server.limits.max_pipelined // 4
                ):
                    self._resume_reading()
        finally:
            self.server.busy -= 1
            if self._state == _IDLE:
                self._deadline = self.server.now + self.server.limits.keepalive_timeout_secs
            self.server.idle_changed()

    def _send(self, request: Request | None, response: Response, keep_alive: bool) -> None:
        if self.server.on_response is not None and request is not None:
            self.server.on_response(request, response)
        transport = self.transport
        if transport is None:
            return
        if not keep_alive:
            self.write_now(response.encode(False))
            transport.close()
            return
        # Written once this turn of the event loop has handled every connection that was
        # ready: the answers of one turn go out together (each connection's pipelined
        # answers as one write), so a client that waits for them is woken once per turn,
        # not once per answer (decisions §49).
        data = response.encode(True)
        out = self._out
        size = self._out_bytes + len(data)
        if size + transport.get_write_buffer_size() > self._out_limit:
            self.write_now(data)  # past what the transport may buffer: flow control sees it
            return
        if not out:
            self.server.flush_soon(self)
        out.append(data)
        self._out_bytes = size

    def write_now(self, data: bytes) -> None:
        """Write ``data`` now, after the answers queued before it (one write)."""
        self._out.append(data)
        self.flush()

    def flush(self) -> None:
        """Write the answers queued by :meth:`_send` now (before anything else is written
        or the connection is closed: the order of answers is kept)."""
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_bytes = 0
            if self.transport is not None:
                self.transport.write(data)  # may pause_writing: the answers wait then

    def _reply_and_close(self, response: Response, request: Request | None = None) -> None:
        """Answer now and close (after the answers already queued are written)."""
        if self._closing and self.transport is None:
            return
        self._closing = True
        self._state = _IDLE
        if self.transport is None:
            return
        if self.server.on_response is not None:
            self.server.on_response(
                request or Request("", "?", "", {}, b"", self._client), response
            )
        if self._pending:
            # Earlier pipelined requests are still being answered: drop them (the client
            # broke the protocol) and close.
            self._pending.clear()
        self.write_now(response.encode(False))
        self.transport.close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._closing:
            self._read_paused = False
            self.transport.resume_reading()

    # -- timeouts (called by the server's sweep) ---------------------------------------
    def check_timeouts(self, now: float) -> None:
        transport = self.transport
        if transport is None:
            return
        limits = self.server.limits
        if self._write_paused:
            if now - self._write_paused_at > limits.send_timeout_secs:
                self.server.timed_out += 1
                self._pending.clear()
                transport.abort()
            return
        if self._pending or now < self._deadline:
            return
        self.server.timed_out += 1
        if self._state == _IDLE:
            # nothing in progress: a keep-alive connection idle for too long, or a new one
            # that sent nothing
            self._closing = True
            self.flush()
            transport.close()
            return
        what = "headers" if self._state == _HEAD else "body"
        self._reply_and_close(
            error_response(408, f"timed out waiting for the request {what}"), self._request
        )

    @property
    def idle(self) -> bool:
        """Nothing to answer and no body arriving (an upload in progress may finish)."""
        return not self._pending and self._state != _BODY

    def close_when_idle(self) -> None:
        self._closing = True
        if self.idle and self.transport is not None:
            self.flush()
            self.transport.close()


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (the connection is being closed)."""


class Refusal(Exception):
    """Raised by a stream handler to answer early.

    :param close: answer at once and close the connection (the rest of the body is not
        read: a size limit); otherwise the rest of the body is read and discarded and the
        answer follows it (clients that read only after sending still see it).
    """

    def __init__(self, response: Response, *, close: bool = False) -> None:
        super().__init__(response.status)
        self.response = response
        self.close = close


def refuse(response: Response) -> Refusal:
    return Refusal(response)


def _internal() -> Response:
    return error_response(500, "internal error")


class HttpServer:
    """Serves a :class:`Router`; ``close()`` stops accepting and finishes in-flight work.

    :param limits: per-client limits (timeouts, sizes, connections, flow control).
    :param on_response: called with every request and its answer (metrics).
    """

    def __init__(
        self,
        router: Router,
        *,
        limits: ServerLimits | None = None,
        on_response: Callable[[Request, Response], None] | None = None,
    ) -> None:
        self.router = router
        self.limits = limits or ServerLimits()
        self.on_response = on_response
        self.connections: set[_Connection] = set()
        self.busy = 0
        self.closing = False
        self.refused_connections = 0
        self.timed_out = 0
        self.now = 0.0
        self._server: asyncio.base_events.Server | None = None
        self._idle = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._to_flush: list[_Connection] = []

    def flush_soon(self, conn: _Connection) -> None:
        """Write ``conn``'s queued answers at the end of this event loop turn."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush)
        self._to_flush.append(conn)

    def _flush(self) -> None:
        conns, self._to_flush = self._to_flush, []
        for conn in conns:
            conn.flush()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
        )
        self._sweeper = loop.create_task(self._sweep())
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.limits.tick_secs
        while True:
            await asyncio.sleep(tick)
            self.now = now = loop.time()
            for conn in list(self.connections):
                try:
                    conn.check_timeouts(now)
                except Exception:  # one broken connection must not stop the sweep
                    logger.exception("Connection timeout check failed.")

    def idle_changed(self) -> None:
        if self.closing and all(c.idle for c in self.connections):
            self._idle.set()

    async def close(self, timeout_secs: float = 30.0) -> None:
        """Stop listening, let in-flight requests finish, close keep-alive connections."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        if any(not c.idle for c in self.connections):
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_secs)
            except TimeoutError:
                logger.warning("Requests still in flight at shutdown timeout.")
            for conn in list(self.connections):
                conn.close_when_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            await self._server.wait_closed()
