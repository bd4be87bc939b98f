"""Ingest handlers: ``POST /telemetry``, ``/telemetry/batch``, ``/telemetry/ndjson``.

Status codes: 202 accepted; 400 malformed JSON or empty body; 413 body (or an NDJSON line)
over the limit; 415 wrong content type; 422 invalid fields (each field named, batches by
index, NDJSON by line); 503 + ``Retry-After`` when buffers are full. In a batch, valid
points are accepted and invalid ones reported by index: one bad point never poisons a
batch. What is accepted is storable by every configured store: a timestamp no store can
hold, or outside the accepted window, is refused here (``timestamp`` named).

In ``sink`` ack mode a 202 means every accepted row is committed in every store. Rows a
store refused anyway are reported (``dead_lettered`` per store; a single point gets 422),
and rows that could not be written before shutdown make the request fail (503).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from orbitstream.core.batch import Ack, Row, RowData
from orbitstream.core.metrics import Metrics
from orbitstream.core.protocols import SourceContext, Store
from orbitstream.core.records import FieldError, body_errors, decode_raw
from orbitstream.core.times import TimeWindow
from orbitstream.errors import BackpressureError
from orbitstream.settings import AckMode
from orbitstream.sources.http.server import Refusal, Request, Response, error_response, refuse

__all__ = ["HttpIngest", "IngestHandlers", "MappedBatch"]

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


def _errors_json(errors: Sequence[FieldError]) -> list[dict[str, str]]:
    return [{"field": e.field, "message": e.message} for e in errors]


def _outcome(acks: Sequence[Ack]) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Rows dead-lettered and spilled per sink, and the stores' reasons, over ``acks``."""
    dead: dict[str, int] = {}
    spilled: dict[str, int] = {}
    errors: list[str] = []
    for ack in acks:
        for sink, n in ack.dead_lettered.items():
            dead[sink] = dead.get(sink, 0) + n
        for sink, n in ack.spilled.items():
            spilled[sink] = spilled.get(sink, 0) + n
        errors.extend(ack.errors[: 10 - len(errors)])
    return dead, spilled, errors


class MappedBatch(Protocol):
    """What :meth:`HttpIngest.map` returns: rows per table, the records refused by index
    (a timestamp outside the window…) and how many were accepted."""

    @property
    def rows(self) -> Mapping[str, RowData]: ...

    rejected: list[tuple[int, FieldError]]

    @property
    def accepted(self) -> int: ...


@runtime_checkable
class HttpIngest(Protocol):
    """What a pipeline gives the HTTP push source: how to decode, validate and map its
    records (the satellites pipeline's :class:`~orbitstream.pipelines.satellites.SatelliteIngest`).

    :attr path: the single-record route; ``<path>/batch`` and ``<path>/ndjson`` follow.

    :attr record_type: the msgspec ``Struct`` one JSON object decodes to (validated by
        its constraints on the fast path).
    :attr id_field: the record field echoed in a single record's ``202``.
    :attr table: the table whose rows are the records (the others are derived: alerts).
    """

    path: str
    record_type: type[Any]
    id_field: str
    table: str
    window: TimeWindow

    async def restore(self, store: Store) -> None:
        """Read the pipeline's state back from the store at start (firing alerts…)."""

    def field_errors(self, raw: object, window: TimeWindow | None) -> list[FieldError]:
        """Every problem of one decoded JSON value (floats as ``Decimal``), one per field."""

    def map(self, records: Sequence[Any], received_ns: int) -> MappedBatch:
        """Rows for ``records``; nothing changes until :meth:`commit`."""

    def map_body(self, body: bytes, received_ns: int) -> MappedBatch | None:
        """A JSON array body straight to rows (the columnar fast path), or ``None`` to
        take the exact path (:meth:`map` of the decoded records): when any record is
        invalid, so that every problem is named, or when there is no fast path."""

    def commit(self, mapped: Any) -> None:
        """The rows of ``mapped`` (what :meth:`map` returned) were accepted downstream."""

    def map_one(
        self, record: Any, received_ns: int
    ) -> tuple[Row, dict[str, list[Row]] | None, Callable[[], None] | None] | FieldError:
        """One record: its row, rows of other tables (rare) and a commit to call once they
        are accepted, or why it is refused."""


class IngestHandlers:
    """The HTTP push routes of one pipeline: single record, JSON array, NDJSON.

    :param ndjson_max_body_bytes: an NDJSON upload longer than this is refused (413) at
        the line where it crosses the limit; lines before it stay accepted.
    :param ndjson_max_line_bytes: an NDJSON line longer than this is refused (413).
    """

    def __init__(
        self,
        ctx: SourceContext,
        ingest: HttpIngest,
        metrics: Metrics,
        ack_mode: AckMode,
        *,
        ack_timeout_secs: float = 60.0,
        ndjson_max_body_bytes: int = 1 << 30,
        ndjson_max_line_bytes: int = 64 * 1024,
        columnar_min_bytes: int = 16 * 1024,
    ) -> None:
        self.ctx = ctx
        self.ingest = ingest
        self.metrics = metrics
        self.ack_mode = ack_mode
        self.ack_timeout_secs = ack_timeout_secs
        self.ndjson_max_body_bytes = ndjson_max_body_bytes
        self.ndjson_max_line_bytes = ndjson_max_line_bytes
        self._point = msgspec.json.Decoder(ingest.record_type)
        self._points = msgspec.json.Decoder(list[ingest.record_type])  # type: ignore[name-defined]
        self._labels = (ctx.pipeline,)
        self._table = ingest.table
        self._id = ingest.id_field
        self._accepted = self.metrics.counters["accepted"]
        self._received = self.metrics.counters["received"]
        self._rejected = self.metrics.counters["rejected"]
        self._ack_bytes = _encode(ack_mode)
        self._sink_ack = ack_mode == "sink"
        # below this body size a batch is mapped as tuples (the columnar path's fixed cost
        # per request is higher than its saving on a few points: bench/pipeline.py)
        self.columnar_min_bytes = columnar_min_bytes

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
        """Raise BackpressureError unless every sink has room for ``points`` (+ derived)."""
        if not self.ctx.has_room(2 * points):
            raise BackpressureError("buffers full", retry_after_secs=1.0)

    def _submit(self, points: Sequence[Any], received_ns: int) -> tuple[MappedBatch, Ack | None]:
        """Map and submit; raises BackpressureError before any state changes (the alert
        state moves only once the rows are in)."""
        self._ensure_room(len(points))
        mapped = self.ingest.map(points, received_ns)
        return mapped, self._submit_mapped(mapped)

    def _submit_mapped(self, mapped: MappedBatch) -> Ack | None:
        if not mapped.accepted:
            return None
        self._ensure_room(mapped.accepted)
        ack = Ack() if self._sink_ack else None
        self.ctx.submit(mapped.rows, ack)
        self.ingest.commit(mapped)
        return ack

    async def _after_ack(self, acks: Sequence[Ack]) -> Response | None:
        """Wait for the commit; an error response if it takes too long."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(ack.wait() for ack in acks)), self.ack_timeout_secs
            )
        except TimeoutError:
            return error_response(
                504,
                "accepted into the buffer but not yet committed to the store; do not resend "
                "(it will be written)",
                ack="memory",
            )
        return None

    async def _admitted(
        self,
        admission: Awaitable[None],
        handler: Callable[[Request], Response | Awaitable[Response]],
        request: Request,
    ) -> Response:
        """``handler(request)`` once the pipeline admits it (its writers are behind: see
        ``Pipeline.admission``): its body waits undecoded, so decoding it does not take
        the event loop from them."""
        await admission
        result = handler(request)
        return result if isinstance(result, Response) else await result

    # -- POST /telemetry --------------------------------------------------------------
    def telemetry(self, request: Request) -> Response | Awaitable[Response]:
        admission = self.ctx.admission(1)
        if admission is not None:
            return self._admitted(admission, self._telemetry, request)
        return self._telemetry(request)

    def _telemetry(self, request: Request) -> Response | Awaitable[Response]:
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
        except RecursionError:
            self._rejected[self._labels] += 1
            return error_response(400, "malformed JSON: nested too deeply")
        mapped = self.ingest.map_one(point, time.time_ns())
        if isinstance(mapped, FieldError):
            self._rejected[self._labels] += 1
            return self._invalid([mapped])
        row, others, commit = mapped
        ack = Ack() if self._sink_ack else None
        try:
            if others is None:
                self.ctx.submit_one(self._table, row, ack)
            else:
                self.ctx.submit({self._table: [row], **others}, ack)
        except BackpressureError as exc:
            return self._backpressure(exc)
        if commit is not None:
            commit()
        self._accepted[self._labels] += 1
        response = Response(
            202,
            b'{"status":"accepted","'
            + self._id.encode()
            + b'":'
            + _encode(getattr(point, self._id))
            + b',"ack":'
            + self._ack_bytes
            + b"}",
        )
        if ack is None:
            return response
        return self._point_committed(ack, response)

    async def _point_committed(self, ack: Ack, response: Response) -> Response:
        late = await self._after_ack((ack,))
        if late is not None:
            return late
        dead, spilled, errors = _outcome((ack,))
        if spilled:
            return self._not_committed(spilled)
        if dead:
            return Response(
                422,
                _encode(
                    {
                        "status": "rejected",
                        "error": "the store refused the point; it is kept in dead letters",
                        "dead_lettered": dead,
                        "errors": [{"field": "$", "message": m} for m in errors],
                    }
                ),
            )
        return response

    def _not_committed(self, spilled: dict[str, int]) -> Response:
        return error_response(
            503,
            "not committed: a store was unavailable until shutdown; the rows were kept in the "
            "dead-letter file",
            [("Retry-After", "1")],
            spilled=spilled,
        )

    def _invalid(self, errors: Sequence[FieldError]) -> Response:
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

    def _reject_point(self, body: bytes) -> Response:
        self._rejected[self._labels] += 1
        errors = body_errors(body, self.ingest.field_errors, self.ingest.window)
        if errors and errors[0].field == "$" and errors[0].message.startswith("malformed JSON"):
            return error_response(400, errors[0].message)
        return self._invalid(errors)

    # -- POST /telemetry/batch --------------------------------------------------------
    def batch(self, request: Request) -> Response | Awaitable[Response]:
        # about 100 bytes of JSON per point
        admission = self.ctx.admission(max(1, len(request.body) // 100))
        if admission is not None:
            return self._admitted(admission, self._batch, request)
        return self._batch(request)

    def _batch(self, request: Request) -> Response | Awaitable[Response]:
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
        if len(body) >= self.columnar_min_bytes:
            received_ns = time.time_ns()
            fast = self.ingest.map_body(body, received_ns)
            if fast is not None:
                return self._batch_mapped(fast, errors)
        index_of: list[int] | None = None  # input index of each point, when some failed
        try:
            points = self._points.decode(body)
        except msgspec.ValidationError:
            try:
                raw = decode_raw(body)
            except msgspec.DecodeError as exc:
                return error_response(400, f"malformed JSON: {exc}")
            if not isinstance(raw, list):
                return error_response(
                    422,
                    "expected a JSON array of telemetry points",
                    errors=[{"field": "$", "message": f"got {type(raw).__name__}"}],
                )
            points = []
            index_of = []
            for index, item in enumerate(raw):
                try:
                    points.append(msgspec.convert(item, self.ingest.record_type))
                    index_of.append(index)
                except msgspec.ValidationError:
                    problems = self.ingest.field_errors(item, self.ingest.window)
                    self._report(errors, {"index": index}, problems)
            total = len(raw)
        except msgspec.DecodeError as exc:
            return error_response(400, f"malformed JSON: {exc}")
        except RecursionError:
            return error_response(400, "malformed JSON: nested too deeply")
        else:
            total = len(points)
        if total == 0:
            return error_response(400, "empty batch: send at least one telemetry point")
        received_ns = time.time_ns()
        mapped: MappedBatch | None = None
        ack: Ack | None = None
        if points:
            try:
                mapped, ack = self._submit(points, received_ns)
            except BackpressureError as exc:
                return self._backpressure(exc, accepted=0, rejected=0)
            if mapped.rejected:
                for pos, error in mapped.rejected:
                    index = index_of[pos] if index_of is not None else pos
                    self._report(errors, {"index": index}, [error])
                errors.sort(key=lambda e: int(e["index"]))
        return self._batch_response(mapped, ack, total, errors)

    def _batch_mapped(
        self, mapped: MappedBatch, errors: list[dict[str, Any]]
    ) -> Response | Awaitable[Response]:
        """``POST .../batch`` for a body :meth:`HttpIngest.map_body` mapped."""
        total = mapped.accepted + len(mapped.rejected)
        if total == 0:
            return error_response(400, "empty batch: send at least one telemetry point")
        try:
            ack = self._submit_mapped(mapped)
        except BackpressureError as exc:
            return self._backpressure(exc, accepted=0, rejected=0)
        for index, error in mapped.rejected:
            self._report(errors, {"index": index}, [error])
        return self._batch_response(mapped, ack, total, errors)

    def _batch_response(
        self,
        mapped: MappedBatch | None,
        ack: Ack | None,
        total: int,
        errors: list[dict[str, Any]],
    ) -> Response | Awaitable[Response]:
        accepted = mapped.accepted if mapped is not None else 0
        rejected = total - accepted
        self._received[self._labels] += total
        self._accepted[self._labels] += accepted
        self._rejected[self._labels] += rejected
        if not accepted:
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
        doc: dict[str, Any] = {
            "status": "partial" if rejected else "accepted",
            "accepted": accepted,
            "rejected": rejected,
            "ack": self.ack_mode,
        }
        if rejected:
            doc["errors"] = errors
            doc["note"] = (
                "valid points were accepted; invalid ones are listed by index and were not stored"
            )
        if ack is None:
            return Response(202, _encode(doc))
        return self._committed([ack], doc)

    @staticmethod
    def _report(
        errors: list[dict[str, Any]], where: dict[str, Any], problems: Sequence[FieldError]
    ) -> None:
        if len(errors) < _MAX_REPORTED_ERRORS:
            errors.append({**where, "errors": _errors_json(problems)})
        else:
            errors.append(where)

    async def _committed(self, acks: Sequence[Ack], doc: dict[str, Any]) -> Response:
        late = await self._after_ack(acks)
        if late is not None:
            return late
        dead, spilled, store_errors = _outcome(acks)
        if spilled:
            return self._not_committed(spilled)
        if dead:
            doc["status"] = "partial"
            doc["dead_lettered"] = dead
            doc["store_errors"] = store_errors
            doc["note"] = (
                "some accepted rows were refused by a store and kept in its dead letters "
                "(orbitstream deadletters)"
            )
        return Response(202, _encode(doc))

    # -- POST /telemetry/ndjson -------------------------------------------------------
    def ndjson(self, request: Request) -> _NdjsonStream:
        bad = self._check_type(request, _NDJSON_TYPES)
        if bad is not None:
            raise refuse(bad)
        return _NdjsonStream(self)


class _NdjsonStream:
    """Validates and submits NDJSON lines while the body streams in.

    Each line stands alone: a bad line is reported by number and the stream goes on. On
    backpressure mid-stream it answers 503 with ``next_line``: lines before it were
    accepted, so a loader resumes from there; over the size limits it answers 413 the
    same way. A line is buffered only up to the line limit, and joined once.
    """

    def __init__(self, handlers: IngestHandlers) -> None:
        self.h = handlers
        self.parts: list[bytes] = []  # the unfinished last line, in pieces
        self.part_bytes = 0
        self.seen = 0
        self.line_no = 0
        self.pending: list[Any] = []
        self.pending_lines: list[int] = []
        self.accepted = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []
        self.acks: list[Ack] = []

    def feed(self, chunk: bytes) -> None:
        h = self.h
        self.seen += len(chunk)
        if self.seen > h.ndjson_max_body_bytes:
            self._flush()
            raise self._refusal(
                413,
                f"NDJSON body exceeds the limit of {h.ndjson_max_body_bytes} bytes "
                "(ORBITSTREAM_NDJSON_MAX_BODY_BYTES); resend from next_line in another request",
            )
        start = 0
        limit = h.ndjson_max_line_bytes
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = len(chunk) - start
                if rest:
                    self.part_bytes += rest
                    if self.part_bytes > limit:
                        self._too_long()
                    self.parts.append(chunk[start:] if start else chunk)
                break
            if self.parts:
                self.part_bytes += end - start
                if self.part_bytes > limit:
                    self._too_long()
                self.parts.append(chunk[start:end])
                line = b"".join(self.parts)
                self.parts = []
                self.part_bytes = 0
            else:
                if end - start > limit:
                    self._too_long()
                line = chunk[start:end]
            self._line(line)
            start = end + 1
        if len(self.pending) >= _NDJSON_CHUNK:
            self._flush()

    def _too_long(self) -> None:
        self._flush()
        raise self._refusal(
            413,
            f"line {self.line_no + 1} exceeds the limit of {self.h.ndjson_max_line_bytes} bytes "
            "(ORBITSTREAM_NDJSON_MAX_LINE_BYTES)",
            line=self.line_no + 1,
        )

    def _refusal(self, status: int, message: str, **extra: Any) -> Refusal:
        self._count_rejected()
        return Refusal(
            error_response(
                status,
                message,
                accepted=self.accepted,
                rejected=self.rejected,
                next_line=self.line_no + 1,
                errors=self.errors,
                **extra,
            ),
            close=True,
        )

    def _line(self, line: bytes) -> None:
        self.line_no += 1
        line = line.strip()
        if not line:
            return
        try:
            point = self.h._point.decode(line)
        except msgspec.ValidationError:
            self.rejected += 1
            self._error(body_errors(line, self.h.ingest.field_errors, self.h.ingest.window))
            return
        except (msgspec.DecodeError, RecursionError) as exc:
            self.rejected += 1
            message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self._error([FieldError("$", f"malformed JSON: {message}")])
            return
        self.pending.append(point)
        self.pending_lines.append(self.line_no)

    def _error(self, problems: Sequence[FieldError], line: int | None = None) -> None:
        if len(self.errors) < _MAX_REPORTED_ERRORS:
            self.errors.append({"line": line or self.line_no, "errors": _errors_json(problems)})

    def _flush(self) -> None:
        if not self.pending:
            return
        labels = self.h._labels
        try:
            mapped, ack = self.h._submit(self.pending, time.time_ns())
        except BackpressureError as exc:
            self._count_rejected()
            raise refuse(
                self.h._backpressure(
                    exc,
                    accepted=self.accepted,
                    rejected=self.rejected,
                    next_line=self.pending_lines[0],
                    errors=self.errors,
                )
            ) from exc
        for pos, error in mapped.rejected:
            self.rejected += 1
            self._error([error], self.pending_lines[pos])
        if mapped.rejected:
            self.errors.sort(key=lambda e: int(e["line"]))
        self.h.metrics.inc("received", labels, mapped.accepted)
        self.h.metrics.inc("accepted", labels, mapped.accepted)
        self.accepted += mapped.accepted
        self.pending = []
        self.pending_lines = []
        if ack is not None:
            self.acks.append(ack)

    def _count_rejected(self) -> None:
        self.h.metrics.inc("received", self.h._labels, self.rejected)
        self.h.metrics.inc("rejected", self.h._labels, self.rejected)

    def finish(self) -> Response | Awaitable[Response]:
        try:
            if self.parts:
                line = b"".join(self.parts)
                self.parts = []
                self._line(line)
            self._flush()
        except Refusal as refusal:
            return refusal.response
        self._count_rejected()
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
        if not self.acks:
            return Response(202 if self.accepted else 422, _encode(doc))
        return self.h._committed(self.acks, doc)
