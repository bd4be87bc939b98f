"""The bodies the HTTP API answers with, as msgspec types.

The OpenAPI document (``GET /openapi.json``) is generated from these and from the request
types (:class:`~orbitstream.pipelines.satellites.Point`) with ``msgspec.json.schema``, so
it cannot drift from what the handlers decode. Fields that appear only in some answers
have defaults (and so are optional in the schema).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Accepted",
    "BatchResult",
    "Error",
    "FieldProblem",
    "Health",
    "IndexProblems",
    "LineProblems",
    "NdjsonResult",
    "PipelineHealth",
    "QueryRequest",
    "QueryResult",
    "Rejected",
    "SinkHealth",
]

AckMode = Literal["memory", "sink"]


class FieldProblem(msgspec.Struct):
    """One reason a value was refused: the field (``$`` for the whole document)."""

    field: str
    message: str


class IndexProblems(msgspec.Struct):
    """The problems of one point of a batch (``errors`` is left out past the first 1000)."""

    index: int
    errors: list[FieldProblem] = []


class LineProblems(msgspec.Struct):
    """The problems of one NDJSON line (1-based)."""

    line: int
    errors: list[FieldProblem] = []


class Accepted(msgspec.Struct):
    """``202`` for one point."""

    status: Literal["accepted"]
    satellite_id: str
    ack: AckMode


class Rejected(msgspec.Struct):
    """``422`` for one point: every bad field named; ``dead_lettered`` when a store refused
    it after validation (``sink`` ack mode; the point is kept in its dead letters)."""

    status: Literal["rejected"]
    error: str
    errors: list[FieldProblem]
    dead_lettered: dict[str, int] = {}


class BatchResult(msgspec.Struct):
    """``202`` (some points accepted) or ``422`` (none) for a batch."""

    status: Literal["accepted", "partial", "rejected"]
    accepted: int
    rejected: int
    ack: AckMode | None = None
    error: str | None = None
    errors: list[IndexProblems] = []
    note: str | None = None
    dead_lettered: dict[str, int] = {}
    store_errors: list[str] = []


class NdjsonResult(msgspec.Struct):
    """``202`` (some lines accepted) or ``422`` (none) for an NDJSON upload."""

    status: Literal["accepted", "partial", "rejected"]
    accepted: int
    rejected: int
    lines: int
    ack: AckMode
    errors: list[LineProblems] = []
    note: str | None = None
    dead_lettered: dict[str, int] = {}
    store_errors: list[str] = []


class Error(msgspec.Struct):
    """Any other refusal (400, 403, 404, 405, 408, 413, 414, 415, 422, 431, 500, 503, 504).

    Streaming answers say how far they got: ``accepted``/``rejected`` so far and
    ``next_line``, the first line not taken (resend from there); ``line`` is the line at
    fault for a 413.
    """

    status: Literal["error"]
    error: str
    errors: list[Any] = []
    accepted: int | None = None
    rejected: int | None = None
    next_line: int | None = None
    line: int | None = None
    code: int | None = None
    ack: AckMode | None = None
    spilled: dict[str, int] = {}


class SinkHealth(msgspec.Struct):
    status: Literal["up", "down"]
    buffered_rows: int
    buffered_bytes: int
    last_error: str | None
    last_success: float | None


class PipelineHealth(msgspec.Struct):
    """One pipeline: its sinks (its own buffers and retry state for each store) and its
    source's state (``type``, and what the source reports: lag, polling halted…)."""

    status: Literal["healthy", "unhealthy"]
    namespace: str | None
    sinks: dict[str, SinkHealth]
    source: dict[str, Any]


class Health(msgspec.Struct):
    """``GET /health``: ``200`` healthy, ``503`` while a sink is down or a source failed.
    ``sinks`` sums every pipeline's lanes per store (down if one is down)."""

    status: Literal["healthy", "unhealthy"]
    timestamp: str
    ack_mode: AckMode
    uptime_seconds: float
    sinks: dict[str, SinkHealth]
    pipelines: dict[str, PipelineHealth] = {}


class QueryRequest(msgspec.Struct):
    """``POST /api/query``: one read-only statement."""

    sql: str


class QueryResult(msgspec.Struct):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
