"""A tiny, controllable HTTP ingest server for driver tests.

It runs its own event loop in a background thread (so it also serves a blocking
CLI run), implements ``POST /telemetry`` and ``POST /telemetry/batch`` with the
server's validation rules, and lets a test decide per point whether to reject it,
answer 503, or drop the connection without answering.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import msgspec

Point = dict[str, Any]
Key = tuple[str, int]

_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def point_errors(point: Point) -> list[str]:
    """The server's validation rules; an empty list means valid."""
    errors: list[str] = []
    sid = point.get("satellite_id")
    if not isinstance(sid, str) or not _ID_RE.fullmatch(sid):
        errors.append("satellite_id")
    checks = {
        "battery_charge_percent": (0.0, 100.0),
        "storage_usage_mb": (0.0, float("inf")),
        "signal_strength_dbm": (-200.0, 0.0),
    }
    for name, (low, high) in checks.items():
        value = point.get(name)
        if not isinstance(value, int | float) or not low <= value <= high:
            errors.append(name)
    if not isinstance(point.get("timestamp"), int):
        errors.append("timestamp")
    return errors


def key_of(point: Point) -> Key:
    return (str(point["satellite_id"]), int(point["timestamp"]))


@dataclass
class Behaviour:
    """Test hooks. Each receives the point (or first point of a batch) and the attempt number."""

    reject: Callable[[Point], bool] = lambda point: False
    busy: Callable[[Point, int], float | None] = lambda point, attempt: None
    drop: Callable[[Point, int], bool] = lambda point, attempt: False
    delay: float = 0.0


@dataclass
class FakeIngest:
    """Threaded fake of the ingest API; inspect the public lists after a run."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    stored: list[Key] = field(default_factory=list)
    invalid: list[Point] = field(default_factory=list)
    attempts: Counter[bytes] = field(default_factory=Counter)
    arrivals: dict[bytes, list[float]] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _transports: set[asyncio.Transport] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake ingest server did not start")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(loop.create_server(lambda: _Handler(self), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for transport in list(self._transports):
                transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # ------------------------------------------------------------------ handling
    def handle(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        """Return ``(status, headers, body)`` or None to drop the connection."""
        self.attempts[body] += 1
        attempt = self.attempts[body]
        self.arrivals.setdefault(body, []).append(time.monotonic())
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return 400, {}, b'{"detail":"invalid json"}'
        points: list[Point] = payload if path == "/telemetry/batch" else [payload]
        if not points:
            return 422, {}, b'{"detail":"empty batch"}'
        first = points[0]
        b = self.behaviour
        if b.drop(first, attempt):
            return None
        retry_after = b.busy(first, attempt)
        if retry_after is not None:
            return 503, {"Retry-After": f"{retry_after:g}"}, b'{"detail":"buffer full"}'
        errors: list[dict[str, Any]] = []
        accepted: list[Key] = []
        for index, point in enumerate(points):
            problems = point_errors(point)
            if problems:
                self.invalid.append(point)
            if problems or b.reject(point):
                errors.append({"index": index, "errors": problems or ["rejected by test"]})
            else:
                accepted.append(key_of(point))
        self.stored.extend(accepted)
        if path == "/telemetry/batch":
            self.batch_sizes.append(len(points))
            if not accepted:
                return 422, {}, msgspec.json.encode({"detail": "all rejected", "errors": errors})
            reply = {
                "status": "partial" if errors else "accepted",
                "accepted": len(accepted),
                "rejected": len(errors),
                "errors": errors,
            }
            return 202, {}, msgspec.json.encode(reply)
        if errors:
            return 422, {}, msgspec.json.encode({"detail": errors[0]["errors"]})
        reply = {"status": "accepted", "satellite_id": first["satellite_id"], "ack": "memory"}
        return 202, {}, msgspec.json.encode(reply)


_REASONS = {202: b"Accepted", 400: b"Bad Request", 422: b"Unprocessable Entity"}


class _Handler(asyncio.Protocol):
    def __init__(self, server: FakeIngest) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.abort()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.decode()
        body = b"".join(self.body)
        self.url, self.body = b"", []
        result = self.server.handle(path, body)
        transport = self.transport
        assert transport is not None
        if result is None:
            transport.abort()
            return
        status, headers, payload = result
        head = [b"HTTP/1.1 %d %b" % (status, _REASONS.get(status, b"Service Unavailable"))]
        head.append(b"Content-Type: application/json")
        head.append(b"Content-Length: %d" % len(payload))
        head.extend(f"{k}: {v}".encode() for k, v in headers.items())
        response = b"\r\n".join(head) + b"\r\n\r\n" + payload
        delay = self.server.behaviour.delay
        if delay:
            asyncio.get_running_loop().call_later(delay, _write, transport, response)
        else:
            transport.write(response)


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)
