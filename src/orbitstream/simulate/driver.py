"""Lean HTTP load driver that streams simulated fleet telemetry to the ingest API.

Design (chosen to reach ~10k single-point requests/s from one process):

* A raw :class:`asyncio.Protocol` HTTP/1.1 client, one pool of kept-alive connections,
  one request in flight per connection (no pipelining). Requests are pre-encoded
  bytes; responses are parsed with :class:`httptools.HttpResponseParser`.
* A global schedule at ``satellites * rate`` points/s, round-robin over satellites.
  Each tick computes how many points are due from the elapsed time (no drift, no
  per-request sleeps) and hands them to free connections; when every connection is
  busy they wait in a bounded queue, and points that do not fit are counted as
  ``dropped_client`` (the client could not keep up).
* ``503``/``429`` responses are backpressure: the connection waits ``Retry-After``
  and resends the same request, up to ``max_retries`` times (then ``errors``).
  A request whose response never came (connection lost) is an ``error``, never
  ``accepted``; it is not resent because the server may already hold it.

Accounting identities once :func:`run_simulation` returns::

    scheduled == sent + dropped_client
    sent == accepted + rejected + errors
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools
import msgspec
from rich.console import Console
from rich.live import Live
from rich.text import Text

from orbitstream.errors import OrbitStreamError
from orbitstream.simulate.model import SatelliteModel

__all__ = [
    "LatencyHistogram",
    "ServerUnreachableError",
    "SimulatorConfig",
    "Summary",
    "TelemetryPoint",
    "run_simulation",
    "run_simulation_blocking",
    "satellite_ids",
]

logger = logging.getLogger(__name__)

_SATELLITE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_RETRY_AFTER_S = 30.0
_DEFAULT_RETRY_AFTER_S = 1.0
# Shortest scheduler sleep: event-loop timers have ~1 ms resolution (uvloop rounds
# shorter delays down to 0, which would spin).
_MIN_TICK_S = 0.001
# Longest time the first point of a partial batch waits for the batch to fill.
_BATCH_LINGER_NS = 50_000_000


class ServerUnreachableError(OrbitStreamError, ConnectionError):
    """No connection to the ingest API could be opened."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason


class TelemetryPoint(msgspec.Struct):
    """Wire format of one telemetry point (``POST /telemetry`` body)."""

    satellite_id: str
    battery_charge_percent: float
    storage_usage_mb: float
    signal_strength_dbm: float
    timestamp: int


class _BatchError(msgspec.Struct):
    index: int


class _BatchResponse(msgspec.Struct):
    accepted: int | None = None
    errors: list[_BatchError] = []


@dataclass
class SimulatorConfig:
    """Settings of one simulator run.

    ``rate`` is points/s per satellite; the total schedule is ``satellites * rate``.
    ``duration`` 0 runs until ``stop`` is set (or SIGINT/SIGTERM). ``batch`` 0 or 1
    sends single points to ``/telemetry``; N > 1 groups N points per request to
    ``/telemetry/batch``. ``max_pending`` bounds the client-side queue in points
    (0 = one second of traffic, at least 1,024).
    """

    satellites: int = 100
    rate: float = 100.0
    api_url: str = "http://localhost:8080"
    duration: float = 60.0
    anomaly_rate: float = 0.01
    batch: int = 0
    connections: int = 64
    seed: int | None = None
    id_prefix: str = "SAT-"
    record_accepted: bool = False
    live: bool = True
    max_retries: int = 5
    max_pending: int = 0
    drain_timeout: float = 5.0
    connect_timeout: float = 5.0

    @property
    def total_rate(self) -> float:
        """Scheduled points per second over the whole fleet."""
        return self.satellites * self.rate

    @property
    def points_per_request(self) -> int:
        """Points carried by one request."""
        return self.batch if self.batch > 1 else 1

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first invalid setting."""
        if self.satellites < 1:
            raise ValueError("satellites must be >= 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("rate must be a finite number > 0")
        if not (self.duration >= 0 and math.isfinite(self.duration)):
            raise ValueError("duration must be >= 0 (0 = until stopped)")
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError("anomaly_rate must be within [0, 1]")
        if self.batch < 0:
            raise ValueError("batch must be >= 0")
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        if self.max_retries < 0 or self.max_pending < 0:
            raise ValueError("max_retries and max_pending must be >= 0")
        if self.drain_timeout < 0 or self.connect_timeout <= 0:
            raise ValueError("drain_timeout must be >= 0 and connect_timeout > 0")
        last_id = f"{self.id_prefix}{self.satellites:04d}"
        if not _SATELLITE_ID_RE.fullmatch(last_id):
            raise ValueError("id_prefix must give satellite ids of 1-64 [A-Za-z0-9_.:-] chars")
        _parse_url(self.api_url)


@dataclass(frozen=True)
class Summary:
    """Outcome of a run. Counts are in points, except ``backpressure`` (503/429 responses)."""

    target_rate: float
    elapsed_s: float
    scheduled: int
    sent: int
    accepted: int
    rejected: int
    errors: int
    backpressure: int
    dropped_client: int
    requests: int
    p50_ms: float
    p99_ms: float
    accepted_points: list[tuple[str, int]] | None = None
    #: with ``record_accepted``: the values sent for each accepted point (for exact checks)
    accepted_values: dict[tuple[str, int], tuple[float, float, float]] | None = None

    @property
    def achieved_rate(self) -> float:
        """Accepted points per second of run time."""
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0


def satellite_ids(count: int, prefix: str = "SAT-") -> list[str]:
    """Ids of a fleet of ``count`` satellites: ``SAT-0001`` ... (numbered from 1)."""
    return [f"{prefix}{i:04d}" for i in range(1, count + 1)]


class LatencyHistogram:
    """Log-bucketed latency histogram: ~2 % relative precision from 1 µs to hours."""

    _BASE_NS = 1_000
    _GROWTH = 1.02
    _INV_LOG_GROWTH = 1.0 / math.log(_GROWTH)
    _BUCKETS = 1_200

    def __init__(self) -> None:
        self.counts = [0] * self._BUCKETS
        self.count = 0
        self.min_ns = 0
        self.max_ns = 0

    @classmethod
    def bucket(cls, latency_ns: int) -> int:
        """Index of the bucket holding ``latency_ns``."""
        if latency_ns <= cls._BASE_NS:
            return 0
        i = int(math.log(latency_ns / cls._BASE_NS) * cls._INV_LOG_GROWTH)
        return i if i < cls._BUCKETS else cls._BUCKETS - 1

    def record(self, latency_ns: int) -> None:
        """Add one observation."""
        self.add(self.bucket(latency_ns), latency_ns)

    def add(self, bucket: int, latency_ns: int) -> None:
        """Add one observation whose bucket is already known."""
        self.counts[bucket] += 1
        if self.count == 0 or latency_ns < self.min_ns:
            self.min_ns = latency_ns
        if latency_ns > self.max_ns:
            self.max_ns = latency_ns
        self.count += 1

    def reset(self) -> None:
        """Forget every observation."""
        self.counts = [0] * self._BUCKETS
        self.count = self.min_ns = self.max_ns = 0

    def percentile_ms(self, q: float) -> float:
        """Approximate ``q``-quantile (0 < q <= 1) in milliseconds; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        if rank >= self.count:
            return self.max_ns / 1e6
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                mid = self._BASE_NS * math.pow(self._GROWTH, i + 0.5)
                mid = min(max(mid, self.min_ns), self.max_ns)
                return mid / 1e6
        return self.max_ns / 1e6  # pragma: no cover - counts always sum to count


class _Request:
    __slots__ = ("attempts", "payload", "points")

    def __init__(self, payload: bytes, points: list[tuple[str, int]]) -> None:
        self.payload = payload
        self.points = points
        self.attempts = 0


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection with at most one request in flight."""

    __slots__ = (
        "_body",
        "_driver",
        "_parser",
        "_retry_after",
        "_sent_ns",
        "request",
        "retry_handle",
        "transport",
    )

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._retry_after: bytes | None = None
        self._sent_ns = 0
        self.request: _Request | None = None
        self.retry_handle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._driver.on_connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            logger.warning("malformed HTTP response; dropping connection", exc_info=True)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._driver.on_connection_lost(self, exc)

    # httptools callbacks --------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        latency_ns = time.perf_counter_ns() - self._sent_ns
        parser = self._parser
        request = self.request
        if request is None or self.retry_handle is not None:
            # An unsolicited response: the stream is out of sync, start afresh.
            if self.transport is not None:
                self.transport.abort()
            return
        body = b"".join(self._body)
        self._body.clear()
        self._driver.on_response(
            self,
            request,
            parser.get_status_code(),
            self._retry_after,
            body,
            latency_ns,
            parser.should_keep_alive(),
        )

    # driver API -----------------------------------------------------------
    def send(self, request: _Request) -> None:
        """Write ``request``; the connection must be idle."""
        self.request = request
        self._retry_after = None
        self._sent_ns = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(request.payload)

    def resend(self) -> None:
        """Retry the held request after a backpressure wait."""
        self.retry_handle = None
        request = self.request
        transport = self.transport
        if request is None or transport is None or transport.is_closing():
            return
        self.send(request)


class _Driver:
    """Scheduler, connection pool and accounting of one run."""

    def __init__(self, cfg: SimulatorConfig, stop: asyncio.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.loop = asyncio.get_running_loop()
        self.scheme_host, self.host, self.port, self.path_prefix = _parse_url(cfg.api_url)
        self.ids = satellite_ids(cfg.satellites, cfg.id_prefix)
        master = random.Random(cfg.seed)
        self.models = [
            SatelliteModel(
                sid, rng=random.Random(master.getrandbits(64)), anomaly_rate=cfg.anomaly_rate
            )
            for sid in self.ids
        ]
        self.batch = cfg.points_per_request
        path = (
            f"{self.path_prefix}/telemetry/batch"
            if self.batch > 1
            else f"{self.path_prefix}/telemetry"
        )
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {self.scheme_host}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("latin-1")
        pending_points = cfg.max_pending or max(1_024, math.ceil(cfg.total_rate))
        self.pending_limit = max(1, pending_points // self.batch)
        self.pending: deque[_Request] = deque()
        self.free: list[_Connection] = []
        self.conns: set[_Connection] = set()
        self.inflight = 0  # connections holding a request (in flight or awaiting a retry)
        self.draining = False
        self.idle = asyncio.Event()
        self.closing = False
        self.connect_tasks: set[asyncio.Task[None]] = set()
        # counters (points unless noted)
        self.scheduled = self.sent = self.accepted = self.rejected = self.errors = 0
        self.dropped = 0
        self.backpressure = self.requests = 0  # responses
        self.total_latency = LatencyHistogram()
        self.interval_latency = LatencyHistogram()
        self.accepted_points: list[tuple[str, int]] | None = [] if cfg.record_accepted else None
        self.sent_values: dict[tuple[str, int], tuple[float, float, float]] | None = (
            {} if cfg.record_accepted else None
        )
        self.started = 0.0

    # ------------------------------------------------------------------ connections
    async def open_connection(self) -> None:
        await asyncio.wait_for(
            self.loop.create_connection(lambda: _Connection(self), self.host, self.port),
            timeout=self.cfg.connect_timeout,
        )

    async def connect_pool(self) -> None:
        results = await asyncio.gather(
            *(self.open_connection() for _ in range(self.cfg.connections)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        unexpected = [f for f in failures if not isinstance(f, OSError)]
        if unexpected:
            await self.close()
            raise unexpected[0]
        if len(failures) == len(results):
            raise ServerUnreachableError(self.cfg.api_url, str(failures[0]) or "timed out")
        for _ in failures:
            self.spawn_reconnect()

    def spawn_reconnect(self) -> None:
        if self.closing:
            return
        task = self.loop.create_task(self.reconnect())
        self.connect_tasks.add(task)
        task.add_done_callback(self.connect_tasks.discard)

    async def reconnect(self) -> None:
        delay = 0.0  # first attempt at once, then back off exponentially up to 1 s
        while not self.closing:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self.open_connection()
            except OSError as exc:
                logger.debug("reconnect failed", extra={"url": self.cfg.api_url, "error": str(exc)})
                delay = min(max(delay * 2, 0.05), 1.0)
            else:
                return

    def on_connected(self, conn: _Connection) -> None:
        if self.closing:
            assert conn.transport is not None
            conn.transport.close()
            return
        self.conns.add(conn)
        self.connection_idle(conn)

    def on_connection_lost(self, conn: _Connection, exc: Exception | None) -> None:
        self.conns.discard(conn)
        if conn in self.free:
            self.free.remove(conn)
        request = conn.request
        if request is not None:
            if conn.retry_handle is not None:
                # The server answered 503 to it: safe to resend on another connection.
                conn.retry_handle.cancel()
                conn.retry_handle = None
                self.pending.appendleft(request)
                self.release(conn)
            else:
                self.release(conn)
                # The outcome is unknown; resending could duplicate the point.
                self.errors += len(request.points)
                logger.debug(
                    "connection lost with a request in flight",
                    extra={"points": len(request.points), "error": str(exc)},
                )
        if not self.closing:
            self.spawn_reconnect()

    def release(self, conn: _Connection) -> None:
        conn.request = None
        self.inflight -= 1
        if self.draining and not self.inflight and not self.pending:
            self.idle.set()

    def connection_idle(self, conn: _Connection) -> None:
        pending = self.pending
        if pending:
            self.transmit(conn, pending.popleft())
        else:
            self.free.append(conn)

    def transmit(self, conn: _Connection, request: _Request) -> None:
        if request.attempts == 0:
            self.sent += len(request.points)
        self.inflight += 1
        conn.send(request)

    def dispatch(self, request: _Request) -> None:
        if self.free:
            self.transmit(self.free.pop(), request)
        elif len(self.pending) < self.pending_limit:
            self.pending.append(request)
        else:
            self.dropped += len(request.points)

    # ------------------------------------------------------------------ responses
    def on_response(
        self,
        conn: _Connection,
        request: _Request,
        status: int,
        retry_after: bytes | None,
        body: bytes,
        latency_ns: int,
        keep_alive: bool,
    ) -> None:
        self.requests += 1
        bucket = LatencyHistogram.bucket(latency_ns)
        self.total_latency.add(bucket, latency_ns)
        self.interval_latency.add(bucket, latency_ns)
        n = len(request.points)
        if 200 <= status < 300:
            if self.batch == 1:
                self.accepted += 1
                if self.accepted_points is not None:
                    self.accepted_points.append(request.points[0])
            else:
                self.account_batch(request, body)
        elif status in (503, 429):
            self.backpressure += 1
            request.attempts += 1
            if request.attempts <= self.cfg.max_retries:
                if keep_alive:
                    delay = _retry_delay(retry_after)
                    conn.retry_handle = self.loop.call_later(delay, conn.resend)
                    return  # the connection stays busy holding the request
                self.pending.appendleft(request)
            else:
                self.errors += n
                logger.debug("gave up after backpressure retries", extra={"points": n})
        elif 400 <= status < 500:
            self.rejected += n
        else:
            self.errors += n
            logger.debug("unexpected response status", extra={"status": status, "points": n})

        self.release(conn)
        if keep_alive:
            self.connection_idle(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def account_batch(self, request: _Request, body: bytes) -> None:
        n = len(request.points)
        try:
            reply = msgspec.json.decode(body, type=_BatchResponse)
        except msgspec.DecodeError:
            logger.warning("undecodable batch response; counting the batch as accepted")
            reply = _BatchResponse()
        failed = {e.index for e in reply.errors if 0 <= e.index < n}
        accepted = reply.accepted if reply.accepted is not None else n - len(failed)
        accepted = min(max(accepted, 0), n)
        self.accepted += accepted
        self.rejected += n - accepted
        if self.accepted_points is not None:
            self.accepted_points.extend(p for i, p in enumerate(request.points) if i not in failed)

    # ------------------------------------------------------------------ schedule
    async def schedule(self) -> None:
        cfg = self.cfg
        rate = cfg.total_rate
        total = math.ceil(rate * cfg.duration) if cfg.duration > 0 else None
        step_ns = 1e9 / rate
        start_ns = time.time_ns()
        start = self.started = time.perf_counter()
        emit = self.emit_single if self.batch == 1 else self.emit_batch
        batch: list[tuple[str, int, TelemetryPoint]] = []
        k = 0
        while not self.stop.is_set():
            due = int((time.perf_counter() - start) * rate) + 1
            if total is not None and due > total:
                due = total
            if due > k:
                emit(k, due, start_ns, step_ns, batch)
                k = due
            if batch and time.time_ns() - batch[0][1] > _BATCH_LINGER_NS:
                self.flush_batch(batch)  # do not hold a partial batch for long at low rates
            if total is not None and k >= total:
                break
            wait = k / rate - (time.perf_counter() - start)
            await asyncio.sleep(min(max(wait, _MIN_TICK_S), 0.05))
        if batch:
            self.flush_batch(batch)
        self.scheduled = k

    def emit_single(
        self,
        first: int,
        end: int,
        start_ns: int,
        step_ns: float,
        _batch: list[tuple[str, int, TelemetryPoint]],
    ) -> None:
        models, ids, n = self.models, self.ids, len(self.ids)
        encode = _ENCODER.encode
        prefix = self.prefix
        for k in range(first, end):
            if not self.free and len(self.pending) >= self.pending_limit:
                self.dropped += 1  # no room: skip the work of building the point
                continue
            i = k % n
            sid = ids[i]
            ts = start_ns + int(k * step_ns)
            battery, storage, sig = models[i].sample(ts)
            if self.sent_values is not None:
                self.sent_values[(sid, ts)] = (battery, storage, sig)
            body = encode(TelemetryPoint(sid, battery, storage, sig, ts))
            self.dispatch(_Request(b"%b%d\r\n\r\n%b" % (prefix, len(body), body), [(sid, ts)]))

    def emit_batch(
        self,
        first: int,
        end: int,
        start_ns: int,
        step_ns: float,
        batch: list[tuple[str, int, TelemetryPoint]],
    ) -> None:
        models, ids, n = self.models, self.ids, len(self.ids)
        size = self.batch
        for k in range(first, end):
            i = k % n
            sid = ids[i]
            ts = start_ns + int(k * step_ns)
            battery, storage, sig = models[i].sample(ts)
            if self.sent_values is not None:
                self.sent_values[(sid, ts)] = (battery, storage, sig)
            batch.append((sid, ts, TelemetryPoint(sid, battery, storage, sig, ts)))
            if len(batch) >= size:
                self.flush_batch(batch)

    def flush_batch(self, batch: list[tuple[str, int, TelemetryPoint]]) -> None:
        body = _ENCODER.encode([p for _, _, p in batch])
        points = [(sid, ts) for sid, ts, _ in batch]
        batch.clear()
        self.dispatch(_Request(b"%b%d\r\n\r\n%b" % (self.prefix, len(body), body), points))

    # ------------------------------------------------------------------ lifecycle
    async def drain(self) -> None:
        self.draining = True
        if self.inflight or self.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.cfg.drain_timeout)
        self.closing = True
        for conn in list(self.conns):
            request = conn.request
            if request is not None:
                conn.request = None
                self.errors += len(request.points)
                if conn.retry_handle is not None:
                    conn.retry_handle.cancel()
                    conn.retry_handle = None
        while self.pending:
            request = self.pending.popleft()
            if request.attempts:
                self.errors += len(request.points)  # sent before, then backpressured
            else:
                self.dropped += len(request.points)

    async def close(self) -> None:
        self.closing = True
        for task in list(self.connect_tasks):
            task.cancel()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let the transports run connection_lost

    def summary(self, elapsed: float) -> Summary:
        return Summary(
            target_rate=self.cfg.total_rate,
            elapsed_s=elapsed,
            scheduled=self.scheduled,
            sent=self.sent,
            accepted=self.accepted,
            rejected=self.rejected,
            errors=self.errors,
            backpressure=self.backpressure,
            dropped_client=self.dropped,
            requests=self.requests,
            p50_ms=self.total_latency.percentile_ms(0.50),
            p99_ms=self.total_latency.percentile_ms(0.99),
            accepted_points=self.accepted_points,
            accepted_values=(
                {p: self.sent_values[p] for p in self.accepted_points}
                if self.accepted_points is not None and self.sent_values is not None
                else None
            ),
        )

    # ------------------------------------------------------------------ live output
    async def report_live(self, interval: float = 1.0) -> None:
        console = Console(stderr=True)
        last_t, last_accepted = time.perf_counter(), 0
        with _live_sink(console) as show:
            while True:
                await asyncio.sleep(interval)
                now = time.perf_counter()
                rate = (self.accepted - last_accepted) / (now - last_t)
                last_t, last_accepted = now, self.accepted
                hist = self.interval_latency
                show(
                    f"sent {self.sent:,} accepted {self.accepted:,} rejected {self.rejected:,}"
                    f" errors {self.errors:,} 503 {self.backpressure:,} dropped {self.dropped:,}"
                    f" | {rate:,.0f}/s p50 {hist.percentile_ms(0.5):.2f}ms"
                    f" p99 {hist.percentile_ms(0.99):.2f}ms"
                )
                hist.reset()


@contextlib.contextmanager
def _live_sink(console: Console) -> Iterator[Callable[[str], None]]:
    """Yield a function that shows one updating status line."""
    if console.is_terminal:
        with Live(Text(""), console=console, auto_refresh=False, transient=False) as live:
            yield lambda line: live.update(Text(line), refresh=True)
        return
    stream = sys.stderr
    wrote = False

    def show(line: str) -> None:
        nonlocal wrote
        stream.write("\r" + line)
        stream.flush()
        wrote = True

    try:
        yield show
    finally:
        if wrote:
            stream.write("\n")
            stream.flush()


_ENCODER = msgspec.json.Encoder()


def _retry_delay(value: bytes | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds form)."""
    if value is None:
        return _DEFAULT_RETRY_AFTER_S
    try:
        delay = float(value.strip())
    except ValueError:
        return _DEFAULT_RETRY_AFTER_S  # e.g. an HTTP-date: not worth parsing here
    if not math.isfinite(delay) or delay < 0:
        return _DEFAULT_RETRY_AFTER_S
    return min(delay, _MAX_RETRY_AFTER_S)


def _parse_url(url: str) -> tuple[str, str, int, str]:
    """Split ``http://host:port/prefix`` into ``(netloc, host, port, prefix)``."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("api_url must be an http:// URL (https is not supported)")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError("api_url has an invalid port") from exc
    if not parts.hostname:
        raise ValueError("api_url has no host")
    return parts.netloc, parts.hostname, port, parts.path.rstrip("/")


async def run_simulation(cfg: SimulatorConfig, stop: asyncio.Event | None = None) -> Summary:
    """Stream simulated telemetry per ``cfg`` until ``duration`` elapses or ``stop`` is set.

    Without ``stop``, SIGINT and SIGTERM stop the run (when signals can be handled).
    Stopping ends scheduling, waits up to ``drain_timeout`` seconds for in-flight
    responses and returns the :class:`Summary`. Raises :class:`ServerUnreachableError`
    when no connection can be opened and :class:`ValueError` for an invalid config.
    """
    cfg.validate()
    own_stop = stop is None
    stop_event = asyncio.Event() if stop is None else stop
    driver = _Driver(cfg, stop_event)
    await driver.connect_pool()
    logger.info(
        "simulation started",
        extra={
            "url": cfg.api_url,
            "satellites": cfg.satellites,
            "target_rate": cfg.total_rate,
            "connections": len(driver.conns),
        },
    )
    handled = _install_signal_handlers(driver.loop, stop_event) if own_stop else []
    reporter = driver.loop.create_task(driver.report_live()) if cfg.live else None
    try:
        await driver.schedule()
        await driver.drain()
        elapsed = time.perf_counter() - driver.started
    finally:
        for sig in handled:
            driver.loop.remove_signal_handler(sig)
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await driver.close()
    summary = driver.summary(elapsed)
    logger.info(
        "simulation finished",
        extra={"sent": summary.sent, "accepted": summary.accepted, "errors": summary.errors},
    )
    return summary


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> list[signal.Signals]:
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or a platform without signal support
        installed.append(sig)
    return installed


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_simulation_blocking(cfg: SimulatorConfig) -> Summary:
    """Run :func:`run_simulation` on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_simulation(cfg))
