"""Ingest handlers: ``POST /telemetry``, ``/telemetry/batch``, ``/telemetry/ndjson``.

Status codes: 202 accepted; 400 malformed JSON or empty body; 413 body over the limit;
415 wrong content type; 422 invalid fields (each field named, batches by index);
503 + ``Retry-After`` when buffers are full. In a batch, valid points are accepted and
invalid ones reported by index: one bad point never poisons a batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import msgspec

from orbitstream.core.batch import Ack
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline
from orbitstream.errors import BackpressureError
from orbitstream.pipelines.satellites import PIPELINE, Point, SatelliteMapper, field_errors
from orbitstream.settings import AckMode
from orbitstream.sources.http.server import Refusal, Request, Response, error_response, refuse

__all__ = ["IngestHandlers"]

_JSON_TYPES = frozenset({"", "application/json", "text/json"})
_NDJSON_TYPES = frozenset(
    {
        "",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/json-lines",
        "application/json",
        "text/plain",
    }
)
_MAX_REPORTED_ERRORS = 1000
_NDJSON_CHUNK = 5000

_encode = msgspec.json.Encoder().encode


def _errors_json(errors: Sequence[Any]) -> list[dict[str, str]]:
    return [{"field": e.field, "message": e.message} for e in errors]


class IngestHandlers:
    """The ingest routes of the satellites pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        mapper: SatelliteMapper,
        metrics: Metrics,
        ack_mode: AckMode,
        *,
        ack_timeout_secs: float = 60.0,
    ) -> None:
        self.pipeline = pipeline
        self.mapper = mapper
        self.metrics = metrics
        self.ack_mode = ack_mode
        self.ack_timeout_secs = ack_timeout_secs
        self._point = msgspec.json.Decoder(Point)
        self._points = msgspec.json.Decoder(list[Point])
        self._any = msgspec.json.Decoder()
        self._labels = (PIPELINE,)
        self._accepted = self.metrics.counters["accepted"]
        self._received = self.metrics.counters["received"]
        self._rejected = self.metrics.counters["rejected"]
        self._ack_bytes = _encode(ack_mode)

    # -- shared ---------------------------------------------------------------------
    def _check_type(self, request: Request, allowed: frozenset[str]) -> Response | None:
        raw = request.headers.get("content-type", "")
        if raw in allowed:
            return None
        ctype = request.content_type
        if ctype not in allowed:
            return error_response(
                415,
                f"unsupported content type {ctype!r}: send application/json",
                [("Accept-Post", "application/json")],
            )
        return None

    def _backpressure(self, exc: BackpressureError, **extra: Any) -> Response:
        self.metrics.inc("backpressure", self._labels)
        retry = max(1, math.ceil(exc.retry_after_secs))
        return error_response(
            503, f"buffers full, retry later: {exc}", [("Retry-After", str(retry))], **extra
        )

    def _ensure_room(self, points: int) -> None:
        """Raise BackpressureError unless every sink has room for ``points`` (+ alerts)."""
        pipeline = self.pipeline
        for lane in pipeline.lanes:
            if not lane.has_room(2 * points, 2 * points * 400):
                raise BackpressureError(
                    f"buffer full for sink {lane.sink.name}",
                    retry_after_secs=max(1.0, pipeline.limits.linger_secs),
                )

    def _submit(self, points: Sequence[Point], received_ns: int) -> Ack | None:
        """Map and submit; raises BackpressureError before any state changes."""
        self._ensure_room(len(points))
        rows = self.mapper.map(points, received_ns)
        ack = Ack() if self.ack_mode == "sink" else None
        self.pipeline.submit(rows, ack)
        return ack

    async def _after_ack(self, ack: Ack, response: Response) -> Response:
        try:
            await asyncio.wait_for(ack.wait(), self.ack_timeout_secs)
        except TimeoutError:
            return error_response(
                504,
                "accepted into the buffer but not yet committed to the store; do not resend "
                "(it will be written)",
                ack="memory",
            )
        return response

    # -- POST /telemetry --------------------------------------------------------------
    def telemetry(self, request: Request) -> Response | Awaitable[Response]:
        bad = self._check_type(request, _JSON_TYPES)
        if bad is not None:
            return bad
        body = request.body
        received = self._received
        received[self._labels] += 1
        if not body:
            self._rejected[self._labels] += 1
            return error_response(400, "empty body: send one telemetry point as a JSON object")
        try:
            point = self._point.decode(body)
        except msgspec.ValidationError:
            return self._reject_point(body)
        except msgspec.DecodeError as exc:
            self._rejected[self._labels] += 1
            return error_response(400, f"malformed JSON: {exc}")
        try:
            ack = self._submit((point,), time.time_ns())
        except BackpressureError as exc:
            return self._backpressure(exc)
        self._accepted[self._labels] += 1
        response = Response(
            202,
            b'{"status":"accepted","satellite_id":'
            + _encode(point.satellite_id)
            + b',"ack":'
            + self._ack_bytes
            + b"}",
        )
        if ack is None:
            return response
        return self._after_ack(ack, response)

    def _reject_point(self, body: bytes) -> Response:
        self._rejected[self._labels] += 1
        raw = self._any.decode(body)
        errors = field_errors(raw)
        return Response(
            422,
            _encode(
                {
                    "status": "rejected",
                    "error": "invalid telemetry point",
                    "errors": _errors_json(errors),
                }
            ),
        )

    # -- POST /telemetry/batch --------------------------------------------------------
    def batch(self, request: Request) -> Response | Awaitable[Response]:
        bad = self._check_type(request, _JSON_TYPES)
        if bad is not None:
            return bad
        body = request.body
        if not body:
            return error_response(400, "empty body: send a JSON array of telemetry points")
        try:  # refuse before paying for the decode (a point is at least ~80 bytes of JSON)
            self._ensure_room(len(body) // 160)
        except BackpressureError as exc:
            return self._backpressure(exc, accepted=0, rejected=0)
        errors: list[dict[str, Any]] = []
        try:
            points = self._points.decode(body)
        except msgspec.ValidationError:
            try:
                raw = self._any.decode(body)
            except (
                msgspec.DecodeError
            ) as exc:  # pragma: no cover - ValidationError implies valid JSON
                return error_response(400, f"malformed JSON: {exc}")
            if not isinstance(raw, list):
                return error_response(
                    422,
                    "expected a JSON array of telemetry points",
                    errors=[{"field": "$", "message": f"got {type(raw).__name__}"}],
                )
            points = []
            for index, item in enumerate(raw):
                try:
                    points.append(msgspec.convert(item, Point))
                except msgspec.ValidationError:
                    if len(errors) < _MAX_REPORTED_ERRORS:
                        errors.append({"index": index, "errors": _errors_json(field_errors(item))})
                    else:
                        errors.append({"index": index})
            total = len(raw)
        except msgspec.DecodeError as exc:
            return error_response(400, f"malformed JSON: {exc}")
        else:
            total = len(points)
        if total == 0:
            return error_response(400, "empty batch: send at least one telemetry point")
        rejected = total - len(points)
        self._received[self._labels] += total
        if not points:
            self._rejected[self._labels] += rejected
            return Response(
                422,
                _encode(
                    {
                        "status": "rejected",
                        "accepted": 0,
                        "rejected": rejected,
                        "error": "no valid point in the batch",
                        "errors": errors,
                    }
                ),
            )
        try:
            ack = self._submit(points, time.time_ns())
        except BackpressureError as exc:
            self._received[self._labels] -= total
            return self._backpressure(exc, accepted=0, rejected=0)
        self._accepted[self._labels] += len(points)
        self._rejected[self._labels] += rejected
        doc: dict[str, Any] = {
            "status": "partial" if rejected else "accepted",
            "accepted": len(points),
            "rejected": rejected,
            "ack": self.ack_mode,
        }
        if rejected:
            doc["errors"] = errors
            doc["note"] = (
                "valid points were accepted; invalid ones are listed by index and were not stored"
            )
        response = Response(202, _encode(doc))
        if ack is None:
            return response
        return self._after_ack(ack, response)

    # -- POST /telemetry/ndjson -------------------------------------------------------
    def ndjson(self, request: Request) -> _NdjsonStream:
        bad = self._check_type(request, _NDJSON_TYPES)
        if bad is not None:
            raise refuse(bad)
        return _NdjsonStream(self)


class _NdjsonStream:
    """Validates and submits NDJSON lines while the body streams in.

    On backpressure mid-stream it answers 503 with ``next_line``: lines before it were
    accepted, so a loader resumes from there.
    """

    def __init__(self, handlers: IngestHandlers) -> None:
        self.h = handlers
        self.tail = b""
        self.line_no = 0
        self.pending: list[Point] = []
        self.pending_first_line = 1
        self.accepted = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []
        self.acks: list[Ack] = []

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        lines = data.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            self._line(line)
        if len(self.pending) >= _NDJSON_CHUNK:
            self._flush()

    def _line(self, line: bytes) -> None:
        self.line_no += 1
        line = line.strip()
        if not line:
            return
        if not self.pending:
            self.pending_first_line = self.line_no
        try:
            self.pending.append(self.h._point.decode(line))
        except msgspec.ValidationError:
            self.rejected += 1
            if len(self.errors) < _MAX_REPORTED_ERRORS:
                self.errors.append(
                    {
                        "line": self.line_no,
                        "errors": _errors_json(field_errors(self.h._any.decode(line))),
                    }
                )
        except msgspec.DecodeError as exc:
            self.rejected += 1
            if len(self.errors) < _MAX_REPORTED_ERRORS:
                self.errors.append(
                    {
                        "line": self.line_no,
                        "errors": [{"field": "$", "message": f"malformed JSON: {exc}"}],
                    }
                )

    def _flush(self) -> None:
        if not self.pending:
            return
        labels = self.h._labels
        try:
            ack = self.h._submit(self.pending, time.time_ns())
        except BackpressureError as exc:
            raise refuse(
                self.h._backpressure(
                    exc,
                    accepted=self.accepted,
                    rejected=self.rejected,
                    next_line=self.pending_first_line,
                    errors=self.errors,
                )
            ) from exc
        self.h.metrics.inc("received", labels, len(self.pending))
        self.h.metrics.inc("accepted", labels, len(self.pending))
        self.accepted += len(self.pending)
        self.pending = []
        if ack is not None:
            self.acks.append(ack)

    def finish(self) -> Response | Awaitable[Response]:
        try:
            if self.tail.strip():
                self._line(self.tail)
            self.tail = b""
            self._flush()
        except Refusal as refusal:
            return refusal.response
        self.h.metrics.inc("received", self.h._labels, self.rejected)
        self.h.metrics.inc("rejected", self.h._labels, self.rejected)
        if self.accepted == 0 and self.rejected == 0:
            return error_response(400, "empty body: send one JSON telemetry point per line")
        doc: dict[str, Any] = {
            "status": "accepted"
            if not self.rejected
            else ("partial" if self.accepted else "rejected"),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "lines": self.line_no,
            "ack": self.h.ack_mode,
        }
        if self.errors:
            doc["errors"] = self.errors
        response = Response(202 if self.accepted else 422, _encode(doc))
        if not self.acks:
            return response
        return self._wait(response)

    async def _wait(self, response: Response) -> Response:
        for ack in self.acks:
            result = await self.h._after_ack(ack, response)
            if result is not response:
                return result
        return response
